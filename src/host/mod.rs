//! The owner of a job folder. It watches JOBDIR, feeds the scheduler, answers volunteers' claims and result
//! notices, receives frames over blob streams and writes them to RENDERDIR/NAME/ — durably, before acknowledging.
//!
//! Layout: [`jobfile`] parses job files, [`jobs`] reconciles the folder with the scheduler, [`blobs`] serves .blend
//! files and receives frames, [`joblog`] writes `JOBDIR/NAME.log`, [`finish`] makes a job's movie and runs its
//! `notify` command when it ends. This file holds the event loop.

pub mod blobs;
pub mod check;
pub mod chunks;
mod confirm;
mod dashboard;
pub mod finish;
mod frames;
pub mod http;
pub mod jobfile;
pub mod joblog;
mod jobs;
mod limited;
mod owner;
pub mod project;
mod requests;
mod scan;
mod status;
mod trace;
mod upnp;
mod verify;
mod watch;

use std::{
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};
use tokio::{sync::mpsc, time::Instant};
use tracing::{info, warn};

use crate::{
    net::{self, Client, NetConfig, NetEvent},
    protocol::{JobOffer, OfferedJob, SignedManifest, PROTOCOL_VERSION},
    scheduler::{
        verify::{Verifier, VerifyConfig},
        Scheduler, SchedulerConfig,
    },
    store::{keys, state::StateStore},
    update::host::OwnBinary,
};
use blobs::{BlobServer, FrameArrived};

/// How often offers are re-published: gossipsub keeps no history for volunteers that join later.
const OFFER_INTERVAL: Duration = Duration::from_secs(3);
/// Lease expiry and periodic rescans are checked this often.
const TICK: Duration = Duration::from_millis(500);
/// Most frames one claim may take.
const MAX_CLAIM_SLOTS: u32 = 64;

#[derive(Debug, Clone)]
pub struct HostConfig {
    pub jobdir: PathBuf,
    pub renderdir: PathBuf,
    pub state_dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub mdns: bool,
    /// Lease timeout, backup delay and failure limits; the defaults are documented in docs/ARCHITECTURE.md.
    pub scheduler: SchedulerConfig,
    /// Builds for other platforms, named by target triple, offered to volunteers in the update manifest.
    pub release_dir: Option<PathBuf>,
    /// The owner's Blender, which lists the files each .blend needs; None sends every .blend alone.
    pub blender: Option<PathBuf>,
    /// Where to serve the dashboard; `None`: no dashboard.
    pub http: Option<std::net::SocketAddr>,
    /// What runs when a job ends (`notify =`, `video =`): its time limit and the ffmpeg to use.
    pub finish: finish::FinishConfig,
    /// Ask the home router for a port mapping (`--upnp`); `None`: never send SSDP.
    pub upnp: Option<net::upnp::UpnpConfig>,
    /// Open, or private with a swarm key (`--private`, `--swarm-key`).
    pub privacy: net::Privacy,
    /// Relays to hold a reservation on (`--relay`), each ending in `/p2p/ID`: volunteers outside the owner's network
    /// reach the host through them, then directly by hole punching.
    pub relays: Vec<Multiaddr>,
}

/// A running host, for tests and the binary alike.
pub struct RunningHost {
    pub peer_id: PeerId,
    /// The addresses it listens on, with `/p2p/ID`.
    pub addrs: Vec<Multiaddr>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The program this host runs, as served to volunteers.
    pub own: OwnBinary,
    /// Where the dashboard listens, when it was asked for.
    pub dashboard: Option<std::net::SocketAddr>,
    /// With `--upnp`: the join address through the router's port mapping, or why there is none.
    pub upnp: Option<upnp::UpnpOutcome>,
    /// A private farm's key, which volunteers need to join.
    pub swarm_key: Option<net::SwarmKey>,
    /// Serves chunks of the jobs' large files (`host::chunks`); counts what it sent.
    pub chunks: chunks::ChunkServer,
}

