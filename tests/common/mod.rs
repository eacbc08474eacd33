//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use blenderdist::{
    host::{self, HostConfig, RunningHost},
    worker::{self, WorkerConfig},
};
use libp2p::Multiaddr;

/// The binary under test, built once by cargo for the whole test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_blenderdist");

/// Skips a test that needs something this machine lacks, saying so. Under CI (`CI` set) it fails instead: CI runs
/// as root with Blender installed, so a skip there means a broken install step, not a missing capability.
pub fn skip(reason: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0") {
        panic!("this test would be SKIPPED under CI: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// Waits for `cond` to hold, polling; panics with `what` after `limit`. A deadline against hangs, not a speed check.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Blocking variant for tests that drive processes.
pub fn wait_until_blocking(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes a job file atomically (temp file, then rename), as an owner's tools should.
/// Writes a job file atomically, with spot checks off (`verify = 0`): the tests that count who rendered what would
/// otherwise see the check copies; tests/verify.rs writes jobs with checks on through [`write_job_with`].
pub fn write_job(jobdir: &Path, name: &str, blend: &str, first: u32, last: u32) {
    write_job_with(jobdir, name, blend, first, last, "verify = 0\n");
}

/// Writes a job file atomically with `options` (lines of `key = value`) after its three lines.
pub fn write_job_with(jobdir: &Path, name: &str, blend: &str, first: u32, last: u32, options: &str) {
    let tmp = jobdir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, format!("{blend}\n{first}\n{last}\n{options}")).unwrap();
    std::fs::rename(tmp, jobdir.join(format!("{name}.job"))).unwrap();
}

/// Files in `dir`, sorted by name (empty if it does not exist).
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

pub fn frame_names(first: u32, last: u32, ext: &str) -> Vec<String> {
    (first..=last).map(|f| format!("{f:04}.{ext}")).collect()
}

/// A farm folder layout: JOBDIR, RENDERDIR and state for the host, caches for volunteers, all under one temp dir.
pub struct Dirs {
    pub root: tempfile::TempDir,
    pub jobdir: PathBuf,
    pub renderdir: PathBuf,
}

impl Dirs {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let jobdir = root.path().join("jobs");
        let renderdir = root.path().join("renders");
        std::fs::create_dir_all(&jobdir).unwrap();
        Self { root, jobdir, renderdir }
    }

    pub fn cache(&self, name: &str) -> PathBuf {
        self.root.path().join(format!("cache-{name}"))
    }

    pub fn host_config(&self) -> HostConfig {
        HostConfig {
            jobdir: self.jobdir.clone(),
            renderdir: self.renderdir.clone(),
            state_dir: self.root.path().join("state"),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            mdns: false,
            scheduler: Default::default(),
            release_dir: None,
            blender: None,
            http: None,
            finish: Default::default(),
            upnp: None,
            privacy: Default::default(),
            relays: vec![],
            without_deliveries: false,
        }
    }
}

/// A shutdown future for in-process nodes, and the switch that fires it.
pub fn shutdown_switch() -> (tokio::sync::oneshot::Sender<()>, impl std::future::Future<Output = ()> + Send + 'static) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

/// Logs from in-process nodes, shown for failing tests (RUST_LOG picks the level; default info). Warnings and
/// errors are also kept for [`warnings`].
pub fn init_tracing() {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _, Layer as _};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("blenderdist=info"));
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_test_writer().with_filter(filter))
        .with(WarningLog.with_filter(tracing_subscriber::EnvFilter::new("blenderdist=warn")))
        .try_init();
}

/// Every warning and error blenderdist's in-process nodes in this test binary logged so far, each as its target,
/// message and fields on one line. Tests run in parallel: look for something only your test can have caused (a peer id).
pub fn warnings() -> Vec<String> {
    WARNINGS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

static WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Keeps warnings for [`warnings`].
struct WarningLog;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarningLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut line = Line(event.metadata().target().to_string());
        event.record(&mut line);
        WARNINGS.lock().unwrap_or_else(|e| e.into_inner()).push(line.0);
    }
}

pub async fn start_host(dirs: &Dirs) -> (RunningHost, tokio::sync::oneshot::Sender<()>) {
    init_tracing();
    let (stop, shutdown) = shutdown_switch();
    let host = host::start(dirs.host_config(), shutdown).await.unwrap();
    (host, stop)
}

pub fn start_fake_worker(
    cache: PathBuf,
    bootstrap: Multiaddr,
    renderer: impl blenderdist::worker::blender::Renderer,
) -> (tokio::task::JoinHandle<anyhow::Result<()>>, tokio::sync::oneshot::Sender<()>) {
    start_fake_worker_with(cache, bootstrap, renderer, None)
}

