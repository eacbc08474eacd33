//! The volunteer. It finds owners (bootstrap addresses or mDNS), claims frames, fetches each .blend once into its
//! content-addressed cache, renders with a [`blender::Renderer`], and returns each frame: a result notice, then the
//! blob pushed over a stream, then the owner's word that it is stored. It never needs the owner's job folder.

pub mod blender;
pub mod fake;
mod frame;

use std::{collections::HashSet, future::Future, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, warn};

use crate::{
    cli::{parse_addr, JoinArgs},
    net::{self, NetConfig, NetEvent},
    protocol::{WorkRequest, WorkResponse, PROTOCOL_VERSION},
    store::{blobs::BlobStore, keys},
};
use blender::{BlenderRenderer, Renderer};

/// How long an idle volunteer waits for an offer before asking again anyway.
const IDLE_POLL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub cache_dir: PathBuf,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
}

pub async fn run_cli(args: JoinArgs, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let bootstrap = args
        .bootstrap
        .iter()
        .map(|a| parse_addr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let cache_dir = match args.cache_dir {
        Some(dir) => dir,
        None => dirs::cache_dir()
            .context("no cache folder is known for this user; pass --cache-dir")?
            .join("blenderdist"),
    };
    let program = BlenderRenderer::default_program(args.blender);
    let renderer = BlenderRenderer::new(program, args.threads, &cache_dir.join("driver")).await?;
    if bootstrap.is_empty() && args.no_mdns {
        anyhow::bail!("with --no-mdns, give the host's address: blenderdist join HOST[:PORT]");
    }
    let config = WorkerConfig {
        cache_dir,
        bootstrap,
        mdns: !args.no_mdns,
    };
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
    let slot = frame::Slot {
        client: client.clone(),
        blobs: Arc::new(blobs),
        renderer: Arc::new(renderer),
        work_dir,
    };
    Ok(tokio::spawn(async move {
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => { info!("volunteer shutting down"); Ok(()) }
            _ = track_hosts(events, hosts_tx, offers.clone()) => Ok(()),
            result = work_loop(slot, hosts, offers) => result,
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
                    warn!(
                        "host {from} speaks protocol version {}, this volunteer {PROTOCOL_VERSION}",
                        offer.version
                    );
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
            NetEvent::Listening(_) => {}
        }
    }
}

/// Claims and renders frames, one at a time, from whichever known owner has work.
async fn work_loop<R: Renderer>(
    slot: frame::Slot<R>,
    mut hosts: watch::Receiver<HashSet<PeerId>>,
    offers: Arc<Notify>,
) -> anyhow::Result<()> {
    loop {
        let known: Vec<PeerId> = hosts.borrow_and_update().iter().copied().collect();
        if known.is_empty() {
            if hosts.changed().await.is_err() {
                return Ok(());
            }
            continue;
        }
        // Armed before claiming, so an offer that arrives meanwhile is not missed.
        let notified = offers.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut worked = false;
        for host in known {
            match slot
                .client
                .request(
                    host,
                    WorkRequest::Claim {
                        version: PROTOCOL_VERSION,
                        slots: 1,
                    },
                )
                .await
            {
                Ok(WorkResponse::Granted(grants)) => {
                    for grant in grants {
                        slot.process(host, grant).await;
                    }
                    worked = true;
                }
                Ok(WorkResponse::Refused { reason }) => warn!("host {host} refused work: {reason}"),
                Ok(WorkResponse::NoWork) => {}
                Ok(other) => debug!("unexpected answer to a claim: {other:?}"),
                Err(e) => debug!("claim failed: {e}"),
            }
        }
        if !worked {
            // Idle: wait for an offer, a new host, or the poll period.
            tokio::select! {
                _ = notified => {}
                _ = hosts.changed() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }
}