/// Runs a host until `shutdown`, relaunching it on a new build of its program file (the `host` command).
pub async fn run(config: HostConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    // The host stops either when asked or when its program file holds a new, checked build to relaunch on.
    let (relaunch_tx, relaunch_rx) = tokio::sync::oneshot::channel::<std::path::PathBuf>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = stop_rx => {}
        }
    };
    let config_relays = config.relays.clone();
    let host = match start(config, stop).await {
        Ok(host) => host,
        Err(e) if e.is::<owner::StoppedAsStandby>() => return Ok(()),
        Err(e) => return Err(e),
    };
    print_ready(&host, &config_relays);
    if let Some(dashboard) = host.dashboard {
        println!("Dashboard: http://{dashboard}/");
    }
    let watcher = tokio::spawn(crate::update::host::watch_own_binary(host.own.clone(), relaunch_tx, stop_tx));
    let result = host.task.await.context("the host task panicked")?;
    watcher.abort();
    if let Ok(program) = relaunch_rx.await {
        // The state is durable and the loop has stopped: hand over to the new build, same arguments.
        return Err(crate::update::relaunch(&program)).context("cannot relaunch");
    }
    result
}

/// Opens the state, starts the network and the job-folder watcher, and spawns the host's event loop.
pub async fn start(
    config: HostConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningHost> {
    check_dir(&config.jobdir, "job folder")?;
    let mut shutdown = Box::pin(shutdown);
    let owner_lock = tokio::select! {
        lock = owner::acquire(&config.jobdir) => lock?,
        _ = &mut shutdown => return Err(owner::StoppedAsStandby.into()),
    };
    std::fs::create_dir_all(&config.renderdir)
        .with_context(|| format!("cannot create the render folder {}", config.renderdir.display()))?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create the state folder {}", config.state_dir.display()))?;
    let keypair = keys::load_or_create(&config.state_dir.join("node.key"))?;
    let swarm_key = config.privacy.key(&config.state_dir)?;
    if let Some(key) = &swarm_key {
        info!("private farm: only nodes with the swarm key (fingerprint {}) can connect", key.fingerprint());
    }
    let own = OwnBinary::locate().await?;
    let builds = crate::update::host::builds(&own, config.release_dir.as_deref()).await?;
    let manifest = crate::update::manifest::sign(&keypair, &crate::update::host::manifest(&own, &builds))?;
    let state = std::sync::Arc::new(StateStore::open(&config.state_dir.join("state.redb"))?);
    let relays = net::RelayConfig { reserve_on: config.relays.clone(), serve: None };
    let (client, mut events) = net::spawn_with(
        NetConfig {
            keypair: keypair.clone(),
            swarm_key: swarm_key.clone(),
            is_host: true,
            listen: config.listen.clone(),
            bootstrap: vec![],
            mdns: config.mdns,
            max_peers: crate::protocol::DEFAULT_MAX_PEERS,
        },
        relays,
    )?;
    let peer_id = client.peer_id();
    // Wait until every listener is up, so the printed join line and the tests' addresses are real. An unspecified
    // address (0.0.0.0) yields one address per interface, all at once: collect them for a moment.
    let mut addrs: Vec<Multiaddr> = Vec::new();
    let mut early = Vec::new();
    // A relay's reservation takes a connection to the relay and two round trips more.
    let wait = if config.relays.is_empty() { 5 } else { 15 };
    let deadline = tokio::time::sleep(Duration::from_secs(wait));
    tokio::pin!(deadline);
    let unspecified = config.listen.iter().any(|a| {
        a.iter().any(|p| {
            matches!(p, Protocol::Ip4(ip) if ip.is_unspecified())
                || matches!(p, Protocol::Ip6(ip) if ip.is_unspecified())
        })
    });
    loop {
        let relayed = addrs.iter().filter(|a| net::relay::is_relayed(a)).count();
        let settle = if addrs.len() - relayed >= config.listen.len() && relayed >= config.relays.len().min(1) {
            if !unspecified {
                break;
            }
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        tokio::select! {
            Some(event) = events.recv() => match event {
                // A relayed address already ends in this host's id.
                NetEvent::Listening(addr) if net::peer_of(&addr) == Some(peer_id) => addrs.push(addr),
                NetEvent::Listening(addr) => addrs.push(addr.with(Protocol::P2p(peer_id))),
                NetEvent::ListenFailed(reason) => anyhow::bail!("{reason}"),
                other => early.push(other),
            },
            _ = tokio::time::sleep(settle) => break,
            _ = &mut deadline => break,
        }
    }
    if addrs.is_empty() {
        anyhow::bail!("could not listen on any of {:?}", config.listen);
    }
    let (arrivals_tx, arrivals) = mpsc::channel(64);
    // Who may fetch a job's files is the scheduler's to say: the blob server asks the event loop on `access`.
    let (access_tx, access) = mpsc::channel(64);
    let blob_server = BlobServer::new(config.renderdir.join(".blenderdist-tmp"), arrivals_tx, access_tx)?;
    blob_server.spawn(&client)?;
    let chunk_server = chunks::ChunkServer::new(blob_server.clone(), keypair.clone());
    chunk_server.spawn(&client)?;
    blob_server.serve_updates(manifest.clone(), builds.into_iter().map(|(b, path)| (b.hash, path)).collect());
    let watcher = watch::JobDirWatcher::start(&config.jobdir);
    let preparer = project::Preparer::new(config.blender.clone(), &config.state_dir.join("projects"))
        .with_context(|| format!("cannot prepare {}", config.state_dir.join("projects").display()))?;
    let (prepared_tx, prepared) = mpsc::channel(16);
    let (checked_tx, checked) = mpsc::channel(64);
    let banned = state.banned().with_context(|| format!("cannot read the bans in {}", state.path().display()))?;
    let bans: Vec<crate::protocol::BannedPeer> = banned
        .iter()
        .filter_map(|(bytes, reason)| {
            let id = PeerId::from_bytes(bytes).ok()?.to_string();
            Some(crate::protocol::BannedPeer { name: id.clone(), id, reason: reason.clone() })
        })
        .collect();
    let banned: Vec<PeerId> = banned.iter().filter_map(|(bytes, _)| PeerId::from_bytes(bytes).ok()).collect();
    if !banned.is_empty() {
        info!("{} volunteers are banned from this farm (they delivered wrong frames)", banned.len());
    }
    let (dashboard, snapshots) = match config.http {
        Some(addr) => {
            let (tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(http::Snapshot::default()));
            let bound = http::serve(addr, config.renderdir.clone(), rx)
                .await
                .with_context(|| format!("cannot serve the dashboard on {addr}"))?;
            (Some(bound), Some(dashboard::Publisher::new(tx)))
        }
        None => (None, None),
    };
    let mut host = Host {
        joblog: joblog::JobLog::start(config.jobdir.clone()),
        frames: frames::FrameQueue::default(),
        preparer: std::sync::Arc::new(preparer),
        prepared_tx,
        scheduler: Scheduler::new(config.scheduler),
        verifier: Verifier::new(VerifyConfig::default(), banned),
        bans,
        checked_tx,
        jobs: jobs::JobTable::default(),
        blob_server,
        grant_times: HashMap::new(),
        tallies: status::Tallies::default(),
        snapshots,
        offer_seq: 0,
        offer_now: false,
        manifest,
        _owner_lock: owner_lock,
        state,
        client,
        config,
    };
    for event in early {
        host.on_net_event(event).await;
    }
    info!("host {peer_id} watching {}", host.config.jobdir.display());
    let (upnp_config, upnp_client) = (host.config.upnp.clone(), host.client.clone());
    // The router's port mapping, made while the loop already serves the LAN, goes with the host.
    let (mapping_tx, mapping) = upnp::slot();
    let task = tokio::spawn(async move {
        let result = host.run(Inbox { events, arrivals, access, prepared, checked }, watcher, shutdown).await;
        mapping.release().await;
        result
    });
    let upnp = upnp::map(upnp_config, &addrs, &upnp_client, peer_id, mapping_tx).await;
    Ok(RunningHost { peer_id, addrs, task, own, dashboard, upnp, swarm_key, chunks: chunk_server })
}

/// `--blender`, else `$BLENDER`, else `blender` when it is on PATH.
pub fn owners_blender(flag: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(program) = flag.or_else(|| std::env::var_os("BLENDER").map(PathBuf::from)) {
        return Some(program);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("blender")).find(|p| p.is_file()).map(|_| PathBuf::from("blender"))
}

fn check_dir(dir: &std::path::Path, what: &str) -> anyhow::Result<()> {
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot open the {what} {}", dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "the {what} {} is not a folder", dir.display());
    Ok(())
}

/// The ready line and the join lines: how volunteers reach the host (directly, or through a relay only); with
/// `--upnp`, the address through the router's port mapping first (or why there is none), then the one on this host's
/// own network. A private farm's join lines carry its key.
fn print_ready(host: &RunningHost, relays: &[Multiaddr]) {
    let id = host.peer_id;
    let key = host.swarm_key.as_ref().map_or(String::new(), |k| format!(" --swarm-key {}", k.to_hex()));
    let local = join_address(&host.addrs, relays);
    match (&host.upnp, local) {
        (Some(Ok(mapped)), local) => {
            let external = mapped.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect::<Multiaddr>();
            println!("blenderdist host {id} is ready; port mapped by UPnP: {external}. On each volunteer machine run:");
            println!("    blenderdist join {mapped}{key}");
            if let Some((addr, _)) = local {
                println!("or, on this host's own network:");
                println!("    blenderdist join {addr}{key}");
            }
        }
        (Some(Err(reason)), Some((addr, reach))) => {
            println!("blenderdist host {id} is ready, {reach}; no port mapped by UPnP: {reason}.");
            println!("On each volunteer machine that can reach this one run:");
            println!("    blenderdist join {addr}{key}");
        }
        (Some(Err(reason)), None) => println!("blenderdist host {id} is ready; no port mapped by UPnP: {reason}."),
        (None, Some((addr, reach))) => {
            println!("blenderdist host {id} is ready, {reach}. On each volunteer machine run:");
            println!("    blenderdist join {addr}{key}");
        }
        (None, None) => {}
    }
}

/// The address to print in the join line, and how volunteers reach the host, in words for the ready line: a
/// non-loopback IPv4 address when there is one; a relayed address when the host holds a reservation and listens on
/// no public address (through the first relay in `relays`, the owner's `--relay`, that gave it a slot).
fn join_address<'a>(addrs: &'a [Multiaddr], relays: &[Multiaddr]) -> Option<(&'a Multiaddr, String)> {
    let is_loopback = |a: &Multiaddr| a.iter().any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_loopback()));
    let (relayed, direct): (Vec<&Multiaddr>, Vec<&Multiaddr>) = addrs.iter().partition(|a| net::relay::is_relayed(a));
    let public = direct.iter().find(|a| a.iter().any(|p| matches!(p, Protocol::Ip4(ip) if is_public(&ip))));
    // A relay hands out every address it has; the one the owner named is the one known to work.
    let named =
        relays.iter().find_map(|r| relayed.iter().find(|a| net::relay::relay_of(a).is_some_and(|(p, _)| p == *r)));
    match (public, named.or(relayed.first())) {
        (None, Some(relayed)) => {
            let relay = net::relay::relay_of(relayed).map_or_else(|| relayed.to_string(), |(r, _)| r.to_string());
            Some((relayed, format!("reachable through relay {relay} only")))
        }
        _ => {
            let best = public.copied().or_else(|| direct.iter().copied().find(|a| !is_loopback(a)));
            let reach = if public.is_none() && !relays.is_empty() {
                "reachable directly on its own network only: no relay has given it a slot yet (see the log)"
            } else {
                "reachable directly"
            };
            best.or(direct.first().copied()).map(|a| (a, reach.to_string()))
        }
    }
}

