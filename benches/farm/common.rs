//! Helpers shared by the benchmarks: options, temp folders, result rows, waiting with a deadline, job files and job
//! logs, and an in-process farm (a host and fake volunteers over loopback TCP).

use std::{
    future::Future,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use blenderdist::{
    host::{self, HostConfig, RunningHost},
    worker::{
        self,
        blender::{RenderError, RenderRequest, RenderedFrame, Renderer},
        fake::FakeRenderer,
        WorkerConfig,
    },
};
use libp2p::{multiaddr::Protocol, Multiaddr};
use tokio_util::sync::CancellationToken;

pub struct Opts {
    pub names: Vec<String>,
    /// Smaller sizes, for trying the benchmarks out; the figures are not the recorded ones.
    pub quick: bool,
    /// The release binary, for the benchmarks that run it as a process.
    pub bin: PathBuf,
    /// Where temp folders go (each benchmark's folder is removed when it ends).
    pub tmp: PathBuf,
    /// Sizes a benchmark may take instead of its defaults (`--volunteers`, `--frames`, `--frame-ms`, `--peers`);
    /// each benchmark says which it reads.
    pub volunteers: Option<usize>,
    pub frames: Option<u32>,
    pub frame_ms: Option<u64>,
    pub peers: Option<usize>,
    /// The scaling benchmark's job's `verify =` fraction (`--verify`).
    pub verify: Option<f64>,
}

impl Opts {
    pub fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut opts = Opts {
            names: vec![],
            quick: false,
            bin: root.join("target/release/blenderdist"),
            // Not under target/: see `scaling::RunFolders`.
            tmp: PathBuf::from("/var/tmp/blenderdist-bench"),
            volunteers: None,
            frames: None,
            frame_ms: None,
            peers: None,
            verify: None,
        };
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => opts.quick = true,
                // cargo bench passes --bench to harness = false targets.
                "--bench" => {}
                "--bin" => opts.bin = args.next().context("--bin needs a path")?.into(),
                "--tmp" => opts.tmp = args.next().context("--tmp needs a folder")?.into(),
                "--volunteers" => opts.volunteers = Some(count(args.next(), "--volunteers")?),
                "--frames" => opts.frames = Some(count(args.next(), "--frames")?),
                "--frame-ms" => opts.frame_ms = Some(count(args.next(), "--frame-ms")?),
                "--peers" => opts.peers = Some(count(args.next(), "--peers")?),
                "--verify" => {
                    let text = args.next().context("--verify needs a fraction")?;
                    let fraction: f64 = text.parse().with_context(|| format!("--verify {text}: not a number"))?;
                    ensure!((0.0..=1.0).contains(&fraction), "--verify takes a fraction from 0 to 1");
                    opts.verify = Some(fraction);
                }
                flag if flag.starts_with('-') => bail!("unknown option {flag}"),
                name => opts.names.push(name.to_string()),
            }
        }
        Ok(opts)
    }

    /// A fresh folder under `tmp` (see [`Opts::temp_dir_in`]).
    pub fn temp_dir(&self, what: &str) -> anyhow::Result<tempfile::TempDir> {
        self.temp_dir_in(&self.tmp, what)
    }

    /// A fresh folder under `parent`, removed when the returned guard drops (kept, logs and all, when the environment
    /// sets BENCH_KEEP, for looking into a failure).
    pub fn temp_dir_in(&self, parent: &Path, what: &str) -> anyhow::Result<tempfile::TempDir> {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{what}-"))
            .disable_cleanup(std::env::var_os("BENCH_KEEP").is_some())
            .tempdir_in(parent)
            .context("cannot make a temp folder")?;
        Ok(dir)
    }

    pub fn require_bin(&self) -> anyhow::Result<()> {
        if !self.bin.is_file() {
            bail!("{} is missing; build it with `cargo build --release`", self.bin.display());
        }
        Ok(())
    }
}

/// The positive number following a size option.
fn count<T: std::str::FromStr + PartialOrd + Default>(value: Option<String>, flag: &str) -> anyhow::Result<T> {
    let value = value.with_context(|| format!("{flag} needs a number"))?;
    match value.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => bail!("{flag} needs a positive whole number, not {value:?}"),
    }
}

/// Runs one async benchmark on a fresh runtime with this machine's cores, and stops whatever it left running.
pub fn block_on<F: Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start tokio")?;
    let result = rt.block_on(f);
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

/// Logs of in-process nodes go to stderr; RUST_LOG picks the level (default: warnings only).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// One result row of the table.
pub fn row(name: &str, measured: &str, baseline: &str, ratio: &str, goal: &str, met: &str) {
    println!("ROW\t{name}\t{measured}\t{baseline}\t{ratio}\t{goal}\t{met}");
}

/// A sentence for the report, under the table.
pub fn note(text: &str) {
    println!("NOTE\t{}", text.replace(['\t', '\n'], " "));
    eprintln!("   {text}");
}

pub fn yes_no(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "no"
    }
}

pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// Polls `cond` every `every` until it holds; an error naming `what` after `limit`. A deadline against hangs.
pub async fn wait_for(
    what: &str,
    limit: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
    Ok(())
}

