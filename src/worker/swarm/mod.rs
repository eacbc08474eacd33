//! Fetching a job's large files from the job's other volunteers as well as from the owner (`protocol::chunks`).
//!
//! For one job version, a [`SwarmFetch`] asks the owner for a ticket and the other volunteers it granted frames of
//! the job (again every few seconds, to learn of newcomers), telling it where this volunteer listens. For each blob
//! larger than a chunk it gets the chunk list from the owner, then keeps one request in flight per peer: which
//! chunks do you hold (refreshed often), or the rarest chunk that peer holds and this volunteer lacks. Chunks no
//! known peer holds are asked of the owner (two requests at a time), which picks the one it sent least often. Every
//! chunk is checked against the list on arrival and written into a temp file that other volunteers can already
//! fetch verified chunks from; a peer that sends a corrupt chunk is dropped for that blob (and gets a strike), and
//! the chunk is fetched elsewhere. At the end the whole file is checked against the blob's sha256 before it enters
//! the store.
//!
//! The fetch of one blob reads in three parts: `plan` decides which chunk to ask of whom (pure state, no I/O),
//! `exchange` holds the requests and replies on the wire, and `fetch_loop` drives them until every chunk is in.
//! This file holds the [`SwarmFetch`] itself: the owner's answers it caches, and the temp file's way into the store.

mod exchange;
mod fetch_loop;
mod plan;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use libp2p::{Multiaddr, PeerId};
use tokio::time::{Duration, Instant};
use tracing::info;

use self::exchange::{retried, SwarmInfo};
use super::seed::{Partial, Seeds};
use crate::{
    net::{Client, NetError},
    protocol::{Bitfield, BlobHash, CHUNK_PROTOCOL},
    store::blobs::{persist, BlobStore},
};

/// How often the owner is asked again for the job's volunteers while a blob is fetched.
const SWARM_REFRESH: Duration = Duration::from_secs(2);

/// Chunked fetching of one job version's files.
pub struct SwarmFetch<'a> {
    pub client: &'a Client,
    pub seeds: &'a Arc<Seeds>,
    pub store: &'a BlobStore,
    pub owner: PeerId,
    pub manifest: BlobHash,
    /// Where this volunteer listens, told to the owner; empty when it does not share.
    pub listen: Vec<Multiaddr>,
    /// One line per blob fetched in chunks: who sent how many (`CACHE/chunks-received.log`).
    pub log: PathBuf,
    info: tokio::sync::Mutex<Option<(SwarmInfo, Instant)>>,
    /// Set once the owner turned out not to speak the chunk protocol: every file is then fetched whole at once.
    owner_lacks_chunks: std::sync::atomic::AtomicBool,
}

impl<'a> SwarmFetch<'a> {
    pub fn new(
        client: &'a Client,
        seeds: &'a Arc<Seeds>,
        store: &'a BlobStore,
        owner: PeerId,
        manifest: BlobHash,
        listen: Vec<Multiaddr>,
        log: PathBuf,
    ) -> Self {
        let (info, owner_lacks_chunks) = (tokio::sync::Mutex::new(None), Default::default());
        Self { client, seeds, store, owner, manifest, listen, log, info, owner_lacks_chunks }
    }

    /// Fetches `hash` (`size` bytes, more than one chunk) into the store and returns its path.
    pub async fn fetch(&self, hash: BlobHash, size: u64) -> anyhow::Result<PathBuf> {
        use std::sync::atomic::Ordering;
        if self.owner_lacks_chunks.load(Ordering::Relaxed) {
            anyhow::bail!("the owner does not speak {CHUNK_PROTOCOL}");
        }
        let started = Instant::now();
        let list = self.chunk_list(hash, size).await.inspect_err(|e| {
            if matches!(e.downcast_ref::<NetError>(), Some(NetError::Unsupported { .. })) {
                self.owner_lacks_chunks.store(true, Ordering::Relaxed);
            }
        })?;
        let info = self.swarm_info(false).await?;
        let path = self.store.temp_path(&hash);
        let file = tokio::fs::File::create(&path).await.with_context(|| format!("cannot create {}", path.display()))?;
        file.set_len(size).await.with_context(|| format!("cannot size {}", path.display()))?;
        drop(file);
        let guard = TempFile(Some(path.clone()));
        let partial = Arc::new(Partial { path: path.clone(), size, have: Bitfield::new(list.len()).into() });
        self.seeds.start_partial(hash, partial.clone());
        let result = self.run(hash, &list, &partial, info).await;
        let result = match result {
            Ok(counts) => self.finish(hash, size, &path).await.map(|dest| (dest, counts)),
            Err(e) => Err(e),
        };
        self.seeds.end_partial(&hash);
        let (dest, (owner_chunks, peers)) = result?;
        guard.disarm();
        let from_peers: u32 = peers.iter().map(|(_, n)| n).sum();
        info!(
            "fetched blob {} ({size} bytes) in {:.1} s: {owner_chunks} chunks from the owner, {from_peers} from {} \
             other volunteers",
            hash.short(),
            started.elapsed().as_secs_f64(),
            peers.len()
        );
        let mut line = format!("{} owner {owner_chunks}", hash.to_hex());
        for (peer, n) in &peers {
            line.push_str(&format!(" {peer} {n}"));
        }
        line.push('\n');
        if let Ok(mut log) = tokio::fs::OpenOptions::new().create(true).append(true).open(&self.log).await {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut log, line.as_bytes()).await;
        }
        Ok(dest)
    }

    /// Checks the whole file, then moves it into the store.
    async fn finish(&self, hash: BlobHash, size: u64, path: &Path) -> anyhow::Result<PathBuf> {
        let file = path.to_path_buf();
        let (actual, actual_size) = tokio::task::spawn_blocking(move || -> std::io::Result<(BlobHash, u64)> {
            let (whole, _) = crate::host::chunks::chunk_list(&file)?;
            let f = std::fs::File::options().write(true).open(&file)?;
            f.sync_all()?;
            Ok((whole, f.metadata()?.len()))
        })
        .await??;
        if actual != hash || actual_size != size {
            anyhow::bail!("blob {}: its chunks add up to {} instead", hash.short(), actual.short());
        }
        let dest = self.store.path(&hash);
        persist(path, &dest).await?;
        Ok(dest)
    }

    /// The owner's ticket and the job's other volunteers, asked again when `fresh` or older than [`SWARM_REFRESH`].
    async fn swarm_info(&self, fresh: bool) -> anyhow::Result<SwarmInfo> {
        let mut cached = self.info.lock().await;
        if let (false, Some((info, at))) = (fresh, cached.as_ref()) {
            if at.elapsed() < SWARM_REFRESH {
                return Ok(info.clone());
            }
        }
        let info = retried(|| self.ask_swarm()).await?;
        *cached = Some((info.clone(), Instant::now()));
        Ok(info)
    }

    /// The blob's chunk list, from the owner.
    async fn chunk_list(&self, hash: BlobHash, size: u64) -> anyhow::Result<Vec<BlobHash>> {
        retried(|| self.ask_list(hash, size)).await
    }
}

/// Removes the temp file unless disarmed.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}
