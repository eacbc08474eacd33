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

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use futures::{future::BoxFuture, stream::FuturesUnordered, AsyncReadExt, FutureExt, StreamExt};
use libp2p::{Multiaddr, PeerId};
use tokio::time::{Duration, Instant};
use tracing::{debug, info, warn};

use super::seed::{Partial, Seeds};
use crate::{
    net::{Client, NetError},
    protocol::{
        chunk_count, chunk_len, read_header_max, write_header_max, Bitfield, BlobHash, ChunkReply, ChunkRequest,
        Ticket, CHUNK_PROTOCOL, CHUNK_SIZE, MAX_CHUNK_HEADER,
    },
    store::blobs::{persist, BlobStore, STALL_TIMEOUT},
};

/// How long to wait for a reply header.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the owner is asked again for the job's volunteers while a blob is fetched.
const SWARM_REFRESH: Duration = Duration::from_secs(2);
/// How often a peer is asked again which chunks it holds, when it held none this volunteer lacks.
const HAVE_REFRESH: Duration = Duration::from_millis(300);
/// How long a fetch waits for the known peers' first answers before it asks the owner anyway.
const FIRST_ANSWERS: Duration = Duration::from_secs(1);
/// Requests in flight to the owner at once, per blob.
const OWNER_PARALLEL: usize = 2;
/// Failed exchanges in a row after which a peer is dropped for the blob (a busy peer drops streams it cannot
/// accept at once, so one failure proves little).
const PEER_FAILURES: u32 = 6;
/// How long a peer whose exchange failed is left alone.
const PEER_PAUSE: Duration = Duration::from_millis(250);
/// Failed exchanges with the owner, in a row, after which the blob's chunked fetch is given up.
const OWNER_FAILURES: u32 = 20;
/// Attempts at the owner's ticket and chunk list.
const ATTEMPTS: u32 = 6;

/// What the owner said about a job version.
#[derive(Clone)]
struct SwarmInfo {
    ticket: Ticket,
    peers: Vec<(PeerId, Vec<Multiaddr>)>,
}

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

/// A chunk's index and bytes, as received (not yet verified).
type Chunk = (usize, Vec<u8>);

enum Source {
    Owner,
    Peer(PeerId),
}

enum Outcome {
    Swarm(anyhow::Result<SwarmInfo>),
    Have(anyhow::Result<Bitfield>),
    /// The index asked for (none when the owner chooses), and what came.
    Chunk(Option<usize>, anyhow::Result<Option<Chunk>>),
}

#[derive(Default)]
struct PeerState {
    addrs: Vec<Multiaddr>,
    bits: Option<Bitfield>,
    asked: Option<Instant>,
    busy: bool,
    failures: u32,
    dropped: bool,
    /// Not asked again before this, after a failure.
    paused_until: Option<Instant>,
    received: u32,
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