/// Writes a job file atomically (a temp name that does not end in `.job`, then a rename), with spot checks off:
/// the benchmarks measure the farm itself; the scaling benchmark's `--verify` measures what checks cost.
pub fn write_job(jobdir: &Path, name: &str, blend: &str, first: u32, last: u32) -> anyhow::Result<()> {
    write_job_with(jobdir, name, blend, first, last, "verify = 0\n")
}

/// [`write_job`] with `options` (`key = value` lines) after the three lines.
pub fn write_job_with(
    jobdir: &Path,
    name: &str,
    blend: &str,
    first: u32,
    last: u32,
    options: &str,
) -> anyhow::Result<()> {
    let tmp = jobdir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, format!("{blend}\n{first}\n{last}\n{options}"))?;
    std::fs::rename(&tmp, jobdir.join(format!("{name}.job")))?;
    Ok(())
}

/// Follows a job log as it grows, reading only the new bytes at each poll.
pub struct LogTail {
    path: PathBuf,
    offset: u64,
    pending: String,
}

impl LogTail {
    pub fn new(path: PathBuf) -> Self {
        Self { path, offset: 0, pending: String::new() }
    }

    /// Whether a line whose text (after the time stamp) starts with `prefix` was appended since the last call.
    pub fn saw_line_starting(&mut self, prefix: &str) -> bool {
        let Ok(mut file) = std::fs::File::open(&self.path) else { return false };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return false;
        }
        let mut new = String::new();
        if let Ok(n) = file.read_to_string(&mut new) {
            self.offset += n as u64;
        }
        self.pending.push_str(&new);
        // Lines look like `2026-01-01 00:00:00 finished: 2000 frames`: the text follows the time stamp.
        let needle = format!(" {prefix}");
        let found = self.pending.lines().any(|l| l.contains(&needle));
        if let Some(cut) = self.pending.rfind('\n') {
            self.pending.drain(..=cut);
        }
        found
    }
}

/// Counts the ESTABLISHED loopback TCP connections whose local port is `port`: how many peers a host has.
pub fn established_on(port: u16) -> usize {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return 0 };
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "01"
                && f[1].rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok()) == Some(port)
        })
        .count()
}

pub fn tcp_port(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| if let Protocol::Tcp(port) = p { Some(port) } else { None })
}

/// A farm on 127.0.0.1: a host (in this process, or the release binary in a process of its own) and in-process
/// volunteers with their own caches, all stopped by one token (the host process when the farm drops).
pub struct Farm {
    pub jobdir: PathBuf,
    pub renderdir: PathBuf,
    /// The host's address, with `/p2p/ID`.
    pub addr: Multiaddr,
    /// The in-process host, when it runs here.
    pub _host: Option<RunningHost>,
    /// The host process, when it runs in one of its own.
    pub host_proc: Option<crate::procs::Proc>,
    /// Where the volunteers' caches go.
    caches: PathBuf,
    volunteers: usize,
    stop: CancellationToken,
}

impl Farm {
    /// A host with its folders under `root`; volunteers added later keep their caches under `caches`.
    pub async fn start_host(root: &Path, caches: &Path) -> anyhow::Result<Self> {
        let jobdir = root.join("jobs");
        let renderdir = root.join("renders");
        std::fs::create_dir_all(&jobdir)?;
        let stop = CancellationToken::new();
        let config = HostConfig {
            jobdir: jobdir.clone(),
            renderdir: renderdir.clone(),
            state_dir: root.join("state"),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
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
        };
        let host = host::start(config, stop.clone().cancelled_owned()).await?;
        let addr = host.addrs[0].clone();
        let caches = caches.to_path_buf();
        Ok(Self { jobdir, renderdir, addr, _host: Some(host), host_proc: None, caches, volunteers: 0, stop })
    }

    /// Like [`Farm::start_host`], with the host in a process of its own (`bin host`), as an owner runs it: its CPU
    /// time is its own, apart from the volunteers'. Its output goes to `root/host.out` and `root/host.log`.
    pub fn start_host_process(bin: &Path, root: &Path, caches: &Path) -> anyhow::Result<Self> {
        let jobdir = root.join("jobs");
        let renderdir = root.join("renders");
        std::fs::create_dir_all(&jobdir)?;
        let mut command = std::process::Command::new(bin);
        command.arg("host").arg(&jobdir).arg(&renderdir).args(["--listen", "127.0.0.1:0", "--no-mdns"]);
        command.stdout(std::process::Stdio::piped()).stderr(std::fs::File::create(root.join("host.log"))?);
        let mut proc = crate::procs::Proc::spawn(command)?;
        let addr = crate::procs::join_address(&mut proc, &root.join("host.out"))?;
        let caches = caches.to_path_buf();
        let stop = CancellationToken::new();
        Ok(Self { jobdir, renderdir, addr, _host: None, host_proc: Some(proc), caches, volunteers: 0, stop })
    }

