//! The dashboard (`host --http`): its routes over plain HTTP against a hand-made snapshot and a RENDERDIR of real
//! image files; its refusals (paths out of RENDERDIR, unknown jobs, symlinks out, oversized requests and images);
//! the live event stream; and the page as headless Chromium renders it, hostile names included.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use blenderdist::{
    host::http::{self, ErrorEntry, FinishedFrame, FrameGrid, Snapshot},
    protocol::{FrameRef, JobReport, JobState, PeerReport, StatusReport},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
};

mod browser;
mod real;

const JOB: &str = "spring-shot";
/// What the files outside RENDERDIR (and the symlink to one) hold; no answer may ever contain it.
const SECRET: &str = "SECRET-7f3a2c-do-not-serve";
/// A volunteer's chosen name: it must show as text, never run.
const HOSTILE: &str = "<script>alert(1)</script>";
const HOSTILE_ERROR: &str = "Error: <img src=x onerror=alert(2)>";
/// Frame 1's states: 20 done, 1 failed, 3 rendering, the rest pending.
const STATES: &str = "ddddddddddddddfddddddrrrpppppppppppppppppppppppp";

/// A dashboard serving a temporary RENDERDIR; dropping `snapshots` stops it.
struct Served {
    addr: SocketAddr,
    snapshots: watch::Sender<Arc<Snapshot>>,
    root: tempfile::TempDir,
}

async fn start() -> Served {
    crate::common::init_tracing();
    let root = tempfile::tempdir().unwrap();
    let renderdir = root.path().join("renders");
    write_frames(root.path(), &renderdir);
    let (snapshots, receiver) = watch::channel(Arc::new(snapshot()));
    let addr = http::serve("127.0.0.1:0".parse().unwrap(), renderdir, receiver).await.unwrap();
    Served { addr, snapshots, root }
}

fn write_frames(root: &Path, renderdir: &Path) {
    let job = renderdir.join(JOB);
    std::fs::create_dir_all(&job).unwrap();
    // An 8-bit PNG: a sky-to-ground gradient with a sun, so the screenshot shows something.
    image::RgbImage::from_fn(480, 270, |x, y| {
        let sun = (x as i32 - 340).pow(2) + (y as i32 - 90).pow(2) < 900;
        let t = y as f32 / 270.0;
        if sun {
            image::Rgb([255, 214, 120])
        } else if y < 180 {
            image::Rgb([(40.0 + 120.0 * t) as u8, (90.0 + 100.0 * t) as u8, (200.0 - 40.0 * t) as u8])
        } else {
            image::Rgb([60, (110 + x % 40) as u8, 50])
        }
    })
    .save(job.join("0001.png"))
    .unwrap();
    // A 16-bit PNG: its middle third is (64, 128, 192) once scaled to 8 bits.
    let middle = |x: u32, y: u32, w: u32, h: u32| (w / 3..2 * w / 3).contains(&x) && (h / 3..2 * h / 3).contains(&y);
    image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(400, 300, |x, y| {
        if middle(x, y, 400, 300) {
            image::Rgb([0x4040, 0x8080, 0xc0c0])
        } else {
            image::Rgb([(x * 160) as u16, 0x2000, (y * 200) as u16])
        }
    })
    .save(job.join("0003.png"))
    .unwrap();
    // A linear float EXR, brighter than white on the right; its middle third is grey 0.2159, which is sRGB 128.
    image::DynamicImage::ImageRgba32F(image::Rgba32FImage::from_fn(640, 360, |x, y| {
        let ramp = x as f32 / 320.0;
        if middle(x, y, 640, 360) {
            image::Rgba([0.2159, 0.2159, 0.2159, 1.0])
        } else {
            image::Rgba([ramp, 0.5 * ramp, 0.1, 1.0])
        }
    }))
    .save(job.join("0004.exr"))
    .unwrap();
    // PNGs whose headers claim too many pixels (and hold next to none): never to be decoded.
    claimed_png(&job.join("0005.png"), 20_000, 20_000);
    claimed_png(&job.join("0007.png"), 12_000, 9_000);
    std::fs::write(job.join("notes.txt"), "not a frame").unwrap();
    // The secret, outside the job's folder and outside RENDERDIR, and a frame that links to it.
    std::fs::write(root.join("secret.png"), SECRET).unwrap();
    std::fs::write(renderdir.join("secret.png"), SECRET).unwrap();
    std::os::unix::fs::symlink(root.join("secret.png"), job.join("0002.png")).unwrap();
    // A folder of real frames whose job the snapshot does not list.
    let other = renderdir.join("other-job-not-in-snapshot");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(job.join("0001.png"), other.join("0001.png")).unwrap();
}

