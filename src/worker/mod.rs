//! The volunteer. It finds owners (bootstrap addresses or mDNS), claims frames, fetches each .blend once into its
//! content-addressed cache, renders with a [`blender::Renderer`], and returns each frame: a result notice, then the
//! blob pushed over a stream, then the owner's word that it is stored. It never needs the owner's job folder.

pub mod blender;
mod cache;
mod deliver;
mod events;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
mod frame;
mod layouts;
mod leases;
mod project;
pub mod seed;
mod session;
mod slots;
mod swarm;

pub use frame::Patience;
pub use session::Limits;
/// The driver's reply parser, for the fuzz targets in `fuzz/` only.
#[doc(hidden)]
pub use session::{parse_reply, read_lines, DriverReply, Tail};

use std::{collections::HashSet, future::Future, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use libp2p::Multiaddr;
use tokio::sync::{watch, Notify};
use tracing::info;

use crate::{
    net::{self, NetConfig},
    store::{blobs::BlobStore, keys},
    update::{host::OwnBinary, volunteer::Updater},
};
use blender::{BlenderOptions, BlenderRenderer, Renderer};
use leases::Leases;

#[derive(Clone)]
pub struct WorkerConfig {
    pub cache_dir: PathBuf,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// Frames rendered at once, each by its own renderer process.
    pub renderers: u32,
    /// Self-update; `None` ignores every manifest (in-process tests).
    pub updater: Option<Arc<Updater>>,
    /// What this volunteer's Blender can do, told to owners with every claim; `None` (the fake renderer) says nothing.
    pub caps: Option<crate::protocol::VolunteerCaps>,
    /// How long to wait for an owner's answers on blob streams.
    pub patience: Patience,
    /// A private farm's key (`join --swarm-key`); `None` joins open farms only.
    pub swarm_key: Option<net::SwarmKey>,
}

/// What the `join` command is asked to do, in the library's own terms.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// Absolute: Blender is given paths inside it.
    pub cache_dir: PathBuf,
    pub blender: PathBuf,
    pub render: BlenderOptions,
    pub renderers: u32,
    pub auto_updates: bool,
    /// The name hosts show for this volunteer.
    pub name: Option<String>,
    /// A private farm's key (`--swarm-key`, `--swarm-key-file`).
    pub swarm_key: Option<net::SwarmKey>,
    /// Sharing the jobs' files with other volunteers (`--listen`, `--max-upload`, `--cache-size`, `--no-share`).
    pub share: seed::ShareOptions,
}

