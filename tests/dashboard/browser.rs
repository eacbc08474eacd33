//! The dashboard page in headless Chromium, driven over the DevTools protocol: the script renders the snapshot,
//! hostile names stay text, a new snapshot shows without a reload, a done frame opens full size (an EXR too), and
//! the page says so when the host goes away. Screenshots go to target/dashboard-*.png.
//!
//! Not `chromium --dump-dom --virtual-time-budget`: virtual time stands still while a fetch is open, and the
//! page's event stream is always open, so Chromium would never get to dumping.

use std::{path::Path, sync::Arc, time::Duration};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};

use super::{get, job, snapshot, start, HOSTILE, JOB};
use crate::common::skip;
use blenderdist::protocol::JobState;

#[tokio::test]
async fn dashboard_page_renders_in_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|c| on_path(c)) else {
        return skip("chromium is not installed (scripts/install-deps.sh installs it)");
    };
    let served = start().await;
    let mut browser = Browser::launch(chromium, &served.root.path().join("chromium-profile")).await;
    browser.call("Page.enable", json!({})).await;
    // Any alert() would mean page data ran as script: record them instead of blocking the page.
    let trap = "window.__alerts = []; window.alert = (m) => window.__alerts.push(String(m));";
    browser.call("Page.addScriptToEvaluateOnNewDocument", json!({ "source": trap })).await;
    let viewport = json!({ "width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false });
    browser.call("Emulation.setDeviceMetricsOverride", viewport).await;
    browser.call("Page.navigate", json!({ "url": format!("http://{}/", served.addr) })).await;
    browser.wait_for("the first snapshot", "document.querySelectorAll('.cell').length > 600").await;

    let dom = browser.eval("document.documentElement.outerHTML").await;
    let dom = dom.as_str().unwrap_or_default();
    assert!(dom.contains("<h3>spring-shot</h3>") && dom.contains("<h3>forest-flyover</h3>"), "{dom}");
    assert!(dom.contains("render-box-02"), "{dom}");
    assert_eq!(dom.matches(r#"class="cell d""#).count(), 20 + 10, "done cells");
    assert_eq!(dom.matches(r#"class="cell r""#).count(), 3, "rendering cells");
    assert_eq!(dom.matches(r#"class="cell p""#).count(), 24 + 600, "pending cells");
    assert_eq!(dom.matches(r#"class="cell f""#).count(), 1, "failed cells");
    assert!(dom.contains(r#"class="badge live""#), "the event stream is connected");
    assert!(dom.contains("<b>12 min</b>"), "the ETA is human-readable");
    // Hostile names and error texts are text in the DOM, never elements.
    assert!(dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{dom}");
    assert!(!dom.contains(HOSTILE), "a volunteer's name became markup");
    assert_eq!(dom.matches("<script").count(), 1, "the page's own script only");
    assert!(dom.contains("<pre>Error: &lt;img src=x onerror=alert(2)&gt;"), "{dom}");
    let shown = browser.eval("document.querySelector('#peers td').textContent").await;
    assert_eq!(shown.as_str(), Some(HOSTILE), "the name shows as the volunteer wrote it");
    let thumbs = "[...document.querySelectorAll('#recent img')].every(i => i.complete && i.naturalWidth > 0)";
    browser.wait_for("the thumbnails", thumbs).await;
    browser.screenshot("dashboard-screenshot.png").await;
    browser.eval("document.getElementById('peers').scrollIntoView()").await;
    browser.screenshot("dashboard-volunteers.png").await;
    browser.eval("window.scrollTo(0, 0)").await;

    // A new snapshot shows without a reload.
    browser.eval("window.__sameDocument = true").await;
    let mut next = snapshot();
    next.status.jobs.push(job("added-later", JobState::Queued, 5, 0, 0, 0));
    next.frames[0].states.replace_range(23..24, "d");
    served.snapshots.send(Arc::new(next)).unwrap();
    browser.wait_for("the new snapshot", "document.body.textContent.includes('added-later')").await;
    assert_eq!(browser.eval("window.__sameDocument === true").await, json!(true), "the page reloaded");
    assert_eq!(browser.eval("document.querySelectorAll('#jobs .cell.d').length").await, json!(31));

    // A done frame opens full size: an EXR (known from the recent frames) as a PNG the browser can show, then one
    // the page asks the host about.
    let first_job_cell =
        |i: usize| format!("document.querySelector('#jobs .job').querySelectorAll('.cell')[{i}].click()");
    browser.eval(&first_job_cell(3)).await;
    browser.wait_for("frame 4 full size", &lightbox_shows("0004.exr")).await;
    assert_eq!(browser.eval("document.getElementById('lightbox-img').naturalWidth").await, json!(640));
    browser.screenshot("dashboard-lightbox.png").await;
    browser.eval("document.getElementById('lightbox-close').click()").await;
    let frames = served.root.path().join("renders").join(JOB);
    std::fs::copy(frames.join("0001.png"), frames.join("0006.png")).unwrap();
    browser.eval(&first_job_cell(5)).await;
    browser.wait_for("frame 6 full size", &lightbox_shows("0006.png")).await;
    browser.eval("document.getElementById('lightbox-close').click()").await;
    assert_eq!(browser.eval("window.__alerts.length").await, json!(0), "nothing from the snapshot ran as script");

    // The host stops: the page says it lost the stream and is retrying.
    drop(served.snapshots);
    let badge = "document.getElementById('connection').textContent === 'disconnected, retrying'";
    browser.wait_for("the disconnected badge", badge).await;
}

/// Whether the lightbox is open and shows FILE of the job, loaded.
fn lightbox_shows(file: &str) -> String {
    format!(
        "(() => {{ const box = document.getElementById('lightbox'), img = document.getElementById('lightbox-img');
           return !box.hidden && img.complete && img.naturalWidth > 0 && img.src.endsWith('/{JOB}/{file}'); }})()"
    )
}

pub(super) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// A headless Chromium and a DevTools connection to its one page.
pub(super) struct Browser {
    _child: Child,
    page: WebSocket,
    next_id: u64,
}

impl Browser {
    pub(super) async fn launch(program: &str, profile: &Path) -> Self {
        let mut child = Command::new(program)
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
            .args(["--window-size=1280,800", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Chromium names its DevTools address on stderr: "DevTools listening on ws://127.0.0.1:PORT/devtools/...".
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let find = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix("DevTools listening on ws://") {
                    return url.split('/').next().unwrap().to_string();
                }
            }
            panic!("chromium ended without a DevTools address");
        };
        let host = tokio::time::timeout(Duration::from_secs(60), find).await.expect("chromium did not start in 60 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let targets: Value = serde_json::from_slice(&get(host.parse().unwrap(), "/json/list").await.body).unwrap();
        let page = targets.as_array().unwrap().iter().find(|t| t["type"] == "page").expect("a page target");
        let url = page["webSocketDebuggerUrl"].as_str().unwrap();
        let path = &url[url.find("/devtools/").unwrap()..];
        Self { _child: child, page: WebSocket::connect(&host, path).await, next_id: 0 }
    }

    /// Sends a DevTools command and returns its result.
    pub(super) async fn call(&mut self, method: &str, params: Value) -> Value {
        let reply = self.send(method, params).await;
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }

    /// Sends a DevTools command and returns the whole reply, skipping the events that come meanwhile.
    async fn send(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.page.send(&json!({ "id": id, "method": method, "params": params }).to_string()).await;
        let reply = async {
            loop {
                let message: Value = serde_json::from_str(&self.page.receive().await).unwrap();
                if message["id"] == id {
                    return message;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), reply).await.expect("no DevTools answer in 30 s")
    }

    /// Evaluates a script expression in the page and returns its value.
    pub(super) async fn eval(&mut self, expression: &str) -> Value {
        let result = self.try_eval(expression).await;
        result.unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    async fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let reply = self.send("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true })).await;
        match (reply.get("error"), reply["result"].get("exceptionDetails")) {
            (None, None) => Ok(reply["result"]["result"]["value"].clone()),
            _ => Err(reply),
        }
    }

    /// Polls `condition` until it is true; while the page loads, an evaluation may fail, which counts as false.
    pub(super) async fn wait_for(&mut self, what: &str, condition: &str) {
        let start = std::time::Instant::now();
        while self.try_eval(condition).await != Ok(json!(true)) {
            assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a screenshot of the window under target/.
    async fn screenshot(&mut self, name: &str) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let png = base64_decode(shot["data"].as_str().unwrap());
        let image = image::load_from_memory(&png).unwrap();
        assert_eq!((image.width(), image.height()), (1280, 800));
        // Under target/ even when CARGO_TARGET_DIR puts the build elsewhere (then the folder may not exist yet).
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

/// Just enough of a WebSocket client for DevTools: text messages, masked as a client must, no extensions.
struct WebSocket {
    stream: TcpStream,
}

impl WebSocket {
    async fn connect(host: &str, path: &str) -> Self {
        let mut stream = TcpStream::connect(host).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        Self { stream }
    }

    async fn send(&mut self, text: &str) {
        let mask = [0x5a, 0x1c, 0x93, 0x07];
        let mut frame = vec![0x81];
        match text.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => frame.extend([0x80 | 126].into_iter().chain((n as u16).to_be_bytes())),
            n => frame.extend([0x80 | 127].into_iter().chain((n as u64).to_be_bytes())),
        }
        frame.extend(mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The next text message (fragments joined; pings and other control frames skipped).
    async fn receive(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let [first, second] = [self.stream.read_u8().await.unwrap(), self.stream.read_u8().await.unwrap()];
            let len = match second & 0x7f {
                126 => u64::from(self.stream.read_u16().await.unwrap()),
                127 => self.stream.read_u64().await.unwrap(),
                n => u64::from(n),
            };
            let mut payload = vec![0; usize::try_from(len).unwrap()];
            self.stream.read_exact(&mut payload).await.unwrap();
            let opcode = first & 0x0f;
            assert_ne!(opcode, 0x8, "DevTools closed the connection");
            if opcode >= 0x8 {
                continue;
            }
            message.extend(payload);
            if first & 0x80 != 0 {
                return String::from_utf8(message).unwrap();
            }
        }
    }
}

pub(super) fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let bits = chunk.iter().enumerate().fold(0u32, |acc, (i, &d)| acc | u32::from(d) << (18 - 6 * i));
        out.extend((0..chunk.len() - 1).map(|i| (bits >> (16 - 8 * i)) as u8));
    }
    out
}