/// A PNG file whose header says WIDTH×HEIGHT, with a token first IDAT chunk so decoders get past the header.
fn claimed_png(path: &Path, width: u32, height: u32) {
    let mut encoder = png::Encoder::new(std::fs::File::create(path).unwrap(), width, height);
    encoder.set_color(png::ColorType::Rgb);
    let mut writer = encoder.write_header().unwrap();
    writer.write_chunk(png::chunk::IDAT, &[0x78, 0x9c]).unwrap();
}

fn job(name: &str, state: JobState, total: u32, done: u32, rendering: u32, failed: u32) -> JobReport {
    JobReport {
        name: name.into(),
        state,
        priority: 0,
        frames_total: total,
        frames_done: done,
        frames_rendering: rendering,
        frames_failed: failed,
        avg_frame_seconds: (done > 0).then_some(94.5),
        eta_seconds: (state == JobState::Rendering).then_some(745.0),
        blend: format!("{name}.blend"),
        error: None,
    }
}

fn peer(id: &str, name: &str, blender: Option<&str>, done: u32, rendering: &[u32]) -> PeerReport {
    PeerReport {
        id: id.into(),
        name: name.into(),
        blender: blender.map(Into::into),
        frames_done: done,
        rendering: rendering.iter().map(|&frame| FrameRef { job: JOB.into(), frame }).collect(),
        avg_frame_seconds: (done > 0).then_some(91.0),
    }
}

fn snapshot() -> Snapshot {
    let mut invalid = job("broken-job", JobState::Invalid, 0, 0, 0, 0);
    invalid.error = Some("line 2: the first frame is not a number".into());
    let status = StatusReport {
        jobs: vec![
            job(JOB, JobState::Rendering, 48, 20, 3, 1),
            job("forest-flyover", JobState::Queued, 600, 0, 0, 0),
            job("title-card", JobState::Done, 10, 10, 0, 0),
            invalid,
        ],
        peers: vec![
            peer("12D3KooWQmBzvF8ypa1cVLbKX8pAkW1sYy9gDx5t6RN2mEwXyZab", HOSTILE, Some("3.4.1"), 12, &[21, 22]),
            peer("12D3KooWAbC9rTzT4ffqUe7nD3kCz6h1xJvYpL2sWm8oQeRtUvcd", "render-box-02", Some("4.2.0"), 8, &[23]),
            peer("12D3KooWZz1yXw2vU3tS4rQ5pO6nM7lK8jI9hG0fE1dC2bA3z9ef", "laptop", None, 0, &[]),
        ],
        banned: vec![],
    };
    let grid = |job: &str, first: u32, states: String| FrameGrid { job: job.into(), first, states, per_cell: 1 };
    let recent = |frame: u32, file: &str, by: &str| FinishedFrame {
        job: JOB.into(),
        frame,
        file: file.into(),
        by: by.into(),
        at: now() - u64::from(frame) * 60,
    };
    Snapshot {
        status,
        frames: vec![
            grid(JOB, 1, STATES.into()),
            grid("forest-flyover", 1001, "p".repeat(600)),
            grid("title-card", 1, "d".repeat(10)),
            grid("broken-job", 0, String::new()),
        ],
        recent: vec![
            recent(1, "0001.png", HOSTILE),
            recent(3, "0003.png", "render-box-02"),
            recent(4, "0004.exr", "laptop"),
        ],
        errors: vec![ErrorEntry {
            job: JOB.into(),
            frame: Some(15),
            by: Some(HOSTILE.into()),
            at: now() - 300,
            text: format!("{HOSTILE_ERROR}\nTraceback (most recent call last):\n  File \"render.py\", line 3"),
        }],
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// An HTTP answer, as the tiny client below reads it.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` as it is and reads the answer to its end: the connection's end (the request says
/// `Connection: close`), or the body's announced length (for servers that keep the connection open anyway).
async fn send(addr: SocketAddr, request: &[u8]) -> Reply {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0; 16 * 1024];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            raw.extend_from_slice(&buf[..n]);
            if n == 0 || complete(&raw) {
                return raw;
            }
        }
    };
    let raw = tokio::time::timeout(Duration::from_secs(30), exchange).await.expect("no answer within 30 s");
    parse(&raw)
}

