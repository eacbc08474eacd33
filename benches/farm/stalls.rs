//! Stalls: the longest time the host's event loop goes without answering, seen from outside, while it hashes a big
//! .blend and stores frames. The release binary runs `host` on 127.0.0.1 with its folders on disk. Fake
//! volunteers in this process (20, one slot each, 100 ms frames; `--volunteers N --frame-ms N` pick others, their
//! caches on tmpfs when there is one) render and upload frames of a job of 100,000 frames the whole time. A bare
//! libp2p peer from `blenderdist::net::spawn`, on a thread and runtime of its own, sends every 5 ms, without waiting
//! for earlier answers, a `WorkRequest::Renew` for a frame it does not hold (answered `Discard`, which touches only
//! the scheduler), and records each round trip. Baseline: 3 s (2 s with --quick) of that with the volunteers storing
//! frames. Then a 4 GiB sparse .blend and its job file are written, with `NAME.job.suspend` beside it so that nobody
//! fetches it, and the probe goes on until the job log says `accepted:` (the host has hashed the file) and 1 s more.
//! The figure is the longest the host's loop went without polling its events in that phase, as the loop measures it
//! itself (`host::pulse`, turned on by `BLENDERDIST_LOOP_PULSE`: a pulse every 5 ms, the worst lateness logged every
//! 250 ms). Goal ≤ 50 ms. Beside the loop's lateness each report gives a bare thread's of the same process (it only
//! sleeps 5 ms at a time), and the second row is the loop's worst in the reports where that thread woke within 5 ms:
//! the machine was giving threads their turn, so a late loop was busy with something of its own. A third row gives
//! the longest round trip of a request sent in that phase, seen from outside: it also holds both network tasks and
//! this process's scheduling, so it is an upper bound (the probe's own thread went without a core for up to 137 ms
//! when the hash took one of the two). The notes add the longest gap between answers, the 99th percentile and the
//! frames stored per second. The host's folders are on a fresh ext4 file system made for the run (`loopdisk`), or
//! in --tmp where none can be made.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use blenderdist::{
    net::{self, NetConfig},
    protocol::{BlobHash, WorkRequest, WorkResponse},
    worker::{self, WorkerConfig},
};
use libp2p::{identity::Keypair, multiaddr::Protocol, Multiaddr, PeerId};
use tokio_util::sync::CancellationToken;

use crate::{
    common::{self, note, row, LogTail, Opts, Stamped},
    loopdisk::LoopDisk,
    procs::{self, Proc},
};