    /// The main loop: requests in flight to peers and the owner until every chunk is in. Returns the chunks the
    /// owner sent and those each peer sent.
    async fn run(
        &self,
        hash: BlobHash,
        list: &[BlobHash],
        partial: &Partial,
        info: SwarmInfo,
    ) -> anyhow::Result<(u32, Vec<(PeerId, u32)>)> {
        let count = list.len();
        let mut have = Bitfield::new(count);
        let mut inflight = vec![false; count];
        let mut peers: HashMap<PeerId, PeerState> = HashMap::new();
        let mut ticket = info.ticket.clone();
        merge_peers(&mut peers, &info, self.client.peer_id());
        let (mut owner_busy, mut owner_failures, mut owner_chunks) = (0usize, 0u32, 0u32);
        let mut refreshing = false;
        let mut refreshed = Instant::now();
        let offset = self.client.peer_id().to_bytes().iter().map(|b| *b as usize).sum::<usize>();
        let started = Instant::now();
        let mut pending: FuturesUnordered<BoxFuture<'_, (Source, Outcome)>> = FuturesUnordered::new();
        while have.count() < count {
            // Peers: the rarest chunk each holds that is still needed, else ask it again what it holds.
            let availability = availability(&peers, count);
            let now = Instant::now();
            let ready = |p: &PeerState| !p.busy && !p.dropped && p.paused_until.is_none_or(|t| t <= now);
            for (id, peer) in peers.iter_mut().filter(|(_, p)| ready(p)) {
                let pick = peer.bits.as_ref().and_then(|bits| {
                    (0..count)
                        .filter(|&c| bits.get(c) && !have.get(c) && !inflight[c])
                        .min_by_key(|&c| (availability[c], (c + offset) % count))
                });
                let (id, addrs) = (*id, peer.addrs.clone());
                if let Some(c) = pick {
                    inflight[c] = true;
                    peer.busy = true;
                    let request = ChunkRequest::Get { blob: hash, index: c as u32, ticket: ticket.clone() };
                    let fut = self.ask_peer(id, addrs, request, count, size_of(partial.size, c));
                    pending.push(fut.map(move |o| (Source::Peer(id), Outcome::Chunk(Some(c), o.map(|r| r.1)))).boxed());
                } else if peer.asked.is_none_or(|at| at.elapsed() >= HAVE_REFRESH) {
                    peer.busy = true;
                    peer.asked = Some(Instant::now());
                    let request = ChunkRequest::Have { blob: hash, ticket: ticket.clone() };
                    let fut = self.ask_peer(id, addrs, request, count, 0);
                    pending.push(fut.map(move |o| (Source::Peer(id), Outcome::Have(o.map(|r| r.0)))).boxed());
                }
            }
            // The owner: chunks no peer is known to hold; anything still missing when nothing else is under way.
            let availability = self::availability(&peers, count);
            // Until every known peer said what it holds (or a moment passed), the owner is not asked: it would
            // send what a peer has.
            let waiting = peers.values().any(|p| p.bits.is_none() && !p.dropped && p.failures == 0);
            let owner_open = !waiting || started.elapsed() >= FIRST_ANSWERS;
            while owner_open && owner_busy < OWNER_PARALLEL {
                let mut want = Bitfield::new(count);
                (0..count).filter(|&c| !have.get(c) && !inflight[c] && availability[c] == 0).for_each(|c| want.set(c));
                if want.count() == 0 && pending.is_empty() {
                    (0..count).filter(|&c| !have.get(c) && !inflight[c]).for_each(|c| want.set(c));
                }
                if want.count() == 0 {
                    break;
                }
                owner_busy += 1;
                let request = ChunkRequest::AnyOf { blob: hash, want: want.to_wire() };
                let fut = self.ask_owner_chunk(request, partial.size, count);
                pending.push(fut.map(|o| (Source::Owner, Outcome::Chunk(None, o))).boxed());
            }
            if !refreshing && refreshed.elapsed() >= SWARM_REFRESH {
                refreshing = true;
                pending.push(async { (Source::Owner, Outcome::Swarm(self.swarm_info(true).await)) }.boxed());
            }
            let next = tokio::select! {
                next = pending.next(), if !pending.is_empty() => next,
                _ = tokio::time::sleep(HAVE_REFRESH) => None,
            };
            let Some((source, outcome)) = next else { continue };
            match (source, outcome) {
                (_, Outcome::Swarm(result)) => {
                    refreshing = false;
                    refreshed = Instant::now();
                    match result {
                        Ok(info) => {
                            ticket = info.ticket.clone();
                            merge_peers(&mut peers, &info, self.client.peer_id());
                        }
                        Err(e) => debug!("could not refresh the job's volunteers: {e:#}"),
                    }
                }
                (Source::Peer(id), Outcome::Have(result)) => {
                    let Some(peer) = peers.get_mut(&id) else { continue };
                    peer.busy = false;
                    match result {
                        Ok(bits) => {
                            peer.bits = Some(bits);
                            peer.failures = 0;
                        }
                        Err(e) => peer_failed(peer, id, &e),
                    }
                }
                (Source::Peer(id), Outcome::Chunk(asked, result)) => {
                    let Some(peer) = peers.get_mut(&id) else { continue };
                    peer.busy = false;
                    if let Some(c) = asked {
                        inflight[c] = false;
                    }
                    match result {
                        Ok(Some((c, bytes))) if Some(c) == asked => {
                            if have.get(c) {
                                // The owner sent it meanwhile.
                                continue;
                            }
                            if BlobHash::of_bytes(&bytes) != list[c] {
                                warn!(
                                    "volunteer {id} sent a corrupt chunk {c} of blob {}: dropped as a source of it",
                                    hash.short()
                                );
                                self.client.budgets().strike(id);
                                peer.dropped = true;
                                continue;
                            }
                            write_chunk(partial, c, bytes).await?;
                            have.set(c);
                            lock(&partial.have).set(c);
                            peer.received += 1;
                            peer.failures = 0;
                            if let Some(bits) = peer.bits.as_mut() {
                                bits.set(c);
                            }
                        }
                        // It no longer has it (evicted, or asked for what it lacks): ask it again what it holds.
                        Ok(_) => peer.bits = None,
                        Err(e) => peer_failed(peer, id, &e),
                    }
                }
                (Source::Owner, Outcome::Chunk(_, result)) => {
                    owner_busy -= 1;
                    match result {
                        Ok(Some((c, bytes))) => {
                            owner_failures = 0;
                            if have.get(c) {
                                continue;
                            }
                            if BlobHash::of_bytes(&bytes) != list[c] {
                                anyhow::bail!("the owner sent a corrupt chunk {c} of blob {}", hash.short());
                            }
                            write_chunk(partial, c, bytes).await?;
                            have.set(c);
                            lock(&partial.have).set(c);
                            owner_chunks += 1;
                        }
                        Ok(None) => {
                            owner_failures += 1;
                            if owner_failures >= OWNER_FAILURES {
                                anyhow::bail!("the owner no longer serves blob {}", hash.short());
                            }
                        }
                        Err(e) => {
                            owner_failures += 1;
                            debug!("chunk request to the owner failed: {e:#}");
                            if owner_failures >= OWNER_FAILURES {
                                return Err(e.context(format!("the owner did not send blob {}", hash.short())));
                            }
                        }
                    }
                }
                (Source::Owner, Outcome::Have(_)) => {}
            }
        }
        let from_peers = peers.iter().filter(|(_, p)| p.received > 0).map(|(id, p)| (*id, p.received)).collect();
        Ok((owner_chunks, from_peers))
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

    async fn ask_swarm(&self) -> anyhow::Result<SwarmInfo> {
        let addrs = self.listen.iter().map(|a| a.to_vec()).collect();
        let request = ChunkRequest::Swarm { manifest: self.manifest, addrs };
        let mut stream = self.open(self.owner, &[]).await?;
        write_header_max(&mut stream, &request, MAX_CHUNK_HEADER).await?;
        let info = match reply(&mut stream).await? {
            ChunkReply::Swarm { ticket, peers } => {
                SwarmInfo { ticket, peers: peers.iter().filter_map(|p| p.decode()).collect() }
            }
            other => anyhow::bail!("the owner gave no ticket: {}", shown(&other)),
        };
        Ok(info)
    }

    /// The blob's chunk list, from the owner.
    async fn chunk_list(&self, hash: BlobHash, size: u64) -> anyhow::Result<Vec<BlobHash>> {
        retried(|| self.ask_list(hash, size)).await
    }

    async fn ask_list(&self, hash: BlobHash, size: u64) -> anyhow::Result<Vec<BlobHash>> {
        let mut stream = self.open(self.owner, &[]).await?;
        write_header_max(&mut stream, &ChunkRequest::List { blob: hash }, MAX_CHUNK_HEADER).await?;
        let count = match reply(&mut stream).await? {
            ChunkReply::List { count } => u64::from(count),
            other => anyhow::bail!("the owner sent no chunk list for blob {}: {}", hash.short(), shown(&other)),
        };
        if count != chunk_count(size) {
            anyhow::bail!("the owner lists {count} chunks for a {size}-byte blob");
        }
        let mut bytes = vec![0u8; count as usize * 32];
        tokio::time::timeout(STALL_TIMEOUT, stream.read_exact(&mut bytes)).await??;
        Ok(bytes.chunks_exact(32).map(|c| BlobHash(c.try_into().unwrap_or([0; 32]))).collect())
    }

    async fn open(&self, peer: PeerId, addrs: &[Multiaddr]) -> anyhow::Result<libp2p::Stream> {
        if !addrs.is_empty() {
            self.client.dial(peer, addrs.to_vec()).await?;
        }
        Ok(self.client.open_stream(peer, CHUNK_PROTOCOL).await?)
    }

    /// One exchange with another volunteer: a bitfield for `Have`, the chunk for `Get` (`None`: it lacks it).
    fn ask_peer(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: ChunkRequest,
        count: usize,
        expected: u64,
    ) -> BoxFuture<'_, anyhow::Result<(Bitfield, Option<Chunk>)>> {
        async move {
            let mut stream = self.open(peer, &addrs).await?;
            write_header_max(&mut stream, &request, MAX_CHUNK_HEADER).await?;
            match reply(&mut stream).await? {
                ChunkReply::Have { bits } => Ok((Bitfield::from_wire(&bits, count), None)),
                ChunkReply::Chunk { index, size } if u64::from(size) == expected => {
                    let bytes = read_body(&mut stream, size).await?;
                    Ok((Bitfield::new(0), Some((index as usize, bytes))))
                }
                ChunkReply::Missing => Ok((Bitfield::new(0), None)),
                other => anyhow::bail!("{}", shown(&other)),
            }
        }
        .boxed()
    }