async fn get(addr: SocketAddr, target: &str) -> Reply {
    send(addr, format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes()).await
}

/// Whether `raw` holds a whole answer with a Content-Length.
fn complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let reply = parse(&raw[..end + 4]);
    reply.header("content-length").and_then(|l| l.parse::<usize>().ok()).is_some_and(|len| raw.len() >= end + 4 + len)
}

fn parse(raw: &[u8]) -> Reply {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("no end of headers in the answer");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("a status line");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).collect();
    let mut reply = Reply { status, headers, body: Vec::new() };
    let body = &raw[end + 4..];
    reply.body = if reply.header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        dechunk(body)
    } else {
        body.to_vec()
    };
    reply
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&body[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 || body.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
        body = &body[(eol + 4 + size).min(body.len())..];
    }
    out
}

#[tokio::test]
async fn dashboard_serves_the_status_and_the_page() {
    let served = start().await;
    let status = get(served.addr, "/api/status").await;
    assert_eq!(status.status, 200);
    assert_eq!(status.header("content-type"), Some("application/json"));
    let report: StatusReport = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(report, snapshot().status, "/api/status is the snapshot's status report");

    let whole: serde_json::Value = serde_json::from_slice(&get(served.addr, "/api/snapshot").await.body).unwrap();
    assert_eq!(whole["frames"][0]["states"], STATES);
    assert_eq!(whole["recent"][2]["file"], "0004.exr");
    assert_eq!(whole["errors"][0]["by"], HOSTILE);

    let page = get(served.addr, "/").await;
    assert_eq!((page.status, page.header("content-type")), (200, Some("text/html; charset=utf-8")));
    assert!(page.text().contains(r#"<script src="/page.js""#));
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    let script = get(served.addr, "/page.js").await;
    assert!(script.header("content-type").unwrap_or_default().starts_with("text/javascript"));
    assert!(script.text().contains("EventSource"));
    assert!(!script.text().contains("innerHTML"), "the page builds its DOM from data with textContent only");
    assert!(get(served.addr, "/page.css").await.text().contains(".cell.r"));

    // Frames by number: the file name, whatever its extension.
    let found = get(served.addr, &format!("/api/frame/{JOB}/4")).await;
    assert_eq!(found.status, 200, "{}", found.text());
    let found: serde_json::Value = serde_json::from_slice(&found.body).unwrap();
    assert_eq!((found["frame"].as_u64(), found["file"].as_str()), (Some(4), Some("0004.exr")));
    let missing = get(served.addr, &format!("/api/frame/{JOB}/9")).await;
    assert_eq!((missing.status, missing.text().trim()), (404, "no such frame"));
    assert_eq!(get(served.addr, &format!("/api/frame/{JOB}/x1")).await.status, 400);
}

#[tokio::test]
async fn dashboard_shows_frames_and_thumbnails_of_every_depth() {
    let served = start().await;
    let job = served.root.path().join("renders").join(JOB);
    let original = get(served.addr, &format!("/frames/{JOB}/0001.png")).await;
    assert_eq!((original.status, original.header("content-type")), (200, Some("image/png")));
    assert_eq!(original.body, std::fs::read(job.join("0001.png")).unwrap(), "the frame file, byte for byte");
    assert_eq!(original.header("x-content-type-options"), Some("nosniff"));

    for (file, pixel) in [("0001.png", None), ("0003.png", Some([64, 128, 192])), ("0004.exr", Some([128, 128, 128]))] {
        for round in ["made", "cached"] {
            let thumb = get(served.addr, &format!("/thumbs/{JOB}/{file}")).await;
            assert_eq!(thumb.status, 200, "thumbnail of {file}: {}", thumb.text());
            let image = image::load_from_memory(&thumb.body).unwrap_or_else(|e| panic!("thumbnail of {file}: {e}"));
            assert!(
                image.width() <= 320 && image.height() <= 320,
                "{file} ({round}): {}×{}",
                image.width(),
                image.height()
            );
            assert!(image.width() >= 300, "{file} ({round}) is scaled to fit, not cropped: {}", image.width());
            if let Some(expected) = pixel {
                // 16 bits scaled to 8, linear float clamped and sRGB-encoded; JPEG may be off by a little.
                let got = image.to_rgb8().get_pixel(image.width() / 2, image.height() / 2).0;
                let close = got.iter().zip(expected).all(|(&g, e)| g.abs_diff(e) <= 3);
                assert!(close, "{file} ({round}): pixel {got:?}, expected about {expected:?}");
            }
        }
    }

    // Full size: the PNG as it is; the EXR converted to a PNG the browser can show.
    let png = get(served.addr, &format!("/view/{JOB}/0001.png")).await;
    assert_eq!(png.body, original.body);
    let exr = get(served.addr, &format!("/view/{JOB}/0004.exr")).await;
    assert_eq!((exr.status, exr.header("content-type")), (200, Some("image/png")));
    let exr = image::load_from_memory(&exr.body).unwrap();
    assert_eq!((exr.width(), exr.height()), (640, 360));
    assert_eq!(exr.to_rgba8().get_pixel(320, 180).0, [128, 128, 128, 255]);
    assert_eq!(exr.to_rgba8().get_pixel(639, 0).0, [255, 255, 89, 255], "clamped past white, sRGB-encoded");

    // Images whose headers claim too many pixels are refused before anything is decoded.
    for (file, size) in [("0005.png", "20000×20000"), ("0007.png", "12000×9000")] {
        let big = get(served.addr, &format!("/thumbs/{JOB}/{file}")).await;
        assert_eq!(big.status, 422, "{}", big.text());
        let reason = format!("the image is {size} pixels, more than the dashboard decodes (16384×16384, 100 M pixels)");
        assert_eq!(big.text().trim(), reason);
    }
}

#[tokio::test]
async fn dashboard_serves_nothing_outside_renderdir() {
    let served = start().await;
    let long = format!("/frames/{JOB}/{}.png", "a".repeat(3000));
    let refused = [
        "/frames/..%2F..%2Fetc/passwd",
        "/frames/..%2Fsecret.png/x.png",
        "/frames/spring-shot/..%2Fsecret.png",
        "/frames/spring-shot/..%5Csecret.png",
        "/frames/spring-shot/%2e%2e/x.png",
        "/frames/spring-shot/../secret.png",
        "/frames/%2e%2e/secret.png",
        "/frames/../secret.png",
        "/frames/%2E%2E/secret.png",
        "/thumbs/%2e%2e/secret.png",
        "/view/..%2F/secret.png",
        "/frames/spring-shot/0001.png%2F..%2F..%2F..%2Fsecret.png",
        "/frames/other-job-not-in-snapshot/0001.png",
        "/thumbs/other-job-not-in-snapshot/0001.png",
        "/api/frame/other-job-not-in-snapshot/1",
        // A frame that is a symlink to a file outside RENDERDIR.
        "/frames/spring-shot/0002.png",
        "/thumbs/spring-shot/0002.png",
        "/view/spring-shot/0002.png",
        "/frames/spring-shot/0001%00.png",
        "/frames/spring-shot%00/0001.png",
        "/frames/spring-shot/.hidden.png",
        "/frames/spring-shot/notes.txt",
        "/frames/spring-shot/0009.png",
        "/frames/spring-shot/",
        "/secret.png",
        &long,
    ];
    for target in refused {
        let reply = get(served.addr, target).await;
        assert!(matches!(reply.status, 400 | 404), "{target}: {} {}", reply.status, reply.text());
        assert!(!reply.text().contains("SECRET"), "{target} gave the secret away");
    }
    let reasons = [
        ("/frames/..%2F..%2Fetc/passwd", "bad job name: it starts with a dot"),
        ("/frames/spring-shot/..%2Fsecret.png", "bad file name: it starts with a dot"),
        ("/frames/spring-shot/0001%00.png", "bad file name: it holds a control character"),
        ("/frames/spring-shot/notes.txt", "bad file name: it is not an image file"),
        ("/frames/other-job-not-in-snapshot/0001.png", "no such job: other-job-not-in-snapshot"),
        ("/frames/spring-shot/0002.png", "no such frame"),
        (long.as_str(), "bad file name: it is too long"),
    ];
    for (target, reason) in reasons {
        assert_eq!(get(served.addr, target).await.text().trim(), reason, "{target}");
    }
}

#[tokio::test]
async fn dashboard_bounds_requests() {
    let served = start().await;
    let addr = served.addr;
    let body =
        send(addr, b"GET /api/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100000\r\n\r\n").await;
    assert_eq!(body.status, 413, "{}", body.text());
    let chunked = b"GET /api/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(send(addr, chunked).await.status, 413);
    let small =
        send(addr, b"GET /api/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}").await;
    assert_eq!(small.status, 200);
    let huge = get(addr, &format!("/frames/{JOB}/{}.png", "a".repeat(20_000))).await;
    assert_eq!(huge.status, 414);
    let post =
        send(addr, b"POST /api/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(post.status, 405, "read-only: nothing but GET");

    // Event streams are capped: the one past the cap is told to come back later.
    let mut streams = Vec::new();
    for _ in 0..16 {
        let mut stream = open_events(addr).await;
        read_until(&mut stream, &mut Vec::new(), "data:").await;
        streams.push(stream);
    }
    let busy = get(addr, "/api/events").await;
    assert_eq!((busy.status, busy.header("retry-after")), (503, Some("1")));
    assert_eq!(get(addr, "/api/status").await.status, 200, "other requests still pass");
    drop(streams);
}

#[tokio::test]
async fn dashboard_caps_open_connections() {
    let served = start().await;
    // 256 idle connections (it takes a request to show one was accepted: send it, then read the answer).
    let mut idle = Vec::new();
    for _ in 0..256 {
        idle.push(TcpStream::connect(served.addr).await.unwrap());
    }
    let mut waiting = TcpStream::connect(served.addr).await.unwrap();
    waiting.write_all(b"GET /api/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.read_to_end(&mut answer)).await;
    assert!(early.is_err(), "a connection past the cap was served: {}", String::from_utf8_lossy(&answer));
    idle.truncate(255);
    tokio::time::timeout(Duration::from_secs(10), waiting.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
}

async fn open_events(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Reads from an open stream until what was read contains `needle`.
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, needle: &str) {
    let reading = async {
        while !String::from_utf8_lossy(seen).contains(needle) {
            let mut buf = [0; 8192];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended before {needle:?}: {}", String::from_utf8_lossy(seen));
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reading)
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} within 10 s"));
}

#[tokio::test]
async fn dashboard_streams_each_new_snapshot() {
    let served = start().await;
    let mut stream = open_events(served.addr).await;
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "title-card").await;
    let head = String::from_utf8_lossy(&seen).into_owned();
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "{head}");

    let mut next = snapshot();
    next.status.jobs.push(job("added-later", JobState::Queued, 5, 0, 0, 0));
    served.snapshots.send(Arc::new(next)).unwrap();
    read_until(&mut stream, &mut seen, "added-later").await;

    // The host stopping (its sender dropped) ends the stream and the server.
    drop(served.snapshots);
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut seen)).await;
    assert!(ended.is_ok(), "the event stream outlived the host");
    crate::common::wait_until("the server to close", Duration::from_secs(10), || {
        std::net::TcpStream::connect(served.addr).is_err()
    })
    .await;
}
