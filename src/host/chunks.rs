//! The owner's side of the chunk protocol (`protocol::chunks`): tickets and peer lists for a job's volunteers,
//! chunk lists of its large files, and chunks, each chunk sent once before any is sent twice.
//!
//! Everything here goes only to a peer holding a lease on a frame of a job that lists the blob, asked of the event
//! loop exactly as for whole blobs (`BlobServer::may_fetch`). A chunk list is computed on a blocking thread the
//! first time it is asked for, from the served file, whose whole sha256 must still be the blob's name; each chunk is
//! hashed again before it is sent, so a file changed since then is never sent under the old name.

use std::{
    collections::HashMap,
    io::SeekFrom,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures::AsyncWriteExt;
use libp2p::{identity::Keypair, PeerId, Stream};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::debug;

use super::blobs::{BlobServer, NOT_GRANTED};
use crate::{
    net::{Client, PeerBudgets},
    protocol::{
        chunk_count, chunk_len, write_header_max, Bitfield, BlobHash, ChunkReply, ChunkRequest, SwarmPeer, Ticket,
        CHUNK_PROTOCOL, CHUNK_SIZE, MAX_CHUNK_HEADER, MAX_PEER_ADDRS, MAX_SWARM_PEERS,
    },
};

/// A volunteer not heard of for this long is no longer named to others (they ask again every few seconds while
/// they fetch).
const PEER_MEMORY: Duration = Duration::from_secs(600);

/// A volunteer of a job version: the addresses it listens on (multiaddr bytes) and when it last asked.
type Member = (Vec<Vec<u8>>, Instant);

#[derive(Clone)]
pub struct ChunkServer {
    inner: Arc<Inner>,
}

struct Inner {
    blobs: BlobServer,
    key: Keypair,
    /// Chunk lists computed so far, by blob.
    lists: Mutex<HashMap<BlobHash, Arc<Vec<BlobHash>>>>,
    /// One list computed at a time: a second asker waits and finds it done.
    computing: tokio::sync::Mutex<()>,
    /// Per blob, how often each chunk was sent (counted when chosen, given back when the send fails).
    sent: Mutex<HashMap<BlobHash, Vec<u32>>>,
    /// Per job version (manifest hash), the volunteers that asked for its swarm: their addresses and when.
    swarms: Mutex<HashMap<BlobHash, HashMap<PeerId, Member>>>,
    bytes_sent: AtomicU64,
}

impl ChunkServer {
    pub fn new(blobs: BlobServer, key: Keypair) -> Self {
        Self {
            inner: Arc::new(Inner {
                blobs,
                key,
                lists: Mutex::default(),
                computing: tokio::sync::Mutex::new(()),
                sent: Mutex::default(),
                swarms: Mutex::default(),
                bytes_sent: AtomicU64::new(0),
            }),
        }
    }

    /// Chunk bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.inner.bytes_sent.load(Ordering::Relaxed)
    }

    /// Accepts chunk streams until the network stops; each is charged to its peer's stream budget.
    pub fn spawn(&self, client: &Client) -> anyhow::Result<()> {
        let server = self.clone();
        crate::net::serve_streams(client, CHUNK_PROTOCOL, "chunk", move |budgets, peer, stream| {
            let server = server.clone();
            async move { server.handle(&budgets, peer, stream).await }
        })?;
        Ok(())
    }

    async fn handle(&self, budgets: &PeerBudgets, peer: PeerId, mut stream: Stream) -> anyhow::Result<()> {
        let request = budgets.first_header(peer, &mut stream, MAX_CHUNK_HEADER).await?;
        let (blob, reply) = match request {
            ChunkRequest::Swarm { manifest, addrs } => (manifest, Step::Swarm(addrs)),
            ChunkRequest::List { blob } => (blob, Step::List),
            ChunkRequest::AnyOf { blob, want } => (blob, Step::AnyOf(want)),
            // Owners hold every chunk whole: volunteers ask them with `AnyOf`.
            ChunkRequest::Have { blob, .. } | ChunkRequest::Get { blob, .. } => (blob, Step::NotHere),
        };
        let (path, jobs) = self.inner.blobs.locate(&blob);
        let Some(path) = path else {
            budgets.strike(peer);
            return answer(&mut stream, &ChunkReply::Missing).await;
        };
        if matches!(reply, Step::NotHere) {
            return answer(&mut stream, &ChunkReply::Missing).await;
        }
        if !self.inner.blobs.may_fetch(peer, jobs).await {
            budgets.strike(peer);
            return answer(&mut stream, &ChunkReply::Refused { reason: NOT_GRANTED.into() }).await;
        }
        match reply {
            Step::Swarm(addrs) => {
                let reply = self.swarm(peer, blob, addrs);
                answer(&mut stream, &reply).await
            }
            Step::List => self.send_list(blob, &path, &mut stream).await,
            Step::AnyOf(want) => self.send_any(peer, blob, &path, &want, &mut stream).await,
            Step::NotHere => Ok(()),
        }
    }

    /// Records `peer`'s addresses for `manifest` and answers with its ticket and the job's other volunteers, the
    /// most recently heard first.
    fn swarm(&self, peer: PeerId, manifest: BlobHash, addrs: Vec<Vec<u8>>) -> ChunkReply {
        let now = Instant::now();
        let mut swarms = lock(&self.inner.swarms);
        // Job versions nobody asked about for a while are forgotten.
        swarms.retain(|_, members| members.values().any(|(_, seen)| now.duration_since(*seen) < PEER_MEMORY));
        let members = swarms.entry(manifest).or_default();
        members.retain(|_, (_, seen)| now.duration_since(*seen) < PEER_MEMORY);
        members.insert(peer, (addrs.into_iter().take(MAX_PEER_ADDRS).collect(), now));
        let mut others: Vec<(&PeerId, &Member)> = members.iter().filter(|(p, _)| **p != peer).collect();
        others.sort_by_key(|(_, (_, seen))| std::cmp::Reverse(*seen));
        let peers = others
            .into_iter()
            .take(MAX_SWARM_PEERS)
            .map(|(p, (addrs, _))| SwarmPeer { id: p.to_bytes(), addrs: addrs.clone() })
            .collect();
        match Ticket::sign(&self.inner.key, manifest, peer, now_ms()) {
            Ok(ticket) => ChunkReply::Swarm { ticket, peers },
            Err(e) => ChunkReply::Refused { reason: e.to_string() },
        }
    }

    /// The chunk list of the file at `path`, served as `blob`; computed once, on a blocking thread.
    async fn list(&self, blob: BlobHash, path: &Path) -> anyhow::Result<Arc<Vec<BlobHash>>> {
        if let Some(list) = lock(&self.inner.lists).get(&blob).cloned() {
            return Ok(list);
        }
        let _one = self.inner.computing.lock().await;
        if let Some(list) = lock(&self.inner.lists).get(&blob).cloned() {
            return Ok(list);
        }
        let file = path.to_path_buf();
        let (whole, list) = tokio::task::spawn_blocking(move || chunk_list(&file)).await??;
        if whole != blob {
            anyhow::bail!("{} changed since it was hashed", path.display());
        }
        let list = Arc::new(list);
        lock(&self.inner.lists).insert(blob, list.clone());
        Ok(list)
    }

    async fn send_list(&self, blob: BlobHash, path: &Path, stream: &mut Stream) -> anyhow::Result<()> {
        let list = match self.list(blob, path).await {
            Ok(list) => list,
            Err(e) => {
                debug!("no chunk list for {}: {e}", blob.short());
                return answer(stream, &ChunkReply::Missing).await;
            }
        };
        write_header_max(stream, &ChunkReply::List { count: list.len() as u32 }, MAX_CHUNK_HEADER).await?;
        let bytes: Vec<u8> = list.iter().flat_map(|h| h.0).collect();
        stream.write_all(&bytes).await?;
        stream.close().await?;
        Ok(())
    }

    async fn send_any(
        &self,
        peer: PeerId,
        blob: BlobHash,
        path: &Path,
        want: &[u8],
        stream: &mut Stream,
    ) -> anyhow::Result<()> {
        let list = match self.list(blob, path).await {
            Ok(list) => list,
            Err(_) => return answer(stream, &ChunkReply::Missing).await,
        };
        let want = Bitfield::from_wire(want, list.len());
        let chosen = {
            let mut sent = lock(&self.inner.sent);
            let counts = sent.entry(blob).or_insert_with(|| vec![0; list.len()]);
            let chosen = least_sent(counts, &want);
            if let Some(index) = chosen {
                counts[index] += 1;
            }
            chosen
        };
        let Some(index) = chosen else {
            return answer(stream, &ChunkReply::Missing).await;
        };
        let sent = self.send_chunk(&list, path, index, stream).await;
        if sent.is_err() {
            if let Some(count) = lock(&self.inner.sent).get_mut(&blob).and_then(|c| c.get_mut(index)) {
                *count = count.saturating_sub(1);
            }
        } else {
            debug!(%peer, "sent chunk {index} of {}", blob.short());
        }
        sent
    }

    async fn send_chunk(
        &self,
        list: &[BlobHash],
        path: &Path,
        index: usize,
        stream: &mut Stream,
    ) -> anyhow::Result<()> {
        let size = tokio::fs::metadata(path).await?.len();
        let bytes = read_chunk(path, size, index as u64).await?;
        if BlobHash::of_bytes(&bytes) != list[index] {
            // The file changed under its name: forget the list; the volunteer fails the blob and asks again.
            lock(&self.inner.lists).retain(|_, l| !std::ptr::eq(l.as_slice(), list));
            return answer(stream, &ChunkReply::Missing).await;
        }
        let reply = ChunkReply::Chunk { index: index as u32, size: bytes.len() as u32 };
        write_header_max(stream, &reply, MAX_CHUNK_HEADER).await?;
        stream.write_all(&bytes).await?;
        stream.close().await?;
        self.inner.bytes_sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

enum Step {
    Swarm(Vec<Vec<u8>>),
    List,
    AnyOf(Vec<u8>),
    NotHere,
}

async fn answer(stream: &mut Stream, reply: &ChunkReply) -> anyhow::Result<()> {
    write_header_max(stream, reply, MAX_CHUNK_HEADER).await?;
    stream.close().await?;
    Ok(())
}

/// Of the chunks in `want`, the one sent least often so far (the lowest index among equals).
pub fn least_sent(counts: &[u32], want: &Bitfield) -> Option<usize> {
    want.ones().filter(|&i| i < counts.len()).min_by_key(|&i| (counts[i], i))
}

/// Reads chunk `index` of a file of `size` bytes.
pub async fn read_chunk(path: &Path, size: u64, index: u64) -> std::io::Result<Vec<u8>> {
    let len = chunk_len(size, index);
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(SeekFrom::Start(index * CHUNK_SIZE)).await?;
    let mut bytes = vec![0u8; len as usize];
    file.read_exact(&mut bytes).await?;
    Ok(bytes)
}

/// Blocking: the sha256 of the whole file and of each chunk.
pub fn chunk_list(path: &PathBuf) -> std::io::Result<(BlobHash, Vec<BlobHash>)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut whole = Sha256::new();
    let mut list = Vec::with_capacity(chunk_count(size) as usize);
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    for index in 0..chunk_count(size) {
        let len = chunk_len(size, index) as usize;
        file.read_exact(&mut buf[..len])?;
        whole.update(&buf[..len]);
        list.push(BlobHash::of_bytes(&buf[..len]));
    }
    Ok((BlobHash::from_hasher(whole), list))
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_chunk_is_sent_once_before_any_twice() {
        let mut counts = vec![0u32; 5];
        let all = Bitfield::full(5);
        let mut order = Vec::new();
        for _ in 0..7 {
            let i = least_sent(&counts, &all).unwrap();
            counts[i] += 1;
            order.push(i);
        }
        assert_eq!(order, vec![0, 1, 2, 3, 4, 0, 1]);
        let mut some = Bitfield::new(5);
        some.set(3);
        assert_eq!(least_sent(&counts, &some), Some(3));
        assert_eq!(least_sent(&counts, &Bitfield::new(5)), None);
    }

    #[test]
    fn chunk_list_covers_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..(CHUNK_SIZE * 2 + 5)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let (whole, list) = chunk_list(&path).unwrap();
        assert_eq!(whole, BlobHash::of_bytes(&bytes));
        assert_eq!(list.len(), 3);
        assert_eq!(list[2], BlobHash::of_bytes(&bytes[(CHUNK_SIZE * 2) as usize..]));
    }
}
