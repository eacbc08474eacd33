//! Which chunk to ask of whom: the pure part of a chunked fetch. It does no I/O and reads no clock (`now` is an
//! input); the fetch loop sends what it plans and reports what came back.
//!
//! Each peer gets the rarest chunk it holds that is still needed (ties broken by an offset of this volunteer's own,
//! so volunteers start on different chunks), or, when it holds none, is asked again which chunks it holds. The
//! owner is asked for the chunks no usable peer holds, and for anything still missing once nothing else is under
//! way.

use std::collections::HashMap;

use libp2p::{Multiaddr, PeerId};
use tokio::time::{Duration, Instant};
use tracing::debug;

use crate::{net::NetError, protocol::Bitfield};

/// How often a peer is asked again which chunks it holds, when it held none this volunteer lacks.
pub(super) const HAVE_REFRESH: Duration = Duration::from_millis(300);
/// Requests in flight to the owner at once, per blob.
const OWNER_PARALLEL: usize = 2;
/// Failed exchanges with the owner, in a row, after which the blob's chunked fetch is given up.
const OWNER_FAILURES: u32 = 20;
/// Failed exchanges in a row after which a peer is dropped for the blob (a busy peer drops streams it cannot
/// accept at once, so one failure proves little).
const PEER_FAILURES: u32 = 6;
/// How long a peer whose exchange failed is left alone.
const PEER_PAUSE: Duration = Duration::from_millis(250);

/// A chunk's index and bytes, as received (not yet verified).
pub(super) type Chunk = (usize, Vec<u8>);

/// What this volunteer knows of another volunteer of the job, for one blob.
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

/// A request the fetch loop is to send to a peer.
#[derive(Debug, PartialEq)]
pub(super) enum PeerAsk {
    /// Which chunks do you hold?
    Have,
    /// Send this chunk.
    Get(usize),
}

/// The state of one blob's chunked fetch: the chunks in, those asked for, and every peer's.
pub(super) struct FetchPlan {
    count: usize,
    have: Bitfield,
    /// Chunks asked of a peer and not yet answered (those asked of the owner are not marked: it picks).
    inflight: Vec<bool>,
    peers: HashMap<PeerId, PeerState>,
    /// This volunteer, never a source of its own.
    me: PeerId,
    /// Orders equally rare chunks differently on each volunteer.
    offset: usize,
    owner_busy: usize,
    owner_failures: u32,
    owner_chunks: u32,
}

impl FetchPlan {
    /// A fetch of `count` chunks by the volunteer `me`.
    pub(super) fn new(count: usize, me: PeerId) -> Self {
        let offset = me.to_bytes().iter().map(|b| *b as usize).sum::<usize>();
        Self {
            count,
            have: Bitfield::new(count),
            inflight: vec![false; count],
            peers: HashMap::new(),
            me,
            offset,
            owner_busy: 0,
            owner_failures: 0,
            owner_chunks: 0,
        }
    }

    /// Whether every chunk is in.
    pub(super) fn is_complete(&self) -> bool {
        self.have.count() >= self.count
    }

    pub(super) fn has(&self, index: usize) -> bool {
        self.have.get(index)
    }

    /// Adds the volunteers the owner named, or updates their addresses.
    pub(super) fn merge_peers(&mut self, peers: &[(PeerId, Vec<Multiaddr>)]) {
        for (id, addrs) in peers {
            if *id == self.me || addrs.is_empty() {
                // One that cannot be dialled fetches from us instead.
                continue;
            }
            self.peers.entry(*id).or_default().addrs = addrs.clone();
        }
    }

