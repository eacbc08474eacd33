//! The volunteer. It finds owners (bootstrap addresses or mDNS), claims frames, fetches each .blend once into its
//! content-addressed cache, renders with a [`blender::Renderer`], and returns each frame: a result notice, then the
//! blob pushed over a stream, then the owner's word that it is stored. It never needs the owner's job folder.

pub mod blender;
pub mod fake;
mod frame;
mod leases;
mod session;

pub use session::Limits;

use std::{collections::HashSet, future::Future, path::PathBuf, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use anyhow::Context as _;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, warn};

use crate::{
    cli::{parse_addr, JoinArgs},
    net::{self, NetConfig, NetEvent},
    protocol::{FrameGrant, WorkRequest, WorkResponse, PROTOCOL_VERSION},
    store::{blobs::BlobStore, keys},
};
use blender::{BlenderOptions, BlenderRenderer, Renderer};
use leases::Leases;

/// How long an idle volunteer waits for an offer before asking again anyway.
const IDLE_POLL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub cache_dir: PathBuf,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// Frames rendered at once, each by its own renderer process.
    pub renderers: u32,
}

pub async fn run_cli(args: JoinArgs, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let bootstrap = args.bootstrap.iter().map(|a| parse_addr(a)).collect::<Result<Vec<_>, _>>()?;
    let cache_dir = match args.cache_dir {
        Some(dir) => dir,
        None => {
            dirs::cache_dir().context("no cache folder is known for this user; pass --cache-dir")?.join("blenderdist")
        }
    };
    let program = BlenderRenderer::default_program(args.blender);
    let options = BlenderOptions {
        threads: args.threads,
        process_per_frame: args.process_per_frame,
        limits: Limits {
            frame_time: (args.frame_timeout > 0).then(|| Duration::from_secs(args.frame_timeout)),
            memory: args.max_memory.map(|mib| mib << 20),
        },
        keep_open: args.renderers as usize,
    };
    let renderer = BlenderRenderer::new(program, options, &cache_dir.join("driver")).await?;
    if bootstrap.is_empty() && args.no_mdns {
        anyhow::bail!("with --no-mdns, give the host's address: blenderdist join HOST[:PORT]");
    }
    let config = WorkerConfig { cache_dir, bootstrap, mdns: !args.no_mdns, renderers: args.renderers };
    let worker = start(config, renderer, shutdown)?;
    worker.await.context("the volunteer task panicked")?
}

/// Starts a volunteer and returns its task; it runs until `shutdown` resolves.
pub fn start<R: Renderer>(
    config: WorkerConfig,
    renderer: R,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    std::fs::create_dir_all(&config.cache_dir)
        .with_context(|| format!("cannot create the cache folder {}", config.cache_dir.display()))?;
    let keypair = keys::load_or_create(&config.cache_dir.join("node.key"))?;
    let blobs = BlobStore::open(config.cache_dir.join("blobs"))?;
    let work_dir = config.cache_dir.join("work");
    let _ = std::fs::remove_dir_all(&work_dir);
    let (client, events) = net::spawn(NetConfig {
        keypair,
        is_host: false,
        listen: vec![],
        bootstrap: config.bootstrap.clone(),
        mdns: config.mdns,
    })?;
    info!("volunteer {} started", client.peer_id());
    let (hosts_tx, hosts) = watch::channel(HashSet::new());
    let offers = Arc::new(Notify::new());
    let slot = Arc::new(frame::Slot {
        client: client.clone(),
        blobs: Arc::new(blobs),
        renderer: Arc::new(renderer),
        work_dir,
        fetching: tokio::sync::Mutex::new(()),
    });
    let leases = Leases::default();
    let slots = futures::future::try_join_all(
        (0..config.renderers.max(1)).map(|_| slot_loop(slot.clone(), leases.clone(), hosts.clone(), offers.clone())),
    );
    Ok(tokio::spawn(async move {
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => { info!("volunteer shutting down"); Ok(()) }
            _ = track_hosts(events, hosts_tx, offers.clone()) => Ok(()),
            _ = leases.clone().renew_forever(client) => Ok(()),
            result = slots => result.map(|_| ()),
        }
    }))
}

