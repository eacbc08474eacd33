//! Host memory: the release binary runs `host` on 127.0.0.1; a job of frames 1..100,000 (a 1 MiB stand-in .blend,
//! which the host only hashes) is written; then 100 libp2p peers from `blenderdist::net::spawn` in this process
//! connect to it (not hosts, no mDNS), 10 of them claim one frame each with `WorkRequest::Claim`, and all are held
//! for 5 s (2 s with --quick). `--peers N --frames N` pick other sizes. The figure is the host's peak resident
//! memory, `VmHWM` in /proc/PID/status, read at the end. Goal ≤ 64 MiB at the default sizes, ≤ 150 MiB when either
//! size is larger (the goal set for 1,000 peers and 1,000,000 frames); the goal is also the baseline of the ratio.
//! The notes give `VmRSS` at each stage.

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
const LARGE_GOAL_MIB: f64 = 150.0;

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    opts.require_bin()?;
    let (peer_count, frames) = (opts.peers.unwrap_or(PEERS), opts.frames.unwrap_or(FRAMES));
    let goal_mib = if peer_count > PEERS || frames > FRAMES { LARGE_GOAL_MIB } else { GOAL_MIB };
    let claimers = CLAIMERS.min(peer_count);
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
    common::write_job(&jobdir, "mem", "scene.blend", 1, frames)?;
    common::wait_for("the job to be accepted", Duration::from_secs(30), Duration::from_millis(20), || {
        log.saw_line_starting("accepted:")
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_job = proc_status_kib(pid, "VmRSS")?;

    let t_connect = std::time::Instant::now();
    let peers = connect_peers(&addr, host_peer, peer_count).await?;
    let connect = t_connect.elapsed();
    let rss_peers = proc_status_kib(pid, "VmRSS")?;
    for peer in &peers[..claimers] {
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
        &format!("Host memory: peak RSS, {peer_count} peers, {frames} queued frames, {claimers} leases"),
        &format!("{:.1} MiB", mib(hwm)),
        &format!("goal {goal_mib:.0} MiB"),
        &format!("{:.3}", mib(hwm) / goal_mib),
        &format!("≤ {goal_mib:.0} MiB"),
        common::yes_no(mib(hwm) <= goal_mib),
    );
    note(&format!(
        "Host memory, VmRSS by stage: started with no job {:.1} MiB; job of {frames} frames loaded {:.1} MiB; \
         {peer_count} peers connected (in {}) {:.1} MiB; {claimers} frames leased and held {}s {:.1} MiB; peak \
         (VmHWM) {:.1} MiB.",
        mib(rss_started),
        mib(rss_job),
        common::secs(connect),
        mib(rss_peers),
        hold.as_secs(),
        mib(rss_end),
        mib(hwm),
    ));
    Ok(())
}

/// Starts `count` network nodes that dial the host, and waits until each is connected (a minute, plus a tenth of a
/// second per peer over 100: on 2 cores each handshake costs the host and this process some CPU).
async fn connect_peers(addr: &Multiaddr, host: PeerId, count: usize) -> anyhow::Result<Vec<Client>> {
    let mut peers = Vec::with_capacity(count);
    for _ in 0..count {
        let (client, mut events) = net::spawn(NetConfig {
            keypair: Keypair::generate_ed25519(),
            swarm_key: None,
            is_host: false,
            listen: vec![],
            bootstrap: vec![addr.clone()],
            mdns: false,
            max_peers: blenderdist::protocol::DEFAULT_MAX_PEERS,
        })?;
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        peers.push(client);
    }
    let start = std::time::Instant::now();
    let limit = Duration::from_secs(60) + Duration::from_millis(100) * count.saturating_sub(PEERS) as u32;
    for peer in &peers {
        while !peer.connected_peers().await?.contains(&host) {
            if start.elapsed() > limit {
                bail!("not every peer connected to the host within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(peers)
}