    /// How many usable peers are known to hold each chunk.
    fn availability(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.count];
        for bits in self.peers.values().filter(|p| !p.dropped).filter_map(|p| p.bits.as_ref()) {
            bits.ones().for_each(|c| counts[c] += 1);
        }
        counts
    }

    /// What to ask each idle peer now, with its addresses: the rarest chunk it holds that is still needed, else
    /// (now and then) which chunks it holds. The peers asked are busy until their answer is reported.
    pub(super) fn peer_asks(&mut self, now: Instant) -> Vec<(PeerId, Vec<Multiaddr>, PeerAsk)> {
        let availability = self.availability();
        let (count, offset) = (self.count, self.offset);
        let mut asks = Vec::new();
        let ready = |p: &PeerState| !p.busy && !p.dropped && p.paused_until.is_none_or(|t| t <= now);
        for (id, peer) in self.peers.iter_mut().filter(|(_, p)| ready(p)) {
            let pick = peer.bits.as_ref().and_then(|bits| {
                (0..count)
                    .filter(|&c| bits.get(c) && !self.have.get(c) && !self.inflight[c])
                    .min_by_key(|&c| (availability[c], (c + offset) % count))
            });
            if let Some(c) = pick {
                self.inflight[c] = true;
                peer.busy = true;
                asks.push((*id, peer.addrs.clone(), PeerAsk::Get(c)));
            } else if peer.asked.is_none_or(|at| now.saturating_duration_since(at) >= HAVE_REFRESH) {
                peer.busy = true;
                peer.asked = Some(now);
                asks.push((*id, peer.addrs.clone(), PeerAsk::Have));
            }
        }
        asks
    }

    /// Whether a known peer has yet to say what it holds: until it has (or a moment passed), the owner is not
    /// asked, since it would send what a peer has.
    pub(super) fn awaits_first_answers(&self) -> bool {
        self.peers.values().any(|p| p.bits.is_none() && !p.dropped && p.failures == 0)
    }

    /// The chunks to ask the owner for next, if it may be asked once more: those no usable peer is known to hold,
    /// or, when `idle` (nothing else under way), any still missing. The owner is busy with it until
    /// [`Self::owner_answered`].
    pub(super) fn owner_ask(&mut self, idle: bool) -> Option<Bitfield> {
        if self.owner_busy >= OWNER_PARALLEL {
            return None;
        }
        let availability = self.availability();
        let missing = |c: &usize| !self.have.get(*c) && !self.inflight[*c];
        let mut want = Bitfield::new(self.count);
        (0..self.count).filter(missing).filter(|&c| availability[c] == 0).for_each(|c| want.set(c));
        if want.count() == 0 && idle {
            (0..self.count).filter(missing).for_each(|c| want.set(c));
        }
        if want.count() == 0 {
            return None;
        }
        self.owner_busy += 1;
        Some(want)
    }

    /// The owner answered one of its requests (with a chunk or not).
    pub(super) fn owner_answered(&mut self) {
        self.owner_busy -= 1;
    }

    /// The owner sent a chunk: its run of failures ends.
    pub(super) fn owner_served(&mut self) {
        self.owner_failures = 0;
    }

    /// The owner sent nothing or failed; true once it failed too often in a row to go on.
    pub(super) fn owner_failed(&mut self) -> bool {
        self.owner_failures += 1;
        self.owner_failures >= OWNER_FAILURES
    }

    /// A verified chunk from the owner is written.
    pub(super) fn got_from_owner(&mut self, index: usize) {
        self.have.set(index);
        self.owner_chunks += 1;
    }

    /// A peer answered `Have` (at `now`).
    pub(super) fn have_answered(&mut self, id: PeerId, result: anyhow::Result<Bitfield>, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else { return };
        peer.busy = false;
        match result {
            Ok(bits) => {
                peer.bits = Some(bits);
                peer.failures = 0;
            }
            Err(e) => peer_failed(peer, id, &e, now),
        }
    }

    /// A peer answered `Get` for chunk `asked` (at `now`). Returns the chunk, to be verified and written, when it is the one
    /// asked for and still needed.
    pub(super) fn chunk_answered(
        &mut self,
        id: PeerId,
        asked: Option<usize>,
        result: anyhow::Result<Option<Chunk>>,
        now: Instant,
    ) -> Option<Chunk> {
        let peer = self.peers.get_mut(&id)?;
        peer.busy = false;
        if let Some(c) = asked {
            self.inflight[c] = false;
        }
        match result {
            // Unless the owner sent it meanwhile.
            Ok(Some((c, bytes))) if Some(c) == asked => (!self.have.get(c)).then_some((c, bytes)),
            // It no longer has it (evicted, or asked for what it lacks): ask it again what it holds.
            Ok(_) => {
                peer.bits = None;
                None
            }
            Err(e) => {
                peer_failed(peer, id, &e, now);
                None
            }
        }
    }

    /// A verified chunk from peer `id` is written.
    pub(super) fn got_from_peer(&mut self, id: PeerId, index: usize) {
        self.have.set(index);
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.received += 1;
            peer.failures = 0;
            if let Some(bits) = peer.bits.as_mut() {
                bits.set(index);
            }
        }
    }

    /// Peer `id` is no source of this blob any more (it sent a corrupt chunk).
    pub(super) fn drop_peer(&mut self, id: PeerId) {
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.dropped = true;
        }
    }

    /// The chunks the owner sent, and those each peer that sent any sent.
    pub(super) fn counts(&self) -> (u32, Vec<(PeerId, u32)>) {
        let from_peers = self.peers.iter().filter(|(_, p)| p.received > 0).map(|(id, p)| (*id, p.received)).collect();
        (self.owner_chunks, from_peers)
    }
}

