//! The dashboard of a real farm in headless Chromium: the `blenderdist host --http` binary, one real Blender
//! volunteer (`join --name alice-desktop`) and a small generated scene. The page is loaded before the volunteer
//! starts, so it must follow the job live (the done count rises without a reload); once the job is done, the DOM
//! the page's script built shows the job, its counts, the volunteer and loaded thumbnails of real frames.
//!
//! The screenshot goes to the test's temp dir and, when `BLENDERDIST_SCREENSHOT_DIR` is set, is copied there.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use super::{
    browser::{base64_decode, on_path, Browser},
    get,
};
use crate::{
    blender_e2e::make_scene,
    common::{blender_available, files_in, frame_names, init_tracing, skip, write_job, Dirs, BIN},
};

const JOB: &str = "orbit-shot";
const FRAMES: u32 = 6;
const VOLUNTEER: &str = "alice-desktop";
/// A deadline against hangs while Blender renders, not a speed check.
const LIMIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_of_a_real_farm_renders_in_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|c| on_path(c)) else {
        return skip("chromium is not installed (scripts/install-deps.sh installs it)");
    };
    if !blender_available() {
        return skip("blender is not installed (scripts/install-deps.sh installs it)");
    }
    init_tracing();
    let dirs = Dirs::new();
    let logs = Logs(vec![dirs.root.path().join("host.log"), dirs.root.path().join("volunteer.log")]);
    make_scene(&dirs.jobdir.join("scene.blend"), FRAMES, "320x180", 8);
    let host = Host::spawn(&dirs, &logs.0[0]).await;
    write_job(&dirs.jobdir, JOB, "scene.blend", 1, FRAMES);
    let web = host.dashboard;
    // A job still being prepared is listed as queued with no frames: wait for its frames.
    let listed = |s: &Value| job_in(s).is_some_and(|j| j["state"] == "queued" && j["frames_total"] == FRAMES);
    wait_for_status("the job's frames to be listed", web, listed).await;

    // The page first, with no volunteer yet: the job waits at 0 done.
    let mut browser = Browser::launch(chromium, &dirs.root.path().join("chromium-profile")).await;
    browser.call("Page.enable", json!({})).await;
    let viewport = json!({ "width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false });
    browser.call("Emulation.setDeviceMetricsOverride", viewport).await;
    browser.call("Page.navigate", json!({ "url": format!("http://{web}/") })).await;
    let queued = format!(
        "({})?.querySelector('.state').textContent === 'queued' && {} === '0 / {FRAMES} (0%)'",
        card(),
        frames_text()
    );
    browser.wait_for("the queued job on the page", &queued).await;
    // Every value the done count takes from now on, recorded in this document: a reload would lose the record.
    assert_eq!(browser.eval(&record_done_counts()).await, json!(true));

    let _volunteer = spawn_volunteer(&dirs, &host.join, &logs.0[1]);
    let out = dirs.renderdir.join(JOB);
    wait_for_status("the job to be done", web, |s| job_in(s).is_some_and(|j| j["state"] == "done")).await;
    assert_eq!(files_in(&out), frame_names(1, FRAMES, "png"), "the frames in RENDERDIR");

    // The page caught up by itself: the job done, every frame done, the volunteer and its frames listed.
    let all = format!("{FRAMES} / {FRAMES} (100%)");
    let done = format!("{}.querySelector('.state').textContent === 'done' && {} === '{all}'", card(), frames_text());
    browser.wait_for("the done job on the page", &done).await;
    let seen = browser.eval("window.__doneCounts").await;
    let counts: Vec<u32> = seen
        .as_array()
        .expect("the recorded counts are a list (the page was not reloaded)")
        .iter()
        .map(|t| t.as_str().and_then(|t| t.split(' ').next()?.parse().ok()).expect("a count"))
        .collect();
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "the done count only rises: {seen}");
    assert_eq!((counts.first(), counts.last()), (Some(&0), Some(&FRAMES)), "from 0 to all, live: {seen}");
    eprintln!("done counts the page showed, live: {counts:?}");

    let card = browser.eval(&format!("{}.outerHTML", card())).await;
    let card = card.as_str().unwrap_or_default();
    assert!(card.contains(&format!("<h3>{JOB}</h3>")), "{card}");
    assert!(card.contains(r#"<span class="state done">done</span>"#), "{card}");
    assert_eq!(card.matches(r#"class="cell d""#).count(), FRAMES as usize, "done cells: {card}");
    assert_eq!(card.matches(r#"class="cell "#).count(), FRAMES as usize, "cells: {card}");
    let summary = browser.eval("document.getElementById('summary').textContent").await;
    assert!(summary.as_str().unwrap_or_default().contains(&format!("frames {FRAMES} / {FRAMES}")), "{summary}");

    let peers = browser.eval(PEER_ROWS).await;
    let rows = peers.as_array().expect("the volunteers' rows");
    assert_eq!(rows.len(), 1, "one volunteer: {peers}");
    assert_eq!(rows[0][0], VOLUNTEER, "its name: {peers}");
    assert!(rows[0][1].as_str().is_some_and(|id| id.starts_with('…')), "its short id: {peers}");
    assert!(rows[0][2].as_str().is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit())), "Blender: {peers}");
    assert_eq!(rows[0][3], FRAMES.to_string(), "its frames done: {peers}");

    // Thumbnails of real frames, loaded by the browser.
    let loaded = "document.querySelectorAll('#recent img').length > 0 && \
                  [...document.querySelectorAll('#recent img')].every(i => i.complete && i.naturalWidth > 0)";
    browser.wait_for("the thumbnails to load", loaded).await;
    let thumbs = browser.eval(THUMBS).await;
    let thumbs = thumbs.as_array().expect("the thumbnails");
    assert_eq!(thumbs.len(), FRAMES as usize, "a thumbnail per finished frame: {thumbs:?}");
    for thumb in thumbs {
        let (path, query) = (thumb["path"].as_str().unwrap_or_default(), thumb["query"].as_str().unwrap_or_default());
        let file = path.strip_prefix(&format!("/thumbs/{JOB}/")).unwrap_or_else(|| panic!("not a thumbnail: {thumb}"));
        assert!(out.join(file).is_file(), "{path} is not a frame of the job in RENDERDIR");
        assert!(thumb["caption"].as_str().is_some_and(|c| c.contains(&format!("by {VOLUNTEER}"))), "{thumb}");
        let width = thumb["width"].as_u64().unwrap_or_default();
        assert!((1..=320).contains(&width), "{thumb}");

        let reply = get(web, &format!("{path}{query}")).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        let kind = reply.header("content-type").unwrap_or_default();
        assert!(kind.starts_with("image/"), "{path}: {kind}");
        let image = image::load_from_memory(&reply.body).unwrap_or_else(|e| panic!("{path} ({kind}): {e}"));
        assert_eq!(u64::from(image.width()), width, "{path}: the image the browser showed");
    }

    screenshot(&mut browser, dirs.root.path()).await;
}

/// A script expression: the job's card on the page (or undefined).
fn card() -> String {
    format!("[...document.querySelectorAll('#jobs .job')].find(c => c.querySelector('h3').textContent === '{JOB}')")
}

/// A script expression: the card's "frames" fact, e.g. "3 / 6 (50%)".
fn frames_text() -> String {
    format!("{}.querySelector('.job-facts b').textContent", card())
}

/// A script that records each new value of the job's "frames" fact into `window.__doneCounts`, as the page changes.
fn record_done_counts() -> String {
    format!(
        "(() => {{
            window.__doneCounts = [];
            const record = () => {{
                const card = {card};
                const fact = card && card.querySelector('.job-facts b');
                const seen = window.__doneCounts;
                if (fact && seen[seen.length - 1] !== fact.textContent) seen.push(fact.textContent);
            }};
            record();
            const changes = {{ subtree: true, childList: true, characterData: true }};
            new MutationObserver(record).observe(document.getElementById('jobs'), changes);
            return true;
        }})()",
        card = card()
    )
}

/// The volunteers' table as rows of cell texts.
const PEER_ROWS: &str = "[...document.querySelectorAll('#peers tr')].map(r => [...r.cells].map(c => c.textContent))";
/// Each thumbnail's URL (path and query), its loaded width and its caption.
const THUMBS: &str = "[...document.querySelectorAll('#recent figure')].map(f => { const i = f.querySelector('img'); \
                      const u = new URL(i.src); return { path: u.pathname, query: u.search, width: i.naturalWidth, \
                      caption: f.querySelector('figcaption').textContent }; })";

/// The job in a status report.
fn job_in(status: &Value) -> Option<&Value> {
    status["jobs"].as_array()?.iter().find(|j| j["name"] == JOB)
}

/// Polls `/api/status` until `cond` holds; panics with the last answer after [`LIMIT`].
async fn wait_for_status(what: &str, web: SocketAddr, cond: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    loop {
        let status: Value = serde_json::from_slice(&get(web, "/api/status").await.body).expect("/api/status is JSON");
        if cond(&status) {
            return;
        }
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}; the host says {status:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `blenderdist host` binary with a dashboard on a free loopback port.
struct Host {
    _child: Child,
    join: String,
    dashboard: SocketAddr,
}

impl Host {
    async fn spawn(dirs: &Dirs, log: &Path) -> Self {
        let mut child = Command::new(BIN)
            .arg("host")
            .args([&dirs.jobdir, &dirs.renderdir])
            .args(["--listen", "127.0.0.1:0", "--no-mdns", "--http", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("create the host's log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start the host");
        // Its ready lines: "    blenderdist join ADDR", then "Dashboard: http://ADDR/".
        let mut lines = BufReader::new(child.stdout.take().expect("the host's stdout")).lines();
        let ready = async {
            let mut join = None;
            while let Some(line) = lines.next_line().await.expect("read the host's stdout") {
                if let Some(addr) = line.trim().strip_prefix("blenderdist join ") {
                    join = Some(addr.to_string());
                } else if let Some(url) = line.strip_prefix("Dashboard: http://") {
                    let addr = url.trim_end_matches('/').parse().expect("the dashboard's address");
                    return (join.expect("the join line comes first"), addr);
                }
            }
            panic!("the host ended without printing its dashboard's address");
        };
        let (join, dashboard) =
            tokio::time::timeout(Duration::from_secs(60), ready).await.expect("the host did not start in 60 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { _child: child, join, dashboard }
    }
}

/// A real Blender volunteer by name, on explicit addresses only (no mDNS: parallel tests never meet).
fn spawn_volunteer(dirs: &Dirs, join: &str, log: &Path) -> Child {
    Command::new(BIN)
        .args(["join", join, "--no-mdns", "--no-auto-updates", "--threads", "1", "--name", VOLUNTEER])
        .arg("--cache-dir")
        .arg(dirs.cache(VOLUNTEER))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("create the volunteer's log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start the volunteer")
}

/// Saves a screenshot of the page under `dir` and, when `BLENDERDIST_SCREENSHOT_DIR` is set, copies it there.
async fn screenshot(browser: &mut Browser, dir: &Path) -> PathBuf {
    browser.eval("window.scrollTo(0, 0)").await;
    let shot = browser.call("Page.captureScreenshot", json!({ "format": "png" })).await;
    let png = base64_decode(shot["data"].as_str().expect("the screenshot's data"));
    let image = image::load_from_memory(&png).expect("the screenshot is an image");
    assert_eq!((image.width(), image.height()), (1280, 800));
    let path = dir.join("dashboard-real.png");
    std::fs::write(&path, &png).expect("save the screenshot");
    eprintln!("screenshot: {}", path.display());
    if let Some(keep) = std::env::var_os("BLENDERDIST_SCREENSHOT_DIR").filter(|d| !d.is_empty()) {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).expect("create BLENDERDIST_SCREENSHOT_DIR");
        let copy = keep.join("dashboard-real.png");
        std::fs::copy(&path, &copy).expect("copy the screenshot");
        eprintln!("screenshot: {}", copy.display());
    }
    path
}

/// Logs of the processes, shown when the test fails.
struct Logs(Vec<PathBuf>);

impl Drop for Logs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for log in &self.0 {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("---- {} (last lines) ----", log.display());
            tail.iter().rev().for_each(|line| eprintln!("{line}"));
        }
    }
}
