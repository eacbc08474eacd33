//! A volunteer serving chunks of a job's files to the job's other volunteers (`protocol::chunks`).
//!
//! It serves only chunks it verified: blobs complete in its store, and the verified chunks of blobs it is still
//! fetching ([`Partial`]). It serves them only to a peer showing a ticket signed by the owner it got that job from,
//! naming that peer and a job version whose manifest lists the blob. Its upload is limited by a token bucket
//! (`join --max-upload`), shared by every stream.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use futures::AsyncWriteExt;
use libp2p::{PeerId, Stream};
use tokio::time::{Duration, Instant};
use tracing::debug;

use crate::{
    host::chunks::{now_ms, read_chunk},
    net::{Client, PeerBudgets},
    protocol::{
        chunk_count, write_header_max, Bitfield, BlobHash, ChunkReply, ChunkRequest, JobManifest, Ticket,
        CHUNK_PROTOCOL, MAX_CHUNK_HEADER,
    },
    store::blobs::BlobStore,
};

/// Job versions remembered for serving; older ones are forgotten.
const KEEP_JOBS: usize = 64;
/// Chunk streams served at once; more wait.
const MAX_SERVING: usize = 16;
/// Bytes written to a stream at a time (each charged to the upload bucket first).
const PIECE: usize = 64 * 1024;

/// How a volunteer shares: `join --listen`, `--max-upload`, `--cache-size`, `--no-share`.
#[derive(Debug, Clone, Default)]
pub struct ShareOptions {
    /// Addresses to listen on for other volunteers; none: this volunteer only fetches (and serves over the
    /// connections others make to it, which are none: nobody can dial it).
    pub listen: Vec<libp2p::Multiaddr>,
    /// Upload limit in bytes a second for chunks served to other volunteers; 0: unlimited.
    pub max_upload: u64,
    /// Most bytes of blobs kept in the cache, least recently used evicted first; 0: unlimited.
    pub cache_size: u64,
    /// Serve nothing to other volunteers.
    pub no_share: bool,
    /// Test only: serve every chunk with one byte flipped, so tests can watch a corrupt peer being dropped.
    #[cfg(feature = "testing")]
    pub corrupt: bool,
}

impl ShareOptions {
    /// What `join` asks for (the test switch off).
    pub fn new(listen: Vec<libp2p::Multiaddr>, max_upload: u64, cache_size: u64, no_share: bool) -> Self {
        Self {
            listen,
            max_upload,
            cache_size,
            no_share,
            #[cfg(feature = "testing")]
            corrupt: false,
        }
    }
}

/// A blob being fetched in chunks: its temp file and the chunks verified so far.
pub struct Partial {
    pub path: PathBuf,
    pub size: u64,
    pub have: Mutex<Bitfield>,
}

/// A job version this volunteer works on: the owner that granted it, and the blobs it lists with their sizes.
type ServedJob = (PeerId, HashMap<BlobHash, u64>);

/// What the volunteer can serve, shared by its fetches and its chunk server.
pub struct Seeds {
    blobs: Arc<BlobStore>,
    /// Job versions fetched: manifest hash → the owner that granted it and the blobs it lists, with their sizes.
    jobs: Mutex<(HashMap<BlobHash, ServedJob>, VecDeque<BlobHash>)>,
    partials: Mutex<HashMap<BlobHash, Arc<Partial>>>,
    upload: TokenBucket,
    serving: tokio::sync::Semaphore,
    /// Chunk bytes sent to other volunteers.
    pub uploaded: AtomicU64,
    #[cfg(feature = "testing")]
    corrupt: bool,
}

impl Seeds {
    pub fn new(blobs: Arc<BlobStore>, options: &ShareOptions) -> Self {
        Self {
            blobs,
            jobs: Mutex::default(),
            partials: Mutex::default(),
            upload: TokenBucket::new(options.max_upload),
            serving: tokio::sync::Semaphore::new(MAX_SERVING),
            uploaded: AtomicU64::new(0),
            #[cfg(feature = "testing")]
            corrupt: options.corrupt,
        }
    }

