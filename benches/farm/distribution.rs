//! Distribution: one 256 MiB blob (64 MiB with --quick) from an owner to 8 volunteers (`--volunteers N`), each
//! node in a network namespace of its own, all joined by veth pairs to a bridge in one more namespace. The owner's
//! link sends at most 120 Mbit/s (`tc tbf` on its side of its veth), like an owner's home upload; the volunteers'
//! links are not limited. Needs root and `ip`/`tc`; without them the benchmark says so and records no figure.
//!
//! The owner is the release binary (`host`, its Blender `/bin/false`, so the .blend, 256 MiB of pseudo-random bytes,
//! travels alone); each volunteer is this benchmark binary run as `farm swarm-volunteer` (the library's volunteer
//! with the fake renderer, sharing on its namespace's address), so the volunteers need no Blender.
//!
//! - baseline: one volunteer alone fetches the blob: one transfer over the owner's link (chunked, from the owner
//!   only). Timed from starting its process to the line its fetch writes in `CACHE/chunks-received.log`.
//! - measured: that volunteer stopped, 8 fresh ones (empty caches) start together; timed from their start to the
//!   last one's line. The owner's bytes sent during it are read from its interface's counters (TCP, noise and every
//!   other message included).
//!
//! Goals: the owner sends at most 1.5 × the blob's size in total (a star would send 8 ×), and the last volunteer
//! has it within 2.5 × the one-volunteer time.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    common::{self, note, row, yes_no, Opts},
    procs::Proc,
};

/// The owner's upload, as `tc tbf` takes it.
const OWNER_RATE: &str = "120mbit";
const OWNER_RATE_BITS: f64 = 120e6;
const BYTES_GOAL: f64 = 1.5;
const TIME_GOAL: f64 = 2.5;
const MIB: f64 = 1024.0 * 1024.0;

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    if let Some(missing) = missing_capability() {
        row("distribution", &format!("skipped ({missing})"), "-", "-", "-", "-");
        note(&format!("distribution: skipped: {missing}"));
        return Ok(());
    }
    opts.require_bin()?;
    let size: usize = if opts.quick { 64 << 20 } else { 256 << 20 };
    let volunteers = opts.volunteers.unwrap_or(8);
    let dir = opts.temp_dir("distribution")?;
    // The owner, the lone volunteer of the baseline, and the others.
    let net = Lab::new(volunteers + 2)?;
    let root = dir.path();
    let (jobdir, renderdir) = (root.join("jobs"), root.join("renders"));
    std::fs::create_dir_all(&jobdir)?;
    common::write_fake_blend(&jobdir.join("big.blend"), size, 0x5eed)?;
    common::write_job(&jobdir, "big", "big.blend", 1, 100_000)?;

    let mut host = Command::new("ip");
    host.args(["netns", "exec", &net.node(0)]).arg(&opts.bin).arg("host").arg(&jobdir).arg(&renderdir);
    host.args(["--listen", &format!("/ip4/{}/tcp/7463", Lab::addr(0)), "--no-mdns", "--blender", "/bin/false"]);
    host.arg("--state-dir").arg(root.join("state"));
    host.stdout(Stdio::piped()).stderr(std::fs::File::create(root.join("host.log"))?);
    let mut host = Proc::spawn(host)?;
    let addr = crate::procs::join_address(&mut host, &root.join("host.out"))?;
    let exe = std::env::current_exe().context("cannot find the benchmark binary")?;
    let spawn = |i: usize| -> anyhow::Result<(Proc, PathBuf)> {
        let cache = root.join(format!("cache-{i}"));
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &net.node(i)]).arg(&exe).arg("swarm-volunteer").arg(&cache);
        command.arg(addr.to_string()).arg(format!("/ip4/{}/tcp/7000", Lab::addr(i)));
        command.stdout(Stdio::null()).stderr(std::fs::File::create(root.join(format!("volunteer-{i}.log")))?);
        Ok((Proc::spawn(command)?, cache.join("chunks-received.log")))
    };
    let limit = Duration::from_secs(if opts.quick { 120 } else { 240 });

    eprintln!("   one volunteer, {} MiB over a {OWNER_RATE} owner link", size >> 20);
    let start = Instant::now();
    let (mut first, log) = spawn(1)?;
    common::wait_for("the lone volunteer's fetch", limit, Duration::from_millis(50), || fetched(&log)).await?;
    let alone = start.elapsed();
    first.stop();

    eprintln!("   {volunteers} volunteers at once");
    let sent_before = net.owner_tx_bytes()?;
    let start = Instant::now();
    let mut procs = Vec::new();
    for i in 2..volunteers + 2 {
        procs.push(spawn(i)?);
    }
    let mut done: Vec<Option<Duration>> = vec![None; procs.len()];
    common::wait_for("every volunteer's fetch", limit, Duration::from_millis(50), || {
        for (slot, (_, log)) in done.iter_mut().zip(&procs) {
            if slot.is_none() && fetched(log) {
                *slot = Some(start.elapsed());
            }
        }
        done.iter().all(Option::is_some)
    })
    .await?;
    let last = done.iter().flatten().max().copied().unwrap_or_default();
    let sent = net.owner_tx_bytes()?.saturating_sub(sent_before);
    let peer_chunks: u64 = procs.iter().map(|(_, log)| chunks_from_peers(log)).sum();
    for (mut proc, _) in procs {
        proc.stop();
    }
    host.stop();

    let bytes_ratio = sent as f64 / size as f64;
    let time_ratio = last.as_secs_f64() / alone.as_secs_f64();
    row(
        "distribution: owner bytes sent",
        &format!("{:.0} MiB", sent as f64 / MIB),
        &format!("{:.0} MiB (the blob)", size as f64 / MIB),
        &format!("{bytes_ratio:.2}"),
        &format!("≤ {BYTES_GOAL}"),
        yes_no(bytes_ratio <= BYTES_GOAL),
    );
    row(
        "distribution: last volunteer done",
        &common::secs(last),
        &format!("{} (one volunteer alone)", common::secs(alone)),
        &format!("{time_ratio:.2}"),
        &format!("≤ {TIME_GOAL}"),
        yes_no(time_ratio <= TIME_GOAL),
    );
    let wire = size as f64 * 8.0 / OWNER_RATE_BITS;
    note(&format!(
        "distribution: {} MiB to {volunteers} volunteers in network namespaces, the owner's link limited to \
         {OWNER_RATE} by tc tbf ({wire:.1} s for the blob's bytes alone); the lone volunteer took {:.1} s; with \
         {volunteers}, each finished after {} s; {peer_chunks} of their {} chunks came from other volunteers",
        size >> 20,
        alone.as_secs_f64(),
        done.iter().flatten().map(|d| format!("{:.1}", d.as_secs_f64())).collect::<Vec<_>>().join(", "),
        volunteers * size.div_ceil(1 << 20),
    ));
    Ok(())
}