/// Whether an IPv4 address is reachable from the internet (not private, shared, loopback, link-local, or set
/// aside for documentation and benchmarks).
fn is_public(ip: &std::net::Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    let shared = a == 100 && (64..128).contains(&b);
    let benchmark = a == 198 && (b == 18 || b == 19);
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_documentation()
        || ip.is_broadcast()
        || shared
        || benchmark)
}

/// Whether a scan of JOBDIR is running, and whether another is wanted after it.
#[derive(Default)]
struct ScanState {
    running: bool,
    again: bool,
}

impl ScanState {
    fn start(&mut self, jobdir: &Path, results: &mpsc::Sender<scan::DirScan>) {
        if std::mem::replace(&mut self.running, true) {
            self.again = true;
            return;
        }
        let (jobdir, results) = (jobdir.to_path_buf(), results.clone());
        tokio::spawn(async move {
            if let Ok(found) = tokio::task::spawn_blocking(move || scan::scan(&jobdir)).await {
                let _ = results.send(found).await;
            }
        });
    }

    fn done(&mut self, jobdir: &Path, results: &mpsc::Sender<scan::DirScan>) {
        self.running = false;
        if std::mem::take(&mut self.again) {
            self.start(jobdir, results);
        }
    }
}

struct Host {
    config: HostConfig,
    client: Client,
    /// Shared with the thread that stores batches of frames.
    state: std::sync::Arc<StateStore>,
    /// Frames waiting to be stored, and whether a batch is being stored.
    frames: frames::FrameQueue,
    scheduler: Scheduler<PeerId>,
    /// Spot checks: which stored frames another volunteer renders again, and who is banned.
    verifier: Verifier<PeerId>,
    /// Banned volunteers with the reason, for status and the dashboard.
    bans: Vec<crate::protocol::BannedPeer>,
    /// Where frame checks, comparisons and bans done off the loop report back.
    checked_tx: mpsc::Sender<verify::CheckDone>,
    jobs: jobs::JobTable,
    blob_server: BlobServer,
    /// Writes `JOBDIR/NAME.log` from a thread of its own.
    joblog: joblog::JobLog,
    /// Prepares jobs' projects (finds, hashes and lists their files) in background tasks.
    preparer: std::sync::Arc<project::Preparer>,
    /// Where those tasks send their results.
    prepared_tx: mpsc::Sender<jobs::JobPrepared>,
    /// When each frame was last granted, to log how long it took.
    grant_times: HashMap<(String, u32), Instant>,
    /// Volunteers' names and frame times, and jobs' frame times, for logs and status.
    tallies: status::Tallies,
    /// The dashboard's feed, when there is a dashboard.
    snapshots: Option<dashboard::Publisher>,
    offer_seq: u64,
    /// Frames went back to the queue: idle volunteers should hear of it now, not at the next periodic offer.
    offer_now: bool,
    /// This owner's signed update manifest, for volunteers that ask and on the update topic.
    manifest: SignedManifest,
    /// Held for the host's lifetime: no second host renders this JOBDIR meanwhile.
    _owner_lock: owner::OwnerLock,
}

