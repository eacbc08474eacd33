//! The exchanges of a chunked fetch on [`CHUNK_PROTOCOL`] streams: the owner's ticket and volunteers, a blob's
//! chunk list, and single chunks or bitfields from the owner or another volunteer. Each is one stream, one request
//! header and one reply; a reply is checked against the request before its body is read.

use futures::{future::BoxFuture, AsyncReadExt, FutureExt};
use libp2p::{Multiaddr, PeerId};
use tokio::time::Duration;
use tracing::debug;

use super::{plan::Chunk, SwarmFetch};
use crate::{
    net::NetError,
    protocol::{
        chunk_count, chunk_len, read_header_max, write_header_max, Bitfield, BlobHash, ChunkReply, ChunkRequest,
        Ticket, CHUNK_PROTOCOL, CHUNK_SIZE, MAX_CHUNK_HEADER,
    },
    store::blobs::STALL_TIMEOUT,
};

/// How long to wait for a reply header.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at the owner's ticket and chunk list.
const ATTEMPTS: u32 = 6;

/// What the owner said about a job version.
#[derive(Clone)]
pub(super) struct SwarmInfo {
    pub(super) ticket: Ticket,
    pub(super) peers: Vec<(PeerId, Vec<Multiaddr>)>,
}

impl SwarmFetch<'_> {
    /// Asks the owner, once, for a ticket and the job's other volunteers, telling it where this one listens.
    pub(super) async fn ask_swarm(&self) -> anyhow::Result<SwarmInfo> {
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

    /// Asks the owner, once, for the blob's chunk list; its length must fit `size`.
    pub(super) async fn ask_list(&self, hash: BlobHash, size: u64) -> anyhow::Result<Vec<BlobHash>> {
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

    /// A chunk stream to `peer`, dialled at `addrs` first when any are given.
    async fn open(&self, peer: PeerId, addrs: &[Multiaddr]) -> anyhow::Result<libp2p::Stream> {
        if !addrs.is_empty() {
            self.client.dial(peer, addrs.to_vec()).await?;
        }
        Ok(self.client.open_stream(peer, CHUNK_PROTOCOL).await?)
    }

    /// One exchange with another volunteer: a bitfield for `Have`, the chunk for `Get` (`None`: it lacks it).
    pub(super) fn ask_peer(
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
    pub(super) fn ask_owner_chunk(
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
pub(super) async fn retried<T, F, Fut>(mut attempt: F) -> anyhow::Result<T>
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
                tokio::time::sleep(super::super::frame::retry_pause(tries)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The length of chunk `index` of a `size`-byte blob.
pub(super) fn size_of(size: u64, index: usize) -> u64 {
    chunk_len(size, index as u64)
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