    /// Asks the owner for any chunk among those in `request`; `None`: it has none of them to give.
    fn ask_owner_chunk(
        &self,
        request: ChunkRequest,
        size: u64,
        count: usize,
    ) -> BoxFuture<'_, anyhow::Result<Option<Chunk>>> {
        async move {
            let mut stream = self.open(self.owner, &[]).await?;
            write_header_max(&mut stream, &request, MAX_CHUNK_HEADER).await?;
            match reply(&mut stream).await? {
                ChunkReply::Chunk { index, size: len }
                    if (index as usize) < count && u64::from(len) == size_of(size, index as usize) =>
                {
                    Ok(Some((index as usize, read_body(&mut stream, len).await?)))
                }
                ChunkReply::Missing => Ok(None),
                other => anyhow::bail!("the owner answered {}", shown(&other)),
            }
        }
        .boxed()
    }
}

/// Runs an exchange with the owner up to [`ATTEMPTS`] times: a node accepting many streams at once drops some
/// (libp2p-stream keeps no backlog), which is worth another try.
async fn retried<T, F, Fut>(mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if tries < ATTEMPTS && !matches!(e.downcast_ref(), Some(NetError::Unsupported { .. })) => {
                debug!("chunk exchange with the owner failed ({e:#}); trying again");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(tries))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn size_of(size: u64, index: usize) -> u64 {
    chunk_len(size, index as u64)
}

fn merge_peers(peers: &mut HashMap<PeerId, PeerState>, info: &SwarmInfo, me: PeerId) {
    for (id, addrs) in &info.peers {
        if *id == me || addrs.is_empty() {
            // One that cannot be dialled fetches from us instead.
            continue;
        }
        peers.entry(*id).or_default().addrs = addrs.clone();
    }
}

/// How many usable peers are known to hold each chunk.
fn availability(peers: &HashMap<PeerId, PeerState>, count: usize) -> Vec<u32> {
    let mut counts = vec![0u32; count];
    for bits in peers.values().filter(|p| !p.dropped).filter_map(|p| p.bits.as_ref()) {
        bits.ones().for_each(|c| counts[c] += 1);
    }
    counts
}

fn peer_failed(peer: &mut PeerState, id: PeerId, e: &anyhow::Error) {
    if matches!(e.downcast_ref(), Some(NetError::Unsupported { .. })) {
        // An older build: it never will.
        peer.dropped = true;
    }
    peer.failures += 1;
    peer.paused_until = Some(Instant::now() + PEER_PAUSE);
    debug!(%id, "chunk exchange failed: {e:#}");
    if peer.failures >= PEER_FAILURES {
        debug!(%id, "dropped as a source after {PEER_FAILURES} failures");
        peer.dropped = true;
    }
}

async fn reply(stream: &mut libp2p::Stream) -> anyhow::Result<ChunkReply> {
    let header = tokio::time::timeout(REPLY_TIMEOUT, read_header_max(stream, MAX_CHUNK_HEADER)).await;
    Ok(header.map_err(|_| anyhow::anyhow!("no answer within {} s", REPLY_TIMEOUT.as_secs()))??)
}

async fn read_body(stream: &mut libp2p::Stream, size: u32) -> anyhow::Result<Vec<u8>> {
    if u64::from(size) > CHUNK_SIZE {
        anyhow::bail!("a chunk of {size} bytes is over the limit");
    }
    let mut bytes = vec![0u8; size as usize];
    tokio::time::timeout(STALL_TIMEOUT, stream.read_exact(&mut bytes)).await??;
    Ok(bytes)
}

/// A reply, for an error message: it comes from the network.
fn shown(reply: &ChunkReply) -> String {
    crate::protocol::one_line(&format!("{reply:?}"), crate::protocol::MAX_LOGGED_TEXT)
}

async fn write_chunk(partial: &Partial, index: usize, bytes: Vec<u8>) -> anyhow::Result<()> {
    let path = partial.path.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::{Seek, Write};
        let mut file = std::fs::File::options().write(true).open(&path)?;
        file.seek(std::io::SeekFrom::Start(index as u64 * CHUNK_SIZE))?;
        file.write_all(&bytes)
    })
    .await??;
    Ok(())
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

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