const VOLUNTEERS: usize = 20;
const FRAME_MS: u64 = 100;
const BIG_BLEND: u64 = 4 << 30;
const EVERY: Duration = Duration::from_millis(5);
const GOAL: Duration = Duration::from_millis(50);

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    opts.require_bin()?;
    let volunteers = opts.volunteers.unwrap_or(VOLUNTEERS);
    let frame_time = Duration::from_millis(opts.frame_ms.unwrap_or(FRAME_MS));
    let baseline_for = Duration::from_secs(if opts.quick { 2 } else { 3 });
    let disk = LoopDisk::make(&opts.tmp);
    if let Err(e) = &disk {
        note(&format!("Stalls: the host's folders were in {} as it is: {e:#}.", opts.tmp.display()));
    }
    let dir = opts.temp_dir_in(disk.as_ref().map_or(opts.tmp.as_path(), |d| d.dir()), "stalls")?;
    let (jobdir, renderdir) = (dir.path().join("jobs"), dir.path().join("renders"));
    std::fs::create_dir_all(&jobdir)?;
    common::write_fake_blend(&jobdir.join("work.blend"), 64 * 1024, 11)?;

    let mut command = std::process::Command::new(&opts.bin);
    command.arg("host").arg(&jobdir).arg(&renderdir).args(["--listen", "127.0.0.1:0", "--no-mdns"]);
    command.env(blenderdist::host::pulse::LOOP_PULSE_ENV, "1");
    let host_log = dir.path().join("host.log");
    let log_len = || std::fs::metadata(&host_log).map(|m| m.len()).unwrap_or(0);
    command.stdout(std::process::Stdio::piped()).stderr(std::fs::File::create(dir.path().join("host.log"))?);
    let mut host = Proc::spawn(command)?;
    let addr = procs::join_address(&mut host, &dir.path().join("host.out"))?;
    let host_peer = addr
        .iter()
        .find_map(|p| if let Protocol::P2p(id) = p { Some(id) } else { None })
        .context("the join address has no /p2p/ID")?;
    let port = common::tcp_port(&addr).context("the join address has no TCP port")?;

    // The volunteers, and their job, which outlasts the benchmark (100,000 frames); they stop with `stop`.
    let shm = std::path::Path::new("/dev/shm");
    let caches = tempfile::Builder::new().prefix("blenderdist-bench-stalls-").tempdir_in(if shm.is_dir() {
        shm
    } else {
        dir.path()
    })?;
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let renderers: Vec<Arc<Stamped>> = (0..volunteers).map(|_| Arc::new(Stamped::fake(frame_time))).collect();
    for (i, renderer) in renderers.iter().enumerate() {
        let config = WorkerConfig {
            cache_dir: caches.path().join(format!("cache-{i}")),
            bootstrap: vec![addr.clone()],
            mdns: false,
            renderers: 1,
            updater: None,
            caps: None,
            patience: Default::default(),
            swarm_key: None,
        };
        worker::start(config, renderer.clone(), stop.clone().cancelled_owned())?;
    }
    common::wait_for(
        &format!("{volunteers} volunteers to connect"),
        Duration::from_secs(60),
        Duration::from_millis(20),
        || common::established_on(port) >= volunteers,
    )
    .await?;
    let mut work_log = LogTail::new(jobdir.join("work.log"));
    common::write_job(&jobdir, "work", "work.blend", 1, 100_000)?;
    common::wait_for("the work job to start", Duration::from_secs(30), Duration::from_millis(10), || {
        work_log.saw_line_starting("started:")
    })
    .await?;
    let frames_in = || std::fs::read_dir(renderdir.join("work")).map(|d| d.count()).unwrap_or(0);
    common::wait_for("the first frames to be stored", Duration::from_secs(30), Duration::from_millis(10), || {
        frames_in() > volunteers
    })
    .await?;

    // Baseline: the volunteers storing frames, nothing being hashed.
    let probe = Probe::start(addr.clone(), host_peer, Duration::from_secs(150))?;
    let (t_base, log_base) = (Instant::now(), log_len());
    let frames_base = frames_in();
    tokio::time::sleep(baseline_for).await;
    let (t_big, frames_big, log_big, steal_big) = (Instant::now(), frames_in(), log_len(), steal_secs());

    // The big .blend: suspended before its job file appears, so no volunteer fetches it.
    let mut big_log = LogTail::new(jobdir.join("big.log"));
    std::fs::write(jobdir.join("big.job.suspend"), b"")?;
    std::fs::File::create(jobdir.join("big.blend"))?.set_len(BIG_BLEND)?;
    common::write_job(&jobdir, "big", "big.blend", 1, 10)?;
    let t_written = Instant::now();
    common::wait_for("the 4 GiB job to be accepted", Duration::from_secs(90), Duration::from_millis(5), || {
        big_log.saw_line_starting("accepted:")
    })
    .await?;
    let hashed = t_written.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (t_end, frames_end, steal_end) = (Instant::now(), frames_in(), steal_secs());
    let samples = probe.finish()?;
    // The pulse report covering the phase's last moments reaches the log.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let log_end = log_len();
    if matches!(host.child.try_wait(), Ok(Some(_))) {
        bail!("the host exited during the benchmark; see its log");
    }
    stop.cancel();
    host.stop();

    let base = Phase::of(&samples, t_base, t_big);
    let big = Phase::of(&samples, t_big, t_end);
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let (pulse_base, pulse_big) = (
        PulseSummary::of(&pulse_reports(&host_log, log_base, log_big)),
        PulseSummary::of(&pulse_reports(&host_log, log_big, log_end)),
    );
    let (Some(pulse_base), Some(pulse_big)) = (pulse_base, pulse_big) else {
        bail!("the host logged no `loop pulse:` lines; see {}", host_log.display());
    };
    // A row against the goal: the phase's figure beside the same figure with frames stored only.
    let goal_row = |name: &str, big: Duration, base: Duration| {
        row(
            name,
            &ms(big),
            &format!("{} (frames stored only)", ms(base)),
            &format!("{:.2}", big.as_secs_f64() / base.as_secs_f64().max(1e-6)),
            &format!("≤ {}", ms(GOAL)),
            common::yes_no(big <= GOAL),
        )
    };
    goal_row(
        "Stalls: longest the host's loop went without polling (its own pulse), 4 GiB .blend hashed while frames are stored",
        pulse_big.the_loop,
        pulse_base.the_loop,
    );
    goal_row(
        "Stalls: the same, only where a bare thread of the host's process woke on time (≤ 5 ms late)",
        pulse_big.own,
        pulse_base.own,
    );
    note(&format!(
        "Stalls, the control: a bare thread in the host's process sleeping 5 ms at a time woke at worst {} late while \
         the .blend was hashed ({} frames stored only); it was more than 5 ms late in {} of the {} reports of 250 ms \
         of that phase. The hypervisor ran other guests instead of this machine for {:.2} CPU seconds of the phase's \
         {:.1} s (steal time, both cores).",
        ms(pulse_big.bare),
        ms(pulse_base.bare),
        pulse_big.machine_late,
        pulse_big.reports,
        steal_end - steal_big,
        (t_end - t_big).as_secs_f64(),
    ));
    row(
        "Stalls: longest round trip to the host's loop, seen from outside (an upper bound), same phase",
        &ms(big.max),
        &format!("{} (frames stored only)", ms(base.max)),
        &format!("{:.2}", big.max.as_secs_f64() / base.max.as_secs_f64().max(1e-6)),
        "(comparison)",
        "-",
    );
    let rate = |frames: usize, from: Instant, to: Instant| frames as f64 / (to - from).as_secs_f64();
    note(&format!(
        "Stalls: {volunteers} fake volunteers with {} ms frames; a `Renew` every 5 ms. Frames stored only ({:.1} s): \
         {} requests, 99th percentile {}, longest {}, longest gap between answers {} (between requests {}), {:.0} \
         frames stored/s. While the 4 GiB sparse .blend was hashed (accepted {} after its job file) and 1 s after \
         ({:.1} s): {} requests, 99th percentile {}, longest {}, longest gap between answers {} (between requests {}), \
         {:.0} frames stored/s.{}",
        frame_time.as_millis(),
        (t_big - t_base).as_secs_f64(),
        base.count,
        ms(base.p99),
        ms(base.max),
        ms(base.gap),
        ms(base.send_gap),
        rate(frames_big - frames_base, t_base, t_big),
        common::secs(hashed),
        (t_end - t_big).as_secs_f64(),
        big.count,
        ms(big.p99),
        ms(big.max),
        ms(big.gap),
        ms(big.send_gap),
        rate(frames_end - frames_big, t_big, t_end),
        if base.failed + big.failed > 0 {
            format!(" {} requests failed (counted at their time of failure).", base.failed + big.failed)
        } else {
            String::new()
        },
    ));
    drop(caches);
    Ok(())
}