/// [`start_fake_worker`] that reports these Blender capabilities with its claims.
pub fn start_fake_worker_with(
    cache: PathBuf,
    bootstrap: Multiaddr,
    renderer: impl blenderdist::worker::blender::Renderer,
    caps: Option<blenderdist::protocol::VolunteerCaps>,
) -> (tokio::task::JoinHandle<anyhow::Result<()>>, tokio::sync::oneshot::Sender<()>) {
    let (stop, shutdown) = shutdown_switch();
    let config = WorkerConfig {
        cache_dir: cache,
        bootstrap: vec![bootstrap],
        mdns: false,
        renderers: 1,
        updater: None,
        caps,
        patience: Default::default(),
        swarm_key: None,
    };
    (worker::start(config, renderer, shutdown).unwrap(), stop)
}

/// A child process killed when dropped, so a failing test leaves nothing running.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `blenderdist host` on a free loopback port and returns it with its join address (read from its stdout).
pub fn spawn_host(jobdir: &Path, renderdir: &Path, extra: &[&str]) -> (Proc, String) {
    spawn_host_from(Path::new(BIN), jobdir, renderdir, extra)
}

/// [`spawn_host`] running another copy of the program (self-update tests).
pub fn spawn_host_from(program: &Path, jobdir: &Path, renderdir: &Path, extra: &[&str]) -> (Proc, String) {
    let mut child = Command::new(program)
        .arg("host")
        .arg(jobdir)
        .arg(renderdir)
        .args(if extra.contains(&"--listen") { &[][..] } else { &["--listen", "127.0.0.1:0"][..] })
        .arg("--no-mdns")
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let addr = read_join_line(stdout);
    (proc, addr)
}

/// Reads the host's stdout until its `blenderdist join ADDR` line, then keeps draining it in a thread.
pub fn read_join_line(stdout: std::process::ChildStdout) -> String {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if let Some(addr) = line.trim().strip_prefix("blenderdist join ") {
            let addr = addr.to_string();
            std::thread::spawn(move || for _ in lines {});
            return addr;
        }
    }
    panic!("the host ended without printing its join line");
}

pub fn blender_available() -> bool {
    Command::new("blender")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A stand-in for Blender that passes the volunteer's start-up probe and renders nothing, for tests of volunteers
/// that never get to render (updates, protocol versions).
pub fn fake_blender(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-blender");
    let line =
        r#"@@BLENDERDIST-CAPS@@ {"blender": "3.4.1", "build_hash": "fake", "denoiser": false, "devices": ["CPU"]}"#;
    std::fs::write(&path, format!("#!/bin/sh\necho '{line}'\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Runs `blender` with `args`, panicking with its output when it fails.
pub fn blender(args: &[&str]) {
    let out = Command::new("blender").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "blender {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Path of a file in the repository's scripts/ folder.
pub fn script(name: &str) -> String {
    format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Decoded pixels of a PNG, with its size and colour layout.
pub fn png_pixels(path: &Path) -> (u32, u32, String, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, format!("{:?}/{:?}", info.color_type, info.bit_depth), buf)
}

/// A bare peer on the work protocol (no renderer), connected to `host`: for tests that misbehave on purpose.
/// The TCP port of a multiaddr (a host's listen address).
pub fn tcp_port(addr: &Multiaddr) -> u16 {
    addr.iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("a TCP address")
}

pub fn raw_peer(
    host: &Multiaddr,
) -> (blenderdist::net::Client, tokio::sync::mpsc::Receiver<blenderdist::net::NetEvent>) {
    blenderdist::net::spawn(blenderdist::net::NetConfig {
        keypair: libp2p::identity::Keypair::generate_ed25519(),
        swarm_key: None,
        is_host: false,
        listen: vec![],
        bootstrap: vec![host.clone()],
        mdns: false,
        max_peers: blenderdist::protocol::DEFAULT_MAX_PEERS,
    })
    .unwrap()
}

/// A host whose JOBDIR holds `scene.blend` (the bytes `blend`) and job `j` of frames `first..=last`, and a raw peer
/// dialling it: how every test of what the host makes of one peer's messages begins. `stop` keeps the host running.
pub struct HostAndPeer {
    pub dirs: Dirs,
    pub host: RunningHost,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub client: blenderdist::net::Client,
    pub events: tokio::sync::mpsc::Receiver<blenderdist::net::NetEvent>,
}

pub async fn host_and_peer(first: u32, last: u32) -> HostAndPeer {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    let (host, stop) = start_host(&dirs).await;
    write_job(&dirs.jobdir, "j", "scene.blend", first, last);
    let (client, events) = raw_peer(&host.addrs[0]);
    HostAndPeer { dirs, host, stop, client, events }
}

/// Claims one frame from `host`, retrying while the connection and the job come up.
pub async fn claim_one_frame(
    client: &blenderdist::net::Client,
    host: libp2p::PeerId,
) -> Option<blenderdist::protocol::FrameGrant> {
    use blenderdist::protocol::{WorkRequest, WorkResponse, PROTOCOL_VERSION};
    for _ in 0..100 {
        let claim = WorkRequest::Claim { version: PROTOCOL_VERSION, slots: 1, caps: None };
        if let Ok(WorkResponse::Granted(grants)) = client.request(host, claim).await {
            return grants.into_iter().next();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
