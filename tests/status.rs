//! `blenderdist status`: a host reports its jobs and volunteers, by name, to the status command over the mesh.

use std::time::Duration;

use blenderdist::{protocol::VolunteerCaps, worker::fake::FakeRenderer};

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(60);

fn caps(name: &str) -> Option<VolunteerCaps> {
    Some(VolunteerCaps { blender: "3.4.1".into(), name: Some(name.into()), ..Default::default() })
}

fn status(addr: &str, json: bool) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_blenderdist"));
    command.args(["status", addr]);
    if json {
        command.arg("--json");
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_jobs_and_volunteers() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"not really a blend").unwrap();
    let (host, _stop_host) = start_host(&dirs).await;
    let addr = host.addrs[0].clone();
    let slow = || FakeRenderer::new(Duration::from_millis(200));
    let (_a, _stop_a) = start_fake_worker_with(dirs.cache("a"), addr.clone(), slow(), caps("alice-desktop"));
    let (_b, _stop_b) = start_fake_worker_with(dirs.cache("b"), addr.clone(), slow(), caps("<b>bob</b>\npc"));
    std::fs::write(dirs.jobdir.join("broken.job"), "scene.blend\nten\n20\n").unwrap();
    write_job(&dirs.jobdir, "shot", "scene.blend", 1, 400);
    let log_path = dirs.jobdir.join("shot.log");
    let done = || std::fs::read_to_string(&log_path).map(|l| l.matches(" done by ").count()).unwrap_or(0);
    wait_until("6 frames done", LIMIT, || done() >= 6).await;

    let addr_text = addr.to_string();
    let json = tokio::task::spawn_blocking(move || status(&addr_text, true)).await.unwrap();
    let report: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let jobs = report["jobs"].as_array().unwrap();
    let shot = jobs.iter().find(|j| j["name"] == "shot").unwrap_or_else(|| panic!("{json}"));
    assert_eq!(shot["frames_total"], 400, "{json}");
    assert!(shot["frames_done"].as_u64().unwrap() >= 6, "{json}");
    assert!(["rendering", "queued"].contains(&shot["state"].as_str().unwrap()), "{json}");
    assert!(shot["avg_frame_seconds"].as_f64().unwrap() > 0.0, "{json}");
    assert!(shot["blend"].as_str().unwrap().ends_with("scene.blend"), "{json}");
    let broken = jobs.iter().find(|j| j["name"] == "broken").unwrap_or_else(|| panic!("{json}"));
    assert_eq!(broken["state"], "invalid", "{json}");
    assert!(broken["error"].as_str().unwrap().contains("ten"), "{json}");

    let peers = report["peers"].as_array().unwrap();
    let names: Vec<&str> = peers.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alice-desktop", "bbob/b pc"], "names are shown, made safe: {json}");
    let delivered: u64 = peers.iter().map(|p| p["frames_done"].as_u64().unwrap()).sum();
    assert!(delivered >= 6, "{json}");
    assert!(peers.iter().all(|p| p["blender"] == "3.4.1"), "{json}");

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains(" done by alice-desktop (12D3KooW"), "{log}");

    let addr_text = addr.to_string();
    let text = tokio::task::spawn_blocking(move || status(&addr_text, false)).await.unwrap();
    let shot = text.lines().find(|l| l.contains(" shot ")).unwrap_or_default();
    assert!(shot.contains("░ ") && shot.contains("/400") && shot.contains("rendering"), "{text}");
    assert!(text.lines().any(|l| l.contains(" broken ") && l.contains("invalid")), "{text}");
    assert!(text.contains("broken: line 2"), "the rejection reason follows the table: {text}");
    assert!(text.lines().any(|l| l.contains(" alice-desktop ") && l.contains("3.4.1")), "{text}");
}

