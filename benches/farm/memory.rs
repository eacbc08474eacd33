//! Host memory: the release binary runs `host` on 127.0.0.1; a job of frames 1..100,000 (a 1 MiB stand-in .blend,
//! which the host only hashes) is written; then 100 libp2p peers from `blenderdist::net::spawn` in this process
//! connect to it (not hosts, no mDNS), 10 of them claim one frame each with `WorkRequest::Claim`, and all are held
//! for 5 s (2 s with --quick). The figure is the host's peak resident memory, `VmHWM` in /proc/PID/status, read at
//! the end. Goal ≤ 64 MiB; the goal is also the baseline of the ratio. The notes give `VmRSS` at each stage.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _};
use blenderdist::{
    net::{self, Client, NetConfig},
    protocol::{WorkRequest, WorkResponse, PROTOCOL_VERSION},
};
use libp2p::{identity::Keypair, multiaddr::Protocol, Multiaddr, PeerId};

use crate::{
    common::{self, note, row, LogTail, Opts},
    procs::{self, proc_status_kib, Proc},
};

const FRAMES: u32 = 100_000;
const PEERS: usize = 100;
const CLAIMERS: usize = 10;
const GOAL_MIB: f64 = 64.0;

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    opts.require_bin()?;
    let hold = Duration::from_secs(if opts.quick { 2 } else { 5 });
    let dir = opts.temp_dir("memory")?;
    let (jobdir, renderdir) = (dir.path().join("jobs"), dir.path().join("renders"));
    std::fs::create_dir_all(&jobdir)?;
    common::write_fake_blend(&jobdir.join("scene.blend"), 1 << 20, 7)?;

    let mut command = Command::new(&opts.bin);
    command.arg("host").arg(&jobdir).arg(&renderdir).args(["--listen", "127.0.0.1:0", "--no-mdns"]);
    command.stdout(Stdio::piped()).stderr(std::fs::File::create(dir.path().join("host.log"))?);
    let mut host = Proc::spawn(command)?;
    let addr = procs::join_address(&mut host, &dir.path().join("host.out"))?;
    let host_peer = addr
        .iter()
        .find_map(|p| if let Protocol::P2p(id) = p { Some(id) } else { None })
        .context("the join address has no /p2p/ID")?;
    let pid = host.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_started = proc_status_kib(pid, "VmRSS")?;

    let mut log = LogTail::new(jobdir.join("mem.log"));
    common::write_job(&jobdir, "mem", "scene.blend", 1, FRAMES)?;
    common::wait_for("the job to be accepted", Duration::from_secs(30), Duration::from_millis(20), || {
        log.saw_line_starting("accepted:")
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_job = proc_status_kib(pid, "VmRSS")?;

    let peers = connect_peers(&addr, host_peer).await?;
    let rss_peers = proc_status_kib(pid, "VmRSS")?;
    for peer in &peers[..CLAIMERS] {
        match peer.request(host_peer, WorkRequest::Claim { version: PROTOCOL_VERSION, slots: 1, caps: None }).await? {
            WorkResponse::Granted(frames) if frames.len() == 1 => {}
            other => bail!("a claim was answered {other:?}"),
        }
    }
    tokio::time::sleep(hold).await;
    let rss_end = proc_status_kib(pid, "VmRSS")?;
    let hwm = proc_status_kib(pid, "VmHWM")?;
    if matches!(host.child.try_wait(), Ok(Some(_))) {
        bail!("the host exited during the benchmark; see its log");
    }
    drop(peers);
    host.stop();

    let mib = |kib: u64| kib as f64 / 1024.0;
    row(
        &format!("Host memory: peak RSS, {PEERS} peers, {FRAMES} queued frames, {CLAIMERS} leases"),
        &format!("{:.1} MiB", mib(hwm)),
        &format!("goal {GOAL_MIB:.0} MiB"),
        &format!("{:.3}", mib(hwm) / GOAL_MIB),
        &format!("≤ {GOAL_MIB:.0} MiB"),
        common::yes_no(mib(hwm) <= GOAL_MIB),
    );
    note(&format!(
        "Host memory, VmRSS by stage: started with no job {:.1} MiB; job of {FRAMES} frames loaded {:.1} MiB; \
         {PEERS} peers connected {:.1} MiB; {CLAIMERS} frames leased and held {}s {:.1} MiB; peak (VmHWM) {:.1} MiB.",
        mib(rss_started),
        mib(rss_job),
        mib(rss_peers),
        hold.as_secs(),
        mib(rss_end),
        mib(hwm),
    ));
    Ok(())
}

/// Starts `PEERS` network nodes that dial the host, and waits until each is connected.
async fn connect_peers(addr: &Multiaddr, host: PeerId) -> anyhow::Result<Vec<Client>> {
    let mut peers = Vec::with_capacity(PEERS);
    for _ in 0..PEERS {
        let (client, mut events) = net::spawn(NetConfig {
            keypair: Keypair::generate_ed25519(),
            is_host: false,
            listen: vec![],
            bootstrap: vec![addr.clone()],
            mdns: false,
        })?;
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        peers.push(client);
    }
    let start = std::time::Instant::now();
    for peer in &peers {
        while !peer.connected_peers().await?.contains(&host) {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("not every peer connected to the host within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(peers)
}