/// Runs a volunteer with real Blender until `shutdown`, relaunching it on a staged build (the `join` command).
pub async fn join(options: JoinOptions, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let JoinOptions {
        bootstrap,
        mdns,
        cache_dir,
        blender: program,
        render: options,
        renderers,
        auto_updates,
        name,
        swarm_key,
        share,
    } = options;
    if bootstrap.is_empty() && !mdns {
        anyhow::bail!("with --no-mdns, give the host's address: blenderdist join HOST[:PORT]");
    }
    let renderer = BlenderRenderer::new(program, options, &cache_dir.join("driver")).await?;
    info!(
        "Blender {} (build {}), denoiser: {}",
        renderer.caps().blender,
        renderer.caps().build_hash,
        renderer.caps().denoiser
    );
    std::fs::create_dir_all(&cache_dir)
        .with_context(|| format!("cannot create the cache folder {}", cache_dir.display()))?;
    let own = OwnBinary::locate().await?;
    let pinned = bootstrap.iter().filter_map(crate::net::peer_of).collect();
    let updater = Arc::new(Updater::new(own, &cache_dir, pinned, auto_updates));
    let config = WorkerConfig {
        cache_dir,
        bootstrap,
        mdns,
        renderers,
        updater: Some(updater.clone()),
        caps: Some(crate::protocol::VolunteerCaps { name, ..renderer.caps().clone() }),
        patience: Patience::default(),
        swarm_key,
    };
    // Asked to stop, the volunteer stops, even with an update staged: it must not restart itself instead.
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stopping.clone();
    let shutdown = async move {
        shutdown.await;
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let worker = start_sharing(config, share, renderer, shutdown)?;
    let result = worker.await.context("the volunteer task panicked")?;
    if stopping.load(std::sync::atomic::Ordering::SeqCst) {
        return result;
    }
    if let Some(staged) = updater.staged() {
        // Every frame in flight is delivered: switch to the new build, same arguments.
        let program = updater.install(&staged);
        return Err(crate::update::relaunch(&program)).context("cannot relaunch");
    }
    result
}

/// Starts a volunteer and returns its task; it runs until `shutdown` resolves. It listens nowhere, so it fetches
/// chunks from other volunteers but nobody can dial it for its own ([`start_sharing`] says otherwise).
pub fn start<R: Renderer>(
    config: WorkerConfig,
    renderer: R,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    start_sharing(config, seed::ShareOptions::default(), renderer, shutdown)
}

/// [`start`] with the given way of sharing the jobs' files with other volunteers.
pub fn start_sharing<R: Renderer>(
    config: WorkerConfig,
    share: seed::ShareOptions,
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
        swarm_key: config.swarm_key.clone(),
        is_host: false,
        listen: if share.no_share { vec![] } else { share.listen.clone() },
        bootstrap: config.bootstrap.clone(),
        mdns: config.mdns,
        max_peers: crate::protocol::DEFAULT_MAX_PEERS,
    })?;
    info!("volunteer {} started", client.peer_id());
    if config.mdns {
        info!("looking for hosts on the LAN (mDNS)…");
    }
    let blobs = Arc::new(blobs);
    let seeds = Arc::new(seed::Seeds::new(blobs.clone(), &share));
    if !share.no_share {
        seeds.spawn(&client)?;
    }
    let sharing = Arc::new(seed::Sharing { seeds, log: config.cache_dir.join("chunks-received.log"), options: share });
    let (hosts_tx, hosts) = watch::channel(HashSet::new());
    let offers = Arc::new(Notify::new());
    let slot = Arc::new(frame::Slot {
        client: client.clone(),
        layouts: Arc::new(layouts::Layouts::new(&config.cache_dir)),
        blobs,
        renderer: Arc::new(renderer),
        work_dir,
        fetching: tokio::sync::Mutex::new(()),
        next_dir: Default::default(),
        delivered: Default::default(),
        caps: std::sync::Mutex::new(config.caps.clone()),
        patience: config.patience,
        sharing,
        general_path: Default::default(),
    });
    if config.caps.is_some() {
        // Whether Eevee works here takes a few seconds of Blender to learn: claims go out meanwhile without it.
        let slot = slot.clone();
        tokio::spawn(async move {
            let Some(works) = slot.renderer.probe_opengl().await else { return };
            info!("Eevee and Workbench {}", if works { "render here" } else { "cannot render here (no OpenGL)" });
            if let Some(caps) = slot.caps.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                caps.opengl = Some(works);
            }
        });
    }
    let leases = Leases::default();
    let (draining_tx, draining) = watch::channel(false);
    let signals = slots::Signals { hosts, offers: offers.clone(), draining };
    let slots = futures::future::try_join_all(
        (0..config.renderers.max(1)).map(|_| slots::slot_loop(slot.clone(), leases.clone(), signals.clone())),
    );
    let updater = config.updater.clone();
    Ok(tokio::spawn(async move {
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => { info!("volunteer shutting down"); Ok(()) }
            result = events::track_hosts(events, client.clone(), hosts_tx, offers, updater, draining_tx) => result,
            _ = leases.clone().renew_forever(client) => Ok(()),
            // Slots end only when the volunteer drained for an update.
            result = slots => result.map(|_| ()),
        }
    }))
}