fn peer_failed(peer: &mut PeerState, id: PeerId, e: &anyhow::Error, now: Instant) {
    if matches!(e.downcast_ref(), Some(NetError::Unsupported { .. })) {
        // An older build: it never will.
        peer.dropped = true;
    }
    peer.failures += 1;
    peer.paused_until = Some(now + PEER_PAUSE);
    debug!(%id, "chunk exchange failed: {e:#}");
    if peer.failures >= PEER_FAILURES {
        debug!(%id, "dropped as a source after {PEER_FAILURES} failures");
        peer.dropped = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> Vec<Multiaddr> {
        vec!["/ip4/10.0.0.9/tcp/7000".parse().unwrap()]
    }

    fn bits(count: usize, ones: &[usize]) -> Bitfield {
        let mut bits = Bitfield::new(count);
        ones.iter().for_each(|&c| bits.set(c));
        bits
    }

    /// A plan of `count` chunks with peers holding the given chunks (already answered `Have`).
    fn plan_with(count: usize, holdings: &[&[usize]]) -> (FetchPlan, Vec<PeerId>, Instant) {
        let now = Instant::now();
        let mut plan = FetchPlan::new(count, PeerId::random());
        let ids: Vec<PeerId> = holdings.iter().map(|_| PeerId::random()).collect();
        plan.merge_peers(&ids.iter().map(|id| (*id, addr())).collect::<Vec<_>>());
        for (id, ones) in ids.iter().zip(holdings) {
            plan.have_answered(*id, Ok(bits(count, ones)), now);
        }
        (plan, ids, now)
    }

    fn ask_of(asks: &[(PeerId, Vec<Multiaddr>, PeerAsk)], id: PeerId) -> Option<&PeerAsk> {
        asks.iter().find(|(p, _, _)| *p == id).map(|(_, _, ask)| ask)
    }

    #[test]
    fn peers_without_addresses_and_this_volunteer_are_no_sources() {
        let me = PeerId::random();
        let mut plan = FetchPlan::new(4, me);
        let (dialable, hidden) = (PeerId::random(), PeerId::random());
        plan.merge_peers(&[(me, addr()), (hidden, vec![]), (dialable, addr())]);
        let asks = plan.peer_asks(Instant::now());
        assert_eq!(asks.len(), 1);
        assert_eq!(asks[0].0, dialable);
        assert_eq!(asks[0].2, PeerAsk::Have);
    }

    #[test]
    fn each_peer_gets_the_rarest_chunk_it_holds() {
        let (mut plan, ids, now) = plan_with(2, &[&[0, 1], &[1]]);
        let asks = plan.peer_asks(now);
        assert_eq!(ask_of(&asks, ids[0]), Some(&PeerAsk::Get(0)));
        assert_eq!(ask_of(&asks, ids[1]), Some(&PeerAsk::Get(1)));
        // Both are busy until they answer.
        assert!(plan.peer_asks(now).is_empty());
    }

    #[test]
    fn the_owner_is_asked_for_what_no_peer_holds_and_at_most_twice_at_once() {
        let (mut plan, _, _) = plan_with(3, &[&[0]]);
        assert!(!plan.awaits_first_answers());
        assert_eq!(plan.owner_ask(false).map(|w| w.ones().collect::<Vec<_>>()), Some(vec![1, 2]));
        assert!(plan.owner_ask(false).is_some());
        assert!(plan.owner_ask(true).is_none(), "two requests are in flight");
        plan.owner_answered();
        plan.owner_served();
        plan.got_from_owner(1);
        plan.got_from_owner(2);
        assert!(plan.owner_ask(false).is_none(), "a peer holds the rest");
        assert_eq!(plan.owner_ask(true).map(|w| w.ones().collect::<Vec<_>>()), Some(vec![0]));
    }

    #[test]
    fn unanswered_peers_hold_the_owner_back() {
        let mut plan = FetchPlan::new(2, PeerId::random());
        plan.merge_peers(&[(PeerId::random(), addr())]);
        assert!(plan.awaits_first_answers());
    }

    #[test]
    fn a_chunk_is_taken_once_and_counted_for_its_sender() {
        let (mut plan, ids, now) = plan_with(2, &[&[0, 1]]);
        let Some(PeerAsk::Get(c)) = plan.peer_asks(now).pop().map(|a| a.2) else { panic!("no chunk asked") };
        let got = plan.chunk_answered(ids[0], Some(c), Ok(Some((c, vec![1]))), now);
        assert_eq!(got, Some((c, vec![1])));
        plan.got_from_peer(ids[0], c);
        // The other chunk, from the owner; a late copy from the peer is not wanted.
        plan.got_from_owner(1 - c);
        assert!(plan.is_complete());
        assert_eq!(plan.chunk_answered(ids[0], Some(1 - c), Ok(Some((1 - c, vec![2]))), now), None);
        assert_eq!(plan.counts(), (1, vec![(ids[0], 1)]));
    }

    #[test]
    fn a_peer_that_lacks_the_chunk_is_asked_again_what_it_holds() {
        let (mut plan, ids, now) = plan_with(1, &[&[0]]);
        assert_eq!(plan.peer_asks(now).pop().map(|a| a.2), Some(PeerAsk::Get(0)));
        assert_eq!(plan.chunk_answered(ids[0], Some(0), Ok(None), now), None);
        assert_eq!(plan.peer_asks(now).pop().map(|a| a.2), Some(PeerAsk::Have));
    }

    #[test]
    fn failing_peers_pause_then_drop() {
        let (mut plan, ids, now) = plan_with(1, &[&[0]]);
        for failure in 1..=PEER_FAILURES {
            let asks = plan.peer_asks(now + PEER_PAUSE * failure);
            assert_eq!(asks.len(), 1, "failure {failure}");
            assert!(plan.peer_asks(now + PEER_PAUSE * failure).is_empty(), "busy");
            plan.chunk_answered(ids[0], Some(0), Err(anyhow::anyhow!("reset")), now + PEER_PAUSE * failure);
            assert!(plan.peer_asks(now + PEER_PAUSE * failure).is_empty(), "paused");
        }
        assert!(plan.peer_asks(now + PEER_PAUSE * (PEER_FAILURES + 2)).is_empty(), "dropped");
        assert_eq!(plan.owner_ask(false).map(|w| w.count()), Some(1), "only the owner is left");
    }

    #[test]
    fn a_dropped_peer_no_longer_counts_as_holding() {
        let (mut plan, ids, now) = plan_with(1, &[&[0]]);
        assert!(plan.owner_ask(false).is_none());
        plan.drop_peer(ids[0]);
        assert!(plan.peer_asks(now).is_empty());
        assert!(plan.owner_ask(false).is_some());
    }
}