/// Everything the event loop hears from: the network, the blob server, and the tasks it starts.
struct Inbox {
    events: mpsc::Receiver<NetEvent>,
    arrivals: mpsc::Receiver<FrameArrived>,
    access: mpsc::Receiver<blobs::AccessQuestion>,
    prepared: mpsc::Receiver<jobs::JobPrepared>,
    checked: mpsc::Receiver<verify::CheckDone>,
}

impl Host {
    async fn run(
        mut self,
        inbox: Inbox,
        mut watcher: watch::JobDirWatcher,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Inbox { mut events, mut arrivals, mut access, mut prepared, mut checked } = inbox;
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(TICK);
        let mut offer = tokio::time::interval(OFFER_INTERVAL);
        let (stored_tx, mut stored) = mpsc::channel(4);
        // JOBDIR is read on a blocking thread; a change noticed while a scan runs asks for one more after it.
        let (scan_tx, mut scans) = mpsc::channel(1);
        let mut scan_state = ScanState::default();
        scan_state.start(&self.config.jobdir, &scan_tx);
        loop {
            tokio::select! {
                // In this order: volunteers' messages (renewals among them) are handled before the tick may expire
                // a lease, so a busy loop never expires a lease whose renewal was already waiting.
                biased;
                _ = &mut shutdown => {
                    info!("host shutting down");
                    return Ok(());
                }
                event = events.recv() => match event {
                    Some(event) => self.on_net_event(event).await,
                    None => anyhow::bail!("the network task stopped; the host can no longer hear volunteers"),
                },
                Some(arrival) = arrivals.recv() => self.on_frame_arrived(arrival, &stored_tx),
                // A frame was checked, a check copy compared, or a ban recorded, off the loop.
                Some(done) = checked.recv() => self.on_check_done(done, &stored_tx),
                // May this peer fetch a job's file? Only while it holds a lease on a frame of the job.
                Some(question) = access.recv() => self.answer_access(question),
                // A batch of frames is durable: answer the volunteers, store the next batch.
                Some(batch) = stored.recv() => self.on_batch_stored(batch, &stored_tx),
                // A job's project was prepared (or failed to be) in the background.
                Some(done) = prepared.recv() => {
                    if self.on_prepared(done) {
                        self.offer_now = true;
                        watcher.watch_folders(self.project_folders());
                    }
                }
                // A change in JOBDIR or in a folder of jobs' files (or the periodic fallback for file systems
                // notify cannot watch).
                _ = watcher.changed() => scan_state.start(&self.config.jobdir, &scan_tx),
                Some(scan) = scans.recv() => {
                    if self.on_scan(scan) {
                        self.offer_now = true;
                        watcher.watch_folders(self.project_folders());
                    }
                    scan_state.done(&self.config.jobdir, &scan_tx);
                }
                _ = tick.tick() => {
                    self.publish_snapshot();
                    self.report_unservable();
                    self.verifier.tick(Instant::now().into_std());
                    for recall in self.scheduler.tick(Instant::now().into_std()) {
                        info!("lease of frame {} of {} held by {} expired; requeued", recall.frame, recall.job, recall.peer);
                        self.offer_now = true;
                    }
                }
                _ = offer.tick() => self.offer_now = true,
            }
            if std::mem::take(&mut self.offer_now) {
                self.publish_offer().await;
            }
        }
    }

