//! Processes the benchmarks start: the release binary (host, volunteer) and Blender, each in its own process group
//! so that stopping it stops what it started; reading their output and their /proc entries.

use std::{
    io::Read,
    path::Path,
    process::Child,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use libp2p::Multiaddr;

/// A child process in its own process group, stopped with SIGTERM (then SIGKILL) when dropped, with whatever it
/// started (a volunteer's Blender), so a failed benchmark leaves nothing running.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(mut command: std::process::Command) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        command.process_group(0);
        let child = command.spawn().with_context(|| format!("cannot start {command:?}"))?;
        Ok(Self { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal_group(&self, signal: &str) {
        let _ = std::process::Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .stderr(std::process::Stdio::null())
            .status();
    }

    /// SIGTERM to the group, up to 10 s to exit, then SIGKILL.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            self.signal_group("-KILL");
            return;
        }
        UNWAITED_CPU_TICKS.fetch_add(group_cpu_ticks(self.child.id()), Ordering::Relaxed);
        self.signal_group("-TERM");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal_group("-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (clock ticks) of processes that were stopped with a [`Proc`] but that nobody waits for: a volunteer kills
/// its persistent Blender when it stops without waiting for it, so that Blender's time would be charged to no process
/// the benchmark script waits for. `main` reports it, and the script counts it as the benchmark's own.
pub static UNWAITED_CPU_TICKS: AtomicU64 = AtomicU64::new(0);

/// The kernel's clock ticks per second (`getconf CLK_TCK`), in which /proc reports CPU time.
pub fn clock_ticks_per_second() -> f64 {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output();
    out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100.0)
}

/// CPU ticks used so far by the members of process group `pgid` other than its leader (whose own time reaches us
/// when we wait for it). Should a volunteer one day wait for its Blender, this would count that time twice.
fn group_cpu_ticks(pgid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let pids = entries.filter_map(Result::ok).filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    pids.filter(|&pid| pid != pgid)
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the parenthesised name: state, ppid, pgrp, ..., utime (12th), stime (13th).
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
            (field(2)? == u64::from(pgid)).then(|| Some(field(11)? + field(12)?))?
        })
        .sum()
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads a `/proc/PID/status` field in kB (VmHWM, VmRSS).
pub fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Reads the host's stdout until its `blenderdist join ADDR` line (30 s at most), copying every line to `log`, and
/// keeps draining it afterwards.
pub fn join_address(host: &mut Proc, log: &Path) -> anyhow::Result<Multiaddr> {
    let stdout = host.child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    copy_lines(stdout, log, move |line| {
        if let Some(addr) = line.trim().strip_prefix("blenderdist join ") {
            let _ = tx.send(addr.to_string());
        }
    })?;
    let addr = rx.recv_timeout(Duration::from_secs(30)).context("the host printed no join line within 30 s")?;
    addr.parse().with_context(|| format!("cannot parse the join address {addr:?}"))
}

/// Copies a child's output to `log` (appending) line by line on a thread, showing each line to `watch`.
pub fn copy_lines(
    from: impl Read + Send + 'static,
    log: &Path,
    mut watch: impl FnMut(&str) + Send + 'static,
) -> anyhow::Result<()> {
    use std::io::{BufRead as _, Write as _};
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines().map_while(Result::ok) {
            watch(&line);
            let _ = writeln!(file, "{line}");
        }
    });
    Ok(())
}
