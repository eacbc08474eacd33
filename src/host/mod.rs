//! The owner of a job folder. It watches JOBDIR, feeds the scheduler, answers volunteers' claims and result
//! notices, receives frames over blob streams and writes them to RENDERDIR/NAME/ — durably, before acknowledging.
//!
//! Layout: [`jobfile`] parses job files, `jobs` reconciles the folder with the scheduler, [`blobs`] serves .blend
//! files and receives frames, [`joblog`] writes `JOBDIR/NAME.log`, [`finish`] makes a job's movie and runs its
//! `notify` command when it ends. This file holds the event loop.

pub mod blobs;
pub mod check;
pub mod chunks;
mod confirm;
mod dashboard;
mod deliver;
pub mod finish;
mod frames;
pub mod http;
pub mod jobfile;
pub mod joblog;
mod jobs;
mod limited;
mod owner;
pub mod project;
pub mod pulse;
mod ready;
mod requests;
mod scan;
mod start;
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
pub use start::{owners_blender, start};

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
    /// Test only: serve no `/blenderdist/deliver/1`, as owners from before it, so that tests can drive volunteers'
    /// way back to the general path (notice, claim and upload apart).
    #[cfg(feature = "testing")]
    pub without_deliveries: bool,
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
    ready::print_ready(&host, &config_relays);
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
    /// Deliveries' notices and claims, from the blob server.
    work: mpsc::Receiver<blobs::WorkAsk>,
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
        let Inbox { mut events, mut arrivals, mut access, mut work, mut prepared, mut checked } = inbox;
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(TICK);
        let mut offer = tokio::time::interval(OFFER_INTERVAL);
        let (stored_tx, mut stored) = mpsc::channel(4);
        // JOBDIR is read on a blocking thread; a change noticed while a scan runs asks for one more after it.
        let (scan_tx, mut scans) = mpsc::channel(1);
        let mut scan_state = ScanState::default();
        scan_state.start(&self.config.jobdir, &scan_tx);
        let mut pulse = pulse::Pulse::from_env();
        loop {
            tokio::select! {
                // In this order: volunteers' messages (renewals among them) are handled before the tick may expire
                // a lease, so a busy loop never expires a lease whose renewal was already waiting.
                biased;
                _ = &mut shutdown => {
                    info!("host shutting down");
                    return Ok(());
                }
                // Off unless measuring: first, so its lateness is the time the loop spent away from its events.
                scheduled = pulse.tick() => pulse.record(scheduled),
                event = events.recv() => match event {
                    Some(event) => self.on_net_event(event).await,
                    None => anyhow::bail!("the network task stopped; the host can no longer hear volunteers"),
                },
                // A delivery's notice and claim, answered as if they had come alone.
                Some(blobs::WorkAsk { peer, requests, reply }) = work.recv() => {
                    let answers = requests.into_iter().map(|request| self.on_request(peer, request)).collect();
                    let _ = reply.send(answers);
                }
                Some(arrival) = arrivals.recv() => self.on_frame_arrived(arrival, &stored_tx),
                // A check copy was compared, or a ban recorded, off the loop.
                Some(done) = checked.recv() => self.on_check_done(done),
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