    /// The folders holding files the current jobs use (not the host's own state folder).
    fn project_folders(&self) -> std::collections::HashSet<PathBuf> {
        let paths = self.blob_server.served_paths();
        let folders = paths.iter().filter_map(|p| p.parent()).filter(|f| !f.starts_with(&self.config.state_dir));
        folders.map(Path::to_path_buf).collect()
    }

    async fn publish_offer(&mut self) {
        self.offer_seq += 1;
        let jobs = self.scheduler.offers().into_iter().map(|(job, pending)| OfferedJob { job, pending }).collect();
        let offer = JobOffer { version: PROTOCOL_VERSION, seq: self.offer_seq, jobs };
        let _ = self.client.publish(offer).await;
        // The manifest rides along every tenth offer (and volunteers ask for it when they connect).
        if self.offer_seq % 10 == 1 {
            let _ = self.client.publish_manifest(self.manifest.clone()).await;
        }
    }

    async fn on_net_event(&mut self, event: NetEvent) {
        match event {
            NetEvent::Request { peer, request, channel } => {
                let response = self.on_request(peer, request);
                let _ = self.client.respond(peer, channel, response).await;
            }
            NetEvent::PeerGone(peer) => {
                let label = self.tallies.label(&peer);
                self.verifier.peer_gone(&peer);
                for (job, frame) in self.scheduler.peer_gone(&peer) {
                    info!("volunteer {label} left; frame {frame} of {job} requeued");
                    self.offer_now = true;
                }
                if self.tallies.peer_gone(&peer).is_some() {
                    info!("volunteer {label} left");
                }
                self.blob_server.forget_peer(&peer);
            }
            NetEvent::ListenFailed(reason) => warn!("{reason}"),
            NetEvent::Listening(_)
            | NetEvent::HostFound(_)
            | NetEvent::Offer { .. }
            | NetEvent::Manifest { .. }
            | NetEvent::Incompatible { .. } => {}
        }
    }
}