/// Whether a volunteer's fetch wrote its line.
fn fetched(log: &Path) -> bool {
    std::fs::metadata(log).is_ok_and(|m| m.len() > 0)
}

/// Chunks a volunteer's log line says came from other volunteers (`BLOB owner N PEER N ...`).
fn chunks_from_peers(log: &Path) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let words: Vec<&str> = text.split_whitespace().collect();
    words.iter().skip(3).skip(1).step_by(2).filter_map(|n| n.parse::<u64>().ok()).sum()
}

/// Why this machine cannot run it, if it cannot.
fn missing_capability() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")));
    if root != Some(true) {
        return Some("needs root for network namespaces".into());
    }
    for tool in ["ip", "tc"] {
        let ok = Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !ok.is_ok_and(|s| s.success()) {
            return Some(format!("needs `{tool}` (iproute2)"));
        }
    }
    None
}

/// Network namespaces: node 0 (the owner) to node N, each with `eth0` on 10.77.0.(i+1)/24, bridged in one more
/// namespace. Names carry the process id; everything is removed when dropped.
struct Lab {
    prefix: String,
    nodes: usize,
}

impl Lab {
    fn new(nodes: usize) -> anyhow::Result<Self> {
        let lab = Self { prefix: format!("bdd{}", std::process::id()), nodes };
        let bridge = lab.bridge();
        ip(&["netns", "add", &bridge])?;
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let node = lab.node(i);
            ip(&["netns", "add", &node])?;
            let port = format!("p{i}");
            ip(&["-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &node])?;
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &node, "addr", "add", &format!("{}/24", Self::addr(i)), "dev", "eth0"])?;
            ip(&["-n", &node, "link", "set", "eth0", "up"])?;
            ip(&["-n", &node, "link", "set", "lo", "up"])?;
        }
        let owner = lab.node(0);
        let tc = Command::new("ip")
            .args(["netns", "exec", &owner, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", OWNER_RATE])
            .args(["burst", "256kb", "latency", "100ms"])
            .status()
            .context("cannot run tc")?;
        if !tc.success() {
            bail!("tc could not limit the owner's link");
        }
        Ok(lab)
    }

    fn bridge(&self) -> String {
        format!("{}b", self.prefix)
    }

    fn node(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn addr(i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    /// Bytes the owner's interface has sent.
    fn owner_tx_bytes(&self) -> anyhow::Result<u64> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node(0), "cat", "/sys/class/net/eth0/statistics/tx_bytes"])
            .output()
            .context("cannot read the owner's interface counters")?;
        String::from_utf8_lossy(&out.stdout).trim().parse().context("unreadable tx_bytes")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let _ = Command::new("ip").args(["netns", "del", &self.node(i)]).stderr(Stdio::null()).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.bridge()]).stderr(Stdio::null()).status();
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("ip").args(args).status().context("cannot run ip")?;
    if !status.success() {
        bail!("`ip {}` failed", args.join(" "));
    }
    Ok(())
}

/// `farm swarm-volunteer CACHE HOST LISTEN`: a volunteer with the fake renderer that shares on LISTEN, until
/// SIGTERM. Run by [`run`] inside a volunteer's namespace.
pub fn volunteer(args: &[String]) -> anyhow::Result<()> {
    use blenderdist::worker::{self, fake::FakeRenderer, seed::ShareOptions, WorkerConfig};
    let [cache, host, listen] = args else { bail!("usage: farm swarm-volunteer CACHE HOST LISTEN") };
    let config = WorkerConfig {
        cache_dir: cache.into(),
        bootstrap: vec![host.parse().context("bad host address")?],
        mdns: false,
        renderers: 1,
        updater: None,
        caps: None,
        patience: Default::default(),
        swarm_key: None,
    };
    let share = ShareOptions { listen: vec![listen.parse().context("bad listen address")?], ..Default::default() };
    common::block_on(async move {
        let shutdown = async {
            if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                term.recv().await;
            }
        };
        let renderer = FakeRenderer::new(Duration::from_millis(500));
        worker::start_sharing(config, share, renderer, shutdown)?.await?
    })
}