    /// Remembers that `owner` granted this volunteer a frame of the job version `manifest_hash`, so its other
    /// volunteers' tickets for it are honoured.
    pub fn add_job(&self, manifest_hash: BlobHash, owner: PeerId, manifest: &JobManifest) {
        let files = manifest.all_files().map(|f| (f.hash, f.size)).collect();
        let mut jobs = lock(&self.jobs);
        let (map, order) = &mut *jobs;
        if map.insert(manifest_hash, (owner, files)).is_none() {
            order.push_back(manifest_hash);
        }
        while order.len() > KEEP_JOBS {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    pub fn start_partial(&self, hash: BlobHash, partial: Arc<Partial>) {
        lock(&self.partials).insert(hash, partial);
    }

    pub fn end_partial(&self, hash: &BlobHash) {
        lock(&self.partials).remove(hash);
    }

    /// Blobs being fetched now (never evicted).
    pub fn partial_hashes(&self) -> Vec<BlobHash> {
        lock(&self.partials).keys().copied().collect()
    }

    /// Accepts chunk streams from other volunteers until the network stops.
    pub fn spawn(self: &Arc<Self>, client: &Client) -> anyhow::Result<()> {
        let seeds = self.clone();
        crate::net::serve_streams(client, CHUNK_PROTOCOL, "chunk", move |budgets, peer, stream| {
            let seeds = seeds.clone();
            async move { seeds.handle(&budgets, peer, stream).await }
        })?;
        Ok(())
    }

    /// The blob's size if `ticket` lets `peer` fetch it from this volunteer.
    fn authorize(&self, peer: PeerId, blob: &BlobHash, ticket: &Ticket) -> Result<u64, String> {
        let manifest = ticket.claimed_manifest().ok_or("the ticket is unreadable")?;
        let jobs = lock(&self.jobs);
        let (owner, files) = jobs.0.get(&manifest).ok_or("this volunteer does not work on that job")?;
        ticket.verify(*owner, peer, now_ms()).map_err(|e| e.to_string())?;
        files.get(blob).copied().ok_or_else(|| "that job does not list this blob".to_string())
    }

    /// The chunks of `blob` this volunteer holds, verified.
    fn held(&self, blob: &BlobHash, size: u64) -> Bitfield {
        let count = chunk_count(size) as usize;
        if self.blobs.contains(blob) {
            return Bitfield::full(count);
        }
        match lock(&self.partials).get(blob) {
            Some(partial) => lock(&partial.have).clone(),
            None => Bitfield::new(count),
        }
    }

    async fn handle(&self, budgets: &PeerBudgets, peer: PeerId, mut stream: Stream) -> anyhow::Result<()> {
        let request = budgets.first_header(peer, &mut stream, MAX_CHUNK_HEADER).await?;
        let (blob, ticket, index) = match request {
            ChunkRequest::Have { blob, ticket } => (blob, ticket, None),
            ChunkRequest::Get { blob, index, ticket } => (blob, ticket, Some(index)),
            // Tickets, lists and chunk choices are the owner's to give.
            _ => return answer(&mut stream, &ChunkReply::Missing).await,
        };
        let size = match self.authorize(peer, &blob, &ticket) {
            Ok(size) => size,
            Err(reason) => {
                budgets.strike(peer);
                debug!(%peer, "refused chunks of {}: {reason}", blob.short());
                return answer(&mut stream, &ChunkReply::Refused { reason }).await;
            }
        };
        let held = self.held(&blob, size);
        let Some(index) = index else {
            return answer(&mut stream, &ChunkReply::Have { bits: held.to_wire() }).await;
        };
        if !held.get(index as usize) {
            return answer(&mut stream, &ChunkReply::Missing).await;
        }
        let _serving = self.serving.acquire().await?;
        let path = if self.blobs.contains(&blob) {
            Some(self.blobs.path(&blob))
        } else {
            lock(&self.partials).get(&blob).map(|partial| partial.path.clone())
        };
        let Some(path) = path else {
            return answer(&mut stream, &ChunkReply::Missing).await;
        };
        let Ok(bytes) = read_chunk(&path, size, u64::from(index)).await else {
            // Completed and renamed meanwhile, or evicted: the peer asks someone else.
            return answer(&mut stream, &ChunkReply::Missing).await;
        };
        #[cfg(feature = "testing")]
        let bytes = if self.corrupt {
            let mut bytes = bytes;
            if let Some(first) = bytes.first_mut() {
                *first ^= 0xff;
            }
            bytes
        } else {
            bytes
        };
        write_header_max(&mut stream, &ChunkReply::Chunk { index, size: bytes.len() as u32 }, MAX_CHUNK_HEADER).await?;
        for piece in bytes.chunks(PIECE) {
            self.upload.take(piece.len() as u64).await;
            stream.write_all(piece).await?;
        }
        stream.close().await?;
        self.uploaded.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        debug!(%peer, "served chunk {index} of {}", blob.short());
        Ok(())
    }
}

async fn answer(stream: &mut Stream, reply: &ChunkReply) -> anyhow::Result<()> {
    write_header_max(stream, reply, MAX_CHUNK_HEADER).await?;
    stream.close().await?;
    Ok(())
}

/// An upload limit: `rate` bytes a second, with a burst of a quarter second (at least 64 KiB). Senders that take
/// more than there is wait, in turn, until the debt is paid.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `rate` bytes a second; 0: unlimited.
    pub fn new(rate: u64) -> Self {
        let rate = rate as f64;
        let burst = (rate / 4.0).max(64.0 * 1024.0);
        Self { rate, burst, state: tokio::sync::Mutex::new((burst, Instant::now())) }
    }

    /// Waits until `bytes` may be sent.
    pub async fn take(&self, bytes: u64) {
        if self.rate <= 0.0 {
            return;
        }
        // Held while waiting: senders queue in turn.
        let mut state = self.state.lock().await;
        let wait = self.debit(&mut state, Instant::now(), bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Refills `state` up to `now`, takes `bytes` and says how long the taker must wait for the debt to be paid (the
    /// state then counts as of the end of that wait).
    fn debit(&self, state: &mut (f64, Instant), now: Instant, bytes: u64) -> Duration {
        let (tokens, last) = state;
        let now = now.max(*last);
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *tokens -= bytes as f64;
        *last = now;
        if *tokens >= 0.0 {
            return Duration::ZERO;
        }
        let wait = Duration::from_secs_f64(-*tokens / self.rate);
        *tokens = 0.0;
        *last = now + wait;
        wait
    }
}

/// A volunteer's sharing: what it serves, how it fetches, and its cache limit.
pub struct Sharing {
    pub seeds: Arc<Seeds>,
    pub options: ShareOptions,
    /// `CACHE/chunks-received.log`: one line per blob fetched in chunks, saying who sent how many.
    pub log: PathBuf,
}

impl Sharing {
    /// A fetcher for one job version from `owner`, telling the owner where this volunteer listens.
    pub async fn fetcher<'a>(
        &'a self,
        client: &'a Client,
        store: &'a BlobStore,
        owner: PeerId,
        manifest: BlobHash,
    ) -> super::swarm::SwarmFetch<'a> {
        let listen = if self.options.no_share {
            Vec::new()
        } else {
            let addrs = client.listen_addrs().await.unwrap_or_default();
            addrs.into_iter().filter(|a| !is_unspecified(a)).collect()
        };
        super::swarm::SwarmFetch::new(client, &self.seeds, store, owner, manifest, listen, self.log.clone())
    }

    /// Serves a job version laid out before (a layout found in the cache) once its manifest is known again.
    pub async fn remember_job(&self, store: &BlobStore, manifest: BlobHash, owner: PeerId) {
        if self.options.no_share || lock(&self.seeds.jobs).0.contains_key(&manifest) || !store.contains(&manifest) {
            return;
        }
        let path = store.path(&manifest);
        let read = tokio::task::spawn_blocking(move || super::project::read_manifest(&path)).await;
        if let Ok(Ok(read)) = read {
            self.seeds.add_job(manifest, owner, &read);
        }
    }

    /// Marks the job's blobs used and keeps the cache within `--cache-size`.
    pub async fn after_fetch(&self, store: &BlobStore, version: BlobHash, manifest: &JobManifest) {
        let mut keep: std::collections::HashSet<BlobHash> = manifest.all_files().map(|f| f.hash).collect();
        keep.insert(version);
        keep.extend(self.seeds.partial_hashes());
        let (dir, limit) = (store.dir().to_path_buf(), self.options.cache_size);
        let _ = tokio::task::spawn_blocking(move || {
            let used: Vec<BlobHash> = keep.iter().copied().collect();
            super::cache::touch(&dir, &used);
            if limit > 0 {
                super::cache::evict(&dir, limit, &keep);
            }
        })
        .await;
    }
}

fn is_unspecified(addr: &libp2p::Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_go_only_to_ticket_holders_of_a_job_listing_the_blob() {
        use crate::protocol::{FileKind, ProjectFile};
        let dir = tempfile::tempdir().unwrap();
        let seeds = Seeds::new(Arc::new(BlobStore::open(dir.path()).unwrap()), &ShareOptions::default());
        let (owner, stranger) =
            (libp2p::identity::Keypair::generate_ed25519(), libp2p::identity::Keypair::generate_ed25519());
        let owner_id = owner.public().to_peer_id();
        let file = |name: &str, size| ProjectFile {
            path: format!("/p/{name}"),
            hash: BlobHash::of_bytes(name.as_bytes()),
            size,
            kind: FileKind::Other,
        };
        let (blend, other) = (file("a.blend", 5_000_000), file("b.png", 7));
        let manifest = JobManifest { blend: blend.clone(), files: vec![], missing: vec![] };
        let version = BlobHash::of_bytes(b"version");
        seeds.add_job(version, owner_id, &manifest);
        let (peer, now) = (PeerId::random(), now_ms());

        let ticket = Ticket::sign(&owner, version, peer, now).unwrap();
        assert_eq!(seeds.authorize(peer, &blend.hash, &ticket), Ok(5_000_000));
        // Not a file of that job; another peer's ticket; a ticket signed by someone else; another job version.
        assert!(seeds.authorize(peer, &other.hash, &ticket).is_err());
        assert!(seeds.authorize(PeerId::random(), &blend.hash, &ticket).is_err());
        let forged = Ticket::sign(&stranger, version, peer, now).unwrap();
        assert!(seeds.authorize(peer, &blend.hash, &forged).unwrap_err().contains("not by the job's owner"));
        let elsewhere = Ticket::sign(&owner, BlobHash::of_bytes(b"other version"), peer, now).unwrap();
        assert!(seeds.authorize(peer, &blend.hash, &elsewhere).is_err());
        // What it holds: nothing yet, then the chunks verified so far.
        assert_eq!(seeds.held(&blend.hash, 5_000_000).count(), 0);
        let partial = Arc::new(Partial { path: dir.path().join("p"), size: 5_000_000, have: Bitfield::new(5).into() });
        lock(&partial.have).set(3);
        seeds.start_partial(blend.hash, partial);
        assert_eq!(seeds.held(&blend.hash, 5_000_000).ones().collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn the_upload_limit_holds_over_time() {
        let bucket = TokenBucket::new(1_000_000);
        let start = Instant::now();
        let mut state = (bucket.burst, start);
        let mut now = start;
        // 10 MB at 1 MB/s in 100 KB pieces, sent as soon as allowed: 10 s less the quarter-second burst.
        for _ in 0..100 {
            now += bucket.debit(&mut state, now, 100_000);
        }
        let took = now.duration_since(start).as_secs_f64();
        assert!((took - 9.75).abs() < 0.01, "took {took} s");
        // An idle bucket refills only up to its burst.
        let later = now + Duration::from_secs(60);
        assert_eq!(bucket.debit(&mut state, later, 250_000), Duration::ZERO);
        assert!(bucket.debit(&mut state, later, 100_000) >= Duration::from_millis(99));
    }
}