/// `status --watch` keeps reporting as the job moves, until the job is done, and its counts match the frames on
/// disk; Ctrl-C ends it cleanly, and on a terminal it gives the screen back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_follows_a_job_to_the_end() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"not really a blend").unwrap();
    let (host, _stop_host) = start_host(&dirs).await;
    let addr = host.addrs[0].to_string();
    let renderer = FakeRenderer::new(Duration::from_millis(100));
    let (_a, _stop_a) = start_fake_worker_with(dirs.cache("a"), host.addrs[0].clone(), renderer, caps("alice-desktop"));
    write_job(&dirs.jobdir, "quick", "scene.blend", 1, 30);
    let quick = dirs.renderdir.join("quick");

    let reports = tokio::task::spawn_blocking(move || {
        use std::io::BufRead as _;
        let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_blenderdist"))
            .args(["status", &addr, "--watch", "--json", "--interval", "0.2"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut reports: Vec<serde_json::Value> = Vec::new();
        for line in std::io::BufReader::new(watch.stdout.take().unwrap()).lines() {
            let report: serde_json::Value = serde_json::from_str(&line.unwrap()).expect("one JSON document per line");
            let done = report["jobs"][0]["state"] == "done";
            let on_disk = files_in(&quick).len();
            reports.push(report);
            if done {
                // Frames are stored before they count as done, so the last report matches the folder exactly.
                assert_eq!(reports.last().unwrap()["jobs"][0]["frames_done"], on_disk, "{reports:?}");
                break;
            }
            assert!(reports.len() < 1000, "the job never finished: {reports:?}");
        }
        interrupt(&watch);
        let status = watch.wait().unwrap();
        assert!(status.success(), "status --watch ends cleanly on Ctrl-C: {status}");
        (reports, addr)
    });
    let (reports, addr) = tokio::time::timeout(LIMIT, reports).await.expect("the watch ends").unwrap();
    let done: Vec<u64> = reports.iter().filter_map(|r| r["jobs"][0]["frames_done"].as_u64()).collect();
    assert_eq!(done.last(), Some(&30), "{done:?}");
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "progress only grows: {done:?}");
    assert!(done.iter().any(|d| *d < 30), "the watch saw the job while it rendered: {done:?}");

    // On a terminal (a pseudo-terminal made by `script`), the report is drawn on the alternate screen and Ctrl-C
    // (here from `timeout -s INT`) restores the terminal.
    let bin = env!("CARGO_BIN_EXE_blenderdist");
    let inner = format!("timeout -s INT 3 {bin} status {addr} --watch --interval 0.5");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("script").args(["-qec", &inner, "/dev/null"]).output().unwrap()
    })
    .await
    .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("\x1b[?1049h"), "enters the alternate screen: {screen:?}");
    assert!(screen.contains("blenderdist status /ip4/127.0.0.1/tcp/"), "{screen}");
    assert!(screen.contains("30/30") && screen.contains("done"), "{screen}");
    assert!(screen.contains("alice-desktop"), "{screen}");
    assert!(screen.trim_end().ends_with("\x1b[?1049l"), "leaves the alternate screen at Ctrl-C: {screen:?}");
}

/// Sends SIGINT, as Ctrl-C in a terminal does.
fn interrupt(child: &std::process::Child) {
    let pid = child.id().to_string();
    let status = std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(status.success());
}

#[test]
fn status_without_a_host_says_so() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_blenderdist"))
        .args(["status", "127.0.0.1:1", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no blenderdist host answered at /ip4/127.0.0.1/tcp/1"), "{err}");
}

/// A plain HTTP/1.1 GET; the body of the answer.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{path}: {raw}");
    raw.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}

/// The dashboard of a real host shows its jobs, the frames' states, the latest frames and the volunteers by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_the_farm() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"not really a blend").unwrap();
    init_tracing();
    let (_stop_host, shutdown) = shutdown_switch();
    let config = blenderdist::host::HostConfig { http: Some("127.0.0.1:0".parse().unwrap()), ..dirs.host_config() };
    let host = blenderdist::host::start(config, shutdown).await.unwrap();
    let web = host.dashboard.expect("the host serves a dashboard");
    let addr = host.addrs[0].clone();
    let fake = || FakeRenderer::new(Duration::from_millis(50));
    let (_a, _stop_a) = start_fake_worker_with(dirs.cache("a"), addr.clone(), fake(), caps("alice-desktop"));
    write_job(&dirs.jobdir, "shot", "scene.blend", 1, 8);
    let out = dirs.renderdir.join("shot");
    wait_until("all 8 frames", LIMIT, || files_in(&out).len() == 8).await;

    // Snapshots are published every half second: wait for one that shows the finished job.
    let snapshot = move || serde_json::from_str::<serde_json::Value>(&http_get(web, "/api/snapshot")).unwrap();
    let mut last = serde_json::Value::Null;
    for _ in 0..40 {
        last = tokio::task::spawn_blocking(snapshot).await.unwrap();
        if last["frames"][0]["states"] == "dddddddd" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(last["frames"][0]["states"], "dddddddd", "{last:#}");
    assert_eq!(last["status"]["jobs"][0]["state"], "done", "{last:#}");
    assert_eq!(last["status"]["peers"][0]["name"], "alice-desktop", "{last:#}");
    let recent = last["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 8, "{last:#}");
    assert!(recent.iter().all(|f| f["by"] == "alice-desktop" && f["file"].as_str().unwrap().ends_with(".png")));
    let status: serde_json::Value =
        serde_json::from_str(&tokio::task::spawn_blocking(move || http_get(web, "/api/status")).await.unwrap())
            .unwrap();
    assert_eq!(status, last["status"], "/api/status is the snapshot's status");
}