/// One request of the probe: when it was sent, how long until its answer (or its failure), and whether it failed.
#[derive(Clone, Copy)]
struct Sample {
    sent: Instant,
    rtt: Duration,
    failed: bool,
}

/// Round trips of the requests sent within a phase.
struct Phase {
    count: usize,
    failed: usize,
    max: Duration,
    p99: Duration,
    /// The longest time between two answers (sorted by arrival).
    gap: Duration,
    /// The longest time between two requests: above 5 ms, the probe itself was held up (this process or the CPUs).
    send_gap: Duration,
}

impl Phase {
    fn of(samples: &[Sample], from: Instant, to: Instant) -> Self {
        let within: Vec<&Sample> = samples.iter().filter(|s| s.sent >= from && s.sent < to).collect();
        let mut rtts: Vec<Duration> = within.iter().map(|s| s.rtt).collect();
        rtts.sort();
        let p99 = rtts.get((rtts.len() * 99 / 100).min(rtts.len().saturating_sub(1))).copied().unwrap_or_default();
        let mut answers: Vec<Instant> = within.iter().map(|s| s.sent + s.rtt).collect();
        answers.sort();
        let gap = answers.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        let mut sends: Vec<Instant> = within.iter().map(|s| s.sent).collect();
        sends.sort();
        let send_gap = sends.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        Phase {
            count: within.len(),
            failed: within.iter().filter(|s| s.failed).count(),
            max: rtts.last().copied().unwrap_or_default(),
            p99,
            gap,
            send_gap,
        }
    }
}

/// The bare peer that sends the requests, on a thread with a runtime of its own so that the volunteers' tasks in
/// this process do not delay its sending.
struct Probe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Vec<Sample>>>,
}

impl Probe {
    /// Starts the peer and returns once it is connected to the host and sending; it stops by itself after `limit`.
    fn start(addr: Multiaddr, host: PeerId, limit: Duration) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_stop = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let result = rt.block_on(probe(addr, host, limit, thread_stop, ready_tx));
            rt.shutdown_timeout(Duration::from_secs(2));
            result
        });
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(()) => Ok(Self { stop, thread }),
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                match thread.join() {
                    Ok(Err(e)) => Err(e.context("the probe peer did not start")),
                    _ => bail!("the probe peer did not connect to the host within 30 s"),
                }
            }
        }
    }

    fn finish(self) -> anyhow::Result<Vec<Sample>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
    }
}

