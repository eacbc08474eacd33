//! The loop of one blob's chunked fetch: it sends the requests the [`FetchPlan`] picks, one per peer and a few to
//! the owner, checks every chunk that arrives against the chunk list, writes it into the temp file (which other
//! volunteers can already fetch it from) and reports each outcome back to the plan, until every chunk is in.

use futures::{future::BoxFuture, stream::FuturesUnordered, FutureExt, StreamExt};
use libp2p::PeerId;
use tokio::time::{Duration, Instant};
use tracing::{debug, warn};

use super::{
    exchange::{size_of, SwarmInfo},
    plan::{Chunk, FetchPlan, PeerAsk, HAVE_REFRESH},
    SwarmFetch, SWARM_REFRESH,
};
use crate::{
    protocol::{Bitfield, BlobHash, ChunkRequest, CHUNK_SIZE},
    worker::seed::Partial,
};

/// How long a fetch waits for the known peers' first answers before it asks the owner anyway.
const FIRST_ANSWERS: Duration = Duration::from_secs(1);

/// Who a request went to.
enum Source {
    Owner,
    Peer(PeerId),
}

/// What came back from a request.
enum Outcome {
    Swarm(anyhow::Result<SwarmInfo>),
    Have(anyhow::Result<Bitfield>),
    /// The index asked for (none when the owner chooses), and what came.
    Chunk(Option<usize>, anyhow::Result<Option<Chunk>>),
}

impl SwarmFetch<'_> {
    /// The main loop: requests in flight to peers and the owner until every chunk is in. Returns the chunks the
    /// owner sent and those each peer sent.
    pub(super) async fn run(
        &self,
        hash: BlobHash,
        list: &[BlobHash],
        partial: &Partial,
        info: SwarmInfo,
    ) -> anyhow::Result<(u32, Vec<(PeerId, u32)>)> {
        let count = list.len();
        let mut plan = FetchPlan::new(count, self.client.peer_id());
        let mut ticket = info.ticket.clone();
        plan.merge_peers(&info.peers);
        let mut refreshing = false;
        let mut refreshed = Instant::now();
        let started = Instant::now();
        let mut pending: FuturesUnordered<BoxFuture<'_, (Source, Outcome)>> = FuturesUnordered::new();
        while !plan.is_complete() {
            // Peers: the rarest chunk each holds that is still needed, else ask it again what it holds.
            for (id, addrs, ask) in plan.peer_asks(Instant::now()) {
                match ask {
                    PeerAsk::Get(c) => {
                        let request = ChunkRequest::Get { blob: hash, index: c as u32, ticket: ticket.clone() };
                        let fut = self.ask_peer(id, addrs, request, count, size_of(partial.size, c));
                        let outcome = move |o: anyhow::Result<(Bitfield, Option<Chunk>)>| {
                            (Source::Peer(id), Outcome::Chunk(Some(c), o.map(|r| r.1)))
                        };
                        pending.push(fut.map(outcome).boxed());
                    }
                    PeerAsk::Have => {
                        let request = ChunkRequest::Have { blob: hash, ticket: ticket.clone() };
                        let fut = self.ask_peer(id, addrs, request, count, 0);
                        pending.push(fut.map(move |o| (Source::Peer(id), Outcome::Have(o.map(|r| r.0)))).boxed());
                    }
                }
            }
            // The owner: chunks no peer is known to hold; anything still missing when nothing else is under way.
            // Until every known peer said what it holds (or a moment passed), the owner is not asked: it would
            // send what a peer has.
            if !plan.awaits_first_answers() || started.elapsed() >= FIRST_ANSWERS {
                while let Some(want) = plan.owner_ask(pending.is_empty()) {
                    let request = ChunkRequest::AnyOf { blob: hash, want: want.to_wire() };
                    let fut = self.ask_owner_chunk(request, partial.size, count);
                    pending.push(fut.map(|o| (Source::Owner, Outcome::Chunk(None, o))).boxed());
                }
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
                            plan.merge_peers(&info.peers);
                        }
                        Err(e) => debug!("could not refresh the job's volunteers: {e:#}"),
                    }
                }
                (Source::Peer(id), Outcome::Have(result)) => plan.have_answered(id, result, Instant::now()),
                (Source::Peer(id), Outcome::Chunk(asked, result)) => {
                    let Some((c, bytes)) = plan.chunk_answered(id, asked, result, Instant::now()) else { continue };
                    if BlobHash::of_bytes(&bytes) != list[c] {
                        warn!(
                            "volunteer {id} sent a corrupt chunk {c} of blob {}: dropped as a source of it",
                            hash.short()
                        );
                        self.client.budgets().strike(id);
                        plan.drop_peer(id);
                        continue;
                    }
                    write_chunk(partial, c, bytes).await?;
                    plan.got_from_peer(id, c);
                    lock(&partial.have).set(c);
                }
                (Source::Owner, Outcome::Chunk(_, result)) => {
                    plan.owner_answered();
                    match result {
                        Ok(Some((c, bytes))) => {
                            plan.owner_served();
                            if plan.has(c) {
                                continue;
                            }
                            if BlobHash::of_bytes(&bytes) != list[c] {
                                anyhow::bail!("the owner sent a corrupt chunk {c} of blob {}", hash.short());
                            }
                            write_chunk(partial, c, bytes).await?;
                            plan.got_from_owner(c);
                            lock(&partial.have).set(c);
                        }
                        Ok(None) => {
                            if plan.owner_failed() {
                                anyhow::bail!("the owner no longer serves blob {}", hash.short());
                            }
                        }
                        Err(e) => {
                            let give_up = plan.owner_failed();
                            debug!("chunk request to the owner failed: {e:#}");
                            if give_up {
                                return Err(e.context(format!("the owner did not send blob {}", hash.short())));
                            }
                        }
                    }
                }
                (Source::Owner, Outcome::Have(_)) => {}
            }
        }
        Ok(plan.counts())
    }
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

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