/// Keeps the set of reachable owners up to date, and wakes idle slots when an owner offers work.
async fn track_hosts(mut events: mpsc::Receiver<NetEvent>, hosts: watch::Sender<HashSet<PeerId>>, offers: Arc<Notify>) {
    while let Some(event) = events.recv().await {
        match event {
            NetEvent::HostFound(peer) => {
                info!("joined host {peer}");
                hosts.send_modify(|h| {
                    h.insert(peer);
                });
                offers.notify_waiters();
            }
            NetEvent::Offer { from, offer } => {
                if offer.version != PROTOCOL_VERSION {
                    warn!("host {from} speaks protocol version {}, this volunteer {PROTOCOL_VERSION}", offer.version);
                    continue;
                }
                hosts.send_if_modified(|h| h.insert(from));
                if offer.jobs.iter().any(|j| j.pending > 0) {
                    offers.notify_waiters();
                }
            }
            NetEvent::PeerGone(peer) => {
                hosts.send_if_modified(|h| h.remove(&peer));
            }
            NetEvent::Request { peer, channel, .. } => {
                debug!(%peer, "ignoring a work request: volunteers do not serve work");
                drop(channel);
            }
            NetEvent::Listening(_) | NetEvent::ListenFailed(_) => {}
        }
    }
}

/// One render slot: renders its current frame while it claims and fetches its next, so it never sits idle
/// between frames.
async fn slot_loop<R: Renderer>(
    slot: Arc<frame::Slot<R>>,
    leases: Leases,
    mut hosts: watch::Receiver<HashSet<PeerId>>,
    offers: Arc<Notify>,
) -> anyhow::Result<()> {
    let mut next: Option<Prepared> = None;
    // The previous frame's upload, which runs while this slot renders the next frame.
    let mut delivering: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let current = match next.take() {
            Some(prepared) => prepared,
            None => match wait_for_grant(&slot, &leases, &mut hosts, &offers).await {
                Some(prepared) => prepared,
                None => return Ok(()),
            },
        };
        let Prepared { host, grant, blend, recalled } = current;
        let render = slot.render_granted(&grant, blend, &recalled);
        let (outcome, prefetched) = tokio::join!(render, claim_one(&slot, &leases, &hosts));
        next = prefetched;
        // One upload in flight per slot: a slow link slows the slot down instead of piling up frames.
        if let Some(previous) = delivering.take() {
            let _ = previous.await;
        }
        let (slot, leases) = (slot.clone(), leases.clone());
        delivering = Some(tokio::spawn(async move {
            slot.report(host, &grant, outcome).await;
            leases.release(host, &grant.job, grant.frame);
        }));
    }
}

/// A granted frame with its .blend fetched (or the reason it could not be).
struct Prepared {
    host: PeerId,
    grant: FrameGrant,
    blend: anyhow::Result<PathBuf>,
    recalled: CancellationToken,
}

/// Claims one frame from whichever known owner has one, holds its lease and fetches its .blend.
async fn claim_one<R: Renderer>(
    slot: &frame::Slot<R>,
    leases: &Leases,
    hosts: &watch::Receiver<HashSet<PeerId>>,
) -> Option<Prepared> {
    let known: Vec<PeerId> = hosts.borrow().iter().copied().collect();
    for host in known {
        match slot.client.request(host, WorkRequest::Claim { version: PROTOCOL_VERSION, slots: 1 }).await {
            Ok(WorkResponse::Granted(grants)) => {
                let mut grants = grants.into_iter();
                let grant = grants.next()?;
                // We asked for one; any extra frame would only wait for its lease to run out.
                let recalled = leases.hold(host, &grant.job, grant.frame);
                let blend = slot.fetch_blend(host, &grant).await;
                return Some(Prepared { host, grant, blend, recalled });
            }
            Ok(WorkResponse::Refused { reason }) => warn!("host {host} refused work: {reason}"),
            Ok(WorkResponse::NoWork) => {}
            Ok(other) => debug!("unexpected answer to a claim: {other:?}"),
            Err(e) => debug!("claim failed: {e}"),
        }
    }
    None
}

/// Waits until some owner grants a frame. `None` when the volunteer is shutting down.
async fn wait_for_grant<R: Renderer>(
    slot: &frame::Slot<R>,
    leases: &Leases,
    hosts: &mut watch::Receiver<HashSet<PeerId>>,
    offers: &Notify,
) -> Option<Prepared> {
    loop {
        // Armed before claiming, so an offer that arrives meanwhile is not missed.
        let notified = offers.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        hosts.borrow_and_update();
        if let Some(prepared) = claim_one(slot, leases, hosts).await {
            return Some(prepared);
        }
        tokio::select! {
            _ = notified => {}
            changed = hosts.changed() => changed.ok()?,
            _ = tokio::time::sleep(IDLE_POLL) => {}
        }
    }
}