    pub fn add_volunteer(&mut self, renderer: impl Renderer) -> anyhow::Result<()> {
        let config = WorkerConfig {
            cache_dir: self.caches.join(format!("cache-{}", self.volunteers)),
            bootstrap: vec![self.addr.clone()],
            mdns: false,
            renderers: 1,
            updater: None,
            caps: None,
            patience: Default::default(),
            swarm_key: None,
        };
        worker::start(config, renderer, self.stop.clone().cancelled_owned())?;
        self.volunteers += 1;
        Ok(())
    }

    /// Waits until every volunteer holds a TCP connection to the host, then `settle` more for identify and the
    /// gossipsub subscription that carries offers.
    pub async fn wait_connected(&self, settle: Duration) -> anyhow::Result<()> {
        let port = tcp_port(&self.addr).context("the host address has no TCP port")?;
        let n = self.volunteers;
        wait_for(&format!("{n} volunteers to connect"), Duration::from_secs(60), Duration::from_millis(20), || {
            established_on(port) >= n
        })
        .await?;
        tokio::time::sleep(settle).await;
        Ok(())
    }

    pub fn frames_in(&self, job: &str) -> usize {
        std::fs::read_dir(self.renderdir.join(job)).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A background writer that keeps the disk under `dir` busy the way another program would: a thread writes 4 MiB
/// chunks of incompressible bytes to a file there and fsyncs after each, cycling over the file's first 64 MiB, at
/// [`DiskBusy::RATE`] at most, until it is dropped or `limit` has passed (a bound against a benchmark that forgets
/// it). Unpaced, this VM's disk took 2.6 GB/s and the copying into the page cache took one of the two cores, so the
/// figures measured a machine with one core left, not a busy disk.
pub struct DiskBusy {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl DiskBusy {
    const CHUNK: usize = 4 << 20;
    const CHUNKS: u64 = 16;
    /// Bytes a second: 64 fsyncs a second of 4 MiB each, a sustained backup or copy on a desktop machine.
    pub const RATE: u64 = 256 << 20;

    pub fn start(dir: &Path, limit: Duration) -> anyhow::Result<Self> {
        use std::{
            io::Write as _,
            sync::atomic::{AtomicBool, AtomicU64, Ordering},
        };
        let path = dir.join("disk-busy.bin");
        let mut file = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let (stop, written) = (std::sync::Arc::new(AtomicBool::new(false)), std::sync::Arc::new(AtomicU64::new(0)));
        let (thread_stop, thread_written) = (stop.clone(), written.clone());
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let mut chunk = vec![0u8; Self::CHUNK];
            let mut seed = 0x5eed_u64;
            fill_pseudo_random(&mut chunk, &mut seed);
            let mut i = 0u64;
            let every = Duration::from_secs_f64(Self::CHUNK as f64 / Self::RATE as f64);
            while !thread_stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                if let Some(wait) = (started + every * i as u32).checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                fill_pseudo_random(&mut chunk[..4096], &mut seed);
                let at = (i % Self::CHUNKS) * Self::CHUNK as u64;
                let ok = file.seek(SeekFrom::Start(at)).is_ok() && file.write_all(&chunk).is_ok();
                if !ok || file.sync_all().is_err() {
                    break;
                }
                thread_written.fetch_add(Self::CHUNK as u64, Ordering::Relaxed);
                i += 1;
            }
            drop(file);
            let _ = std::fs::remove_file(&path);
        });
        Ok(Self { stop, written, thread: Some(thread), started })
    }

    /// Stops the writer; returns what it wrote in MiB/s, for the notes.
    pub fn finish(mut self) -> f64 {
        self.stop_thread();
        let bytes = self.written.load(std::sync::atomic::Ordering::Relaxed) as f64;
        bytes / 1_048_576.0 / self.started.elapsed().as_secs_f64()
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DiskBusy {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Deterministic, incompressible bytes (xorshift), for blobs of a given size.
pub fn fill_pseudo_random(buf: &mut [u8], seed: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let bytes = seed.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// A small file of pseudo-random bytes standing in for a .blend (the host only hashes it; fake volunteers only
/// fetch it).
pub fn write_fake_blend(path: &Path, size: usize, mut seed: u64) -> anyhow::Result<()> {
    let mut bytes = vec![0u8; size];
    fill_pseudo_random(&mut bytes, &mut seed);
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// A fake renderer that also records when each render began, so a benchmark can see dispatch from the outside.
pub struct Stamped {
    inner: FakeRenderer,
    starts: std::sync::Mutex<Vec<Instant>>,
    ends: std::sync::Mutex<Vec<Instant>>,
}

impl Stamped {
    pub fn fake(delay: Duration) -> Self {
        Self { inner: FakeRenderer::new(delay), starts: Default::default(), ends: Default::default() }
    }

    pub fn starts(&self) -> Vec<Instant> {
        self.starts.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// When each render returned, in order.
    pub fn ends(&self) -> Vec<Instant> {
        self.ends.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Renderer for Stamped {
    async fn render(&self, request: &RenderRequest) -> Result<RenderedFrame, RenderError> {
        if let Ok(mut starts) = self.starts.lock() {
            starts.push(Instant::now());
        }
        let rendered = self.inner.render(request).await;
        if let Ok(mut ends) = self.ends.lock() {
            ends.push(Instant::now());
        }
        rendered
    }
}