async fn probe(
    addr: Multiaddr,
    host: PeerId,
    limit: Duration,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<()>,
) -> anyhow::Result<Vec<Sample>> {
    let (client, mut events) = net::spawn(NetConfig {
        keypair: Keypair::generate_ed25519(),
        swarm_key: None,
        is_host: false,
        listen: vec![],
        bootstrap: vec![addr],
        mdns: false,
        max_peers: blenderdist::protocol::DEFAULT_MAX_PEERS,
    })?;
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let start = Instant::now();
    while !client.connected_peers().await?.contains(&host) {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the probe peer did not connect to the host within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One answered request first: the work protocol's first stream is not part of the figure.
    let renew = WorkRequest::Renew { job: "no-such-job".into(), frame: 1, blend: BlobHash([0; 32]) };
    match client.request(host, renew.clone()).await? {
        WorkResponse::Discard => {}
        other => bail!("a renewal of a frame nobody holds was answered {other:?}"),
    }
    let _ = ready.send(());
    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) && start.elapsed() < limit {
        tick.tick().await;
        let (client, renew, samples) = (client.clone(), renew.clone(), samples.clone());
        tasks.spawn(async move {
            let sent = Instant::now();
            let answer = client.request(host, renew).await;
            let failed = !matches!(answer, Ok(WorkResponse::Discard));
            if let Ok(mut samples) = samples.lock() {
                samples.push(Sample { sent, rtt: sent.elapsed(), failed });
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    // Requests still out get until the work protocol's own 30 s timeout.
    let _ = tokio::time::timeout(Duration::from_secs(35), async { while tasks.join_next().await.is_some() {} }).await;
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(samples)
}

/// One `loop pulse:` report of the host (see `host::pulse`): the loop's worst lateness in 250 ms, and a bare thread's
/// of the same process over the same time.
#[derive(Clone, Copy)]
struct PulseReport {
    the_loop: Duration,
    bare: Duration,
}

/// The host's `loop pulse:` reports between two offsets of its log.
fn pulse_reports(log: &std::path::Path, from: u64, to: u64) -> Vec<PulseReport> {
    let Ok(bytes) = std::fs::read(log) else { return vec![] };
    let (Ok(from), Ok(to)) = (usize::try_from(from), usize::try_from(to)) else { return vec![] };
    let Some(slice) = bytes.get(from..to.min(bytes.len())) else { return vec![] };
    let ms = |text: &str, after: &str| -> Option<Duration> {
        let value = text.split(after).nth(1)?.split(' ').next()?.parse::<f64>().ok()?;
        Some(Duration::from_secs_f64(value / 1000.0))
    };
    String::from_utf8_lossy(slice)
        .lines()
        .filter_map(|line| {
            let the_loop = ms(line, "loop pulse: longest lateness ")?;
            Some(PulseReport { the_loop, bare: ms(line, "a bare thread's: ").unwrap_or_default() })
        })
        .collect()
}

/// What the pulse reports of one phase say: the loop's worst lateness, the bare thread's, and the loop's worst in the
/// reports where the bare thread woke within [`ON_TIME`] (the machine served a plain thread on time, so a late loop
/// was busy with something of its own).
struct PulseSummary {
    the_loop: Duration,
    bare: Duration,
    own: Duration,
    reports: usize,
    machine_late: usize,
}

const ON_TIME: Duration = Duration::from_millis(5);

impl PulseSummary {
    fn of(reports: &[PulseReport]) -> Option<Self> {
        let the_loop = reports.iter().map(|r| r.the_loop).max()?;
        let bare = reports.iter().map(|r| r.bare).max().unwrap_or_default();
        let own = reports.iter().filter(|r| r.bare <= ON_TIME).map(|r| r.the_loop).max().unwrap_or_default();
        let machine_late = reports.iter().filter(|r| r.bare > ON_TIME).count();
        Some(Self { the_loop, bare, own, reports: reports.len(), machine_late })
    }
}

/// The CPU time the hypervisor gave other guests while this machine's vCPUs wanted it (`steal` in /proc/stat), in
/// seconds summed over the cores; zero where the kernel does not count it.
fn steal_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks = stat.lines().next().and_then(|l| l.split_whitespace().nth(8)?.parse::<u64>().ok()).unwrap_or(0);
    ticks as f64 / crate::procs::clock_ticks_per_second()
}
