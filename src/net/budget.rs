//! Per-peer budgets: token buckets of work requests, stream opens and strikes (refused or garbage input) for each
//! connected peer, and bans for peers that overspend, doubling for repeat offenders. Pure: time is an input, and
//! the event loop turns the bans this decides into closed and refused connections.
//!
//! The same [`Bucket`] paces a node's own stream opens ([`Pacer`]), so an honest volunteer never overspends what an
//! owner allows it: the limits both sides use are in [`crate::protocol`].

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use libp2p::PeerId;

use crate::protocol::{Rate, BAN_FIRST, BAN_MAX, BAN_MEMORY, REQUEST_BUDGET, STREAM_BUDGET, STRIKE_BUDGET};

/// A token bucket of some [`Rate`]: starts full, gains `per_sec` tokens a second up to `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(rate: Rate, now: Instant) -> Self {
        Self { tokens: rate.burst, at: now }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.at = self.at.max(now);
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes a token now, going into debt if needed, and says how long to wait before using it: zero while there
    /// are tokens. Concurrent callers queue up in the order they reserved.
    pub fn reserve(&mut self, rate: Rate, now: Instant) -> Duration {
        self.refill(rate, now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 || rate.per_sec <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate.per_sec)
        }
    }

    fn is_full(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= rate.burst
    }
}

/// What a peer spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// A work request.
    Request,
    /// A blob or update stream.
    Stream,
    /// A refused request, garbage, rejected gossip or a fetch of a blob it may not have.
    Strike,
}

impl Charge {
    fn rate(self) -> Rate {
        match self {
            Charge::Request => REQUEST_BUDGET,
            Charge::Stream => STREAM_BUDGET,
            Charge::Strike => STRIKE_BUDGET,
        }
    }

    /// Why a peer that overspent this was banned, for the log.
    fn reason(self) -> &'static str {
        match self {
            Charge::Request => "too many requests",
            Charge::Stream => "too many streams",
            Charge::Strike => "too many refused or garbage messages",
        }
    }
}

/// A ban decided by [`Budgets::charge`], for the event loop to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBan {
    pub peer: PeerId,
    pub length: Duration,
    pub reason: &'static str,
}

#[derive(Debug)]
struct PeerBudget {
    requests: Bucket,
    streams: Bucket,
    strikes: Bucket,
}

impl PeerBudget {
    fn new(now: Instant) -> Self {
        Self {
            requests: Bucket::full(REQUEST_BUDGET, now),
            streams: Bucket::full(STREAM_BUDGET, now),
            strikes: Bucket::full(STRIKE_BUDGET, now),
        }
    }

    fn bucket(&mut self, charge: Charge) -> &mut Bucket {
        match charge {
            Charge::Request => &mut self.requests,
            Charge::Stream => &mut self.streams,
            Charge::Strike => &mut self.strikes,
        }
    }

    /// Whether forgetting this budget would change nothing: every bucket is full again.
    fn is_idle(&mut self, now: Instant) -> bool {
        self.requests.is_full(REQUEST_BUDGET, now)
            && self.streams.is_full(STREAM_BUDGET, now)
            && self.strikes.is_full(STRIKE_BUDGET, now)
    }
}

#[derive(Debug)]
struct Ban {
    until: Instant,
    length: Duration,
    /// Whether the ban's end was handed to the event loop (to unblock the peer).
    lifted: bool,
}

/// Every peer's budget and every current or remembered ban.
#[derive(Debug, Default)]
pub struct Budgets {
    peers: HashMap<PeerId, PeerBudget>,
    bans: HashMap<PeerId, Ban>,
    new_bans: Vec<NewBan>,
}

impl Budgets {
    /// Charges `peer` one request, stream or strike. False when the peer is banned, or is banned by this charge
    /// (see [`Budgets::take_new_bans`]): the caller then drops what the peer sent.
    pub fn charge(&mut self, peer: PeerId, charge: Charge, now: Instant) -> bool {
        if self.is_banned(&peer, now) {
            return false;
        }
        let budget = self.peers.entry(peer).or_insert_with(|| PeerBudget::new(now));
        if budget.bucket(charge).take(charge.rate(), now) {
            return true;
        }
        self.ban(peer, charge.reason(), now);
        false
    }

    pub fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.bans.get(peer).is_some_and(|ban| now < ban.until)
    }

    /// Bans `peer` for [`BAN_FIRST`], or twice its last ban if that ended less than [`BAN_MEMORY`] ago.
    fn ban(&mut self, peer: PeerId, reason: &'static str, now: Instant) {
        self.peers.remove(&peer);
        let length = match self.bans.get(&peer) {
            Some(last) if now < last.until + BAN_MEMORY => (last.length * 2).min(BAN_MAX),
            _ => BAN_FIRST,
        };
        self.bans.insert(peer, Ban { until: now + length, length, lifted: false });
        self.new_bans.push(NewBan { peer, length, reason });
    }

    /// Bans decided since the last call, for the event loop to close and refuse the peers' connections.
    pub fn take_new_bans(&mut self) -> Vec<NewBan> {
        std::mem::take(&mut self.new_bans)
    }

    /// Peers whose ban has just ended, each returned once, for the event loop to accept again. Also forgets what
    /// no longer matters: bans over for [`BAN_MEMORY`], and budgets that have refilled.
    pub fn lift_expired(&mut self, now: Instant) -> Vec<PeerId> {
        let mut lifted = Vec::new();
        for (peer, ban) in self.bans.iter_mut().filter(|(_, ban)| !ban.lifted && now >= ban.until) {
            ban.lifted = true;
            lifted.push(*peer);
        }
        self.bans.retain(|_, ban| now < ban.until + BAN_MEMORY);
        self.peers.retain(|_, budget| !budget.is_idle(now));
        lifted
    }

    /// A peer disconnected: its buckets are forgotten (its bans are not).
    pub fn forget(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }
}

/// Paces this node's own stream opens to each peer at [`STREAM_BUDGET`]'s rate with half its burst, so network
/// jitter that bunches them up never takes an owner's bucket of this node below half full.
#[derive(Debug, Default)]
pub struct Pacer {
    peers: HashMap<PeerId, Bucket>,
}

impl Pacer {
    pub fn rate() -> Rate {
        Rate { burst: STREAM_BUDGET.burst / 2.0, per_sec: STREAM_BUDGET.per_sec }
    }

    /// How long to wait before opening a stream to `peer` (the open is counted now).
    pub fn reserve(&mut self, peer: PeerId, now: Instant) -> Duration {
        self.peers.entry(peer).or_insert_with(|| Bucket::full(Self::rate(), now)).reserve(Self::rate(), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let rate = Rate { burst: 3.0, per_sec: 2.0 };
        let t0 = Instant::now();
        let mut b = Bucket::full(rate, t0);
        assert!((0..3).all(|_| b.take(rate, t0)));
        assert!(!b.take(rate, t0));
        assert!(!b.take(rate, t0 + secs(0.4)));
        assert!(b.take(rate, t0 + secs(0.5)));
        // Never more than the burst, however long it rests.
        let later = t0 + secs(1000.0);
        assert_eq!((0..10).filter(|_| b.take(rate, later)).count(), 3);
    }

    #[test]
    fn reserving_queues_callers_at_the_rate() {
        let rate = Rate { burst: 2.0, per_sec: 10.0 };
        let t0 = Instant::now();
        let mut b = Bucket::full(rate, t0);
        let waits: Vec<Duration> = (0..5).map(|_| b.reserve(rate, t0)).collect();
        let ms: Vec<u128> = waits.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [0, 0, 100, 200, 300]);
    }

    #[test]
    fn a_paced_sender_never_overspends_the_receivers_budget() {
        // The sender reserves as fast as it can for a minute; the receiver sees each open when the pacer lets it
        // go, some of them up to half a second late (bunched up by the network).
        let t0 = Instant::now();
        let peer = PeerId::random();
        let mut pacer = Pacer::default();
        let mut budgets = Budgets::default();
        let mut sends = Vec::new();
        let mut now = t0;
        while now < t0 + secs(60.0) {
            let wait = pacer.reserve(peer, now);
            now += wait;
            sends.push(now);
        }
        let mut arrivals: Vec<Instant> =
            sends.iter().enumerate().map(|(i, &sent)| if i % 7 == 0 { sent + secs(0.5) } else { sent }).collect();
        arrivals.sort();
        assert!(arrivals.len() > 10_000, "{}", arrivals.len());
        for at in arrivals {
            assert!(budgets.charge(peer, Charge::Stream, at), "an honest sender was banned");
        }
    }

    #[test]
    fn overspending_bans_and_bans_double_for_repeat_offenders() {
        let t0 = Instant::now();
        let (bad, good) = (PeerId::random(), PeerId::random());
        let mut budgets = Budgets::default();
        let burst = STRIKE_BUDGET.burst as usize;
        assert!((0..burst).all(|_| budgets.charge(bad, Charge::Strike, t0)));
        assert!(!budgets.charge(bad, Charge::Strike, t0));
        let bans = budgets.take_new_bans();
        assert_eq!(bans, [NewBan { peer: bad, length: BAN_FIRST, reason: "too many refused or garbage messages" }]);
        // Banned: everything it sends is dropped, and nobody else is affected.
        assert!(!budgets.charge(bad, Charge::Request, t0 + secs(1.0)));
        assert!(budgets.charge(good, Charge::Request, t0 + secs(1.0)));
        assert!(budgets.take_new_bans().is_empty());
        // The ban ends once, then the peer starts afresh.
        assert!(budgets.lift_expired(t0 + BAN_FIRST - secs(1.0)).is_empty());
        let end = t0 + BAN_FIRST;
        assert_eq!(budgets.lift_expired(end), [bad]);
        assert!(budgets.lift_expired(end).is_empty());
        assert!(budgets.charge(bad, Charge::Strike, end));
        // Caught again soon after: twice as long.
        for _ in 0..burst {
            budgets.charge(bad, Charge::Strike, end);
        }
        let bans = budgets.take_new_bans();
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].length, BAN_FIRST * 2);
        // Doubling stops at the maximum.
        let mut now = end;
        for _ in 0..20 {
            now += BAN_MAX;
            budgets.lift_expired(now);
            for _ in 0..=burst {
                budgets.charge(bad, Charge::Strike, now);
            }
        }
        assert_eq!(budgets.take_new_bans().last().map(|b| b.length), Some(BAN_MAX));
    }

    #[test]
    fn requests_are_banned_only_beyond_the_budget() {
        let t0 = Instant::now();
        let peer = PeerId::random();
        let mut budgets = Budgets::default();
        // A flood: the burst passes, then the peer is banned.
        let passed = (0..10_000).take_while(|_| budgets.charge(peer, Charge::Request, t0)).count();
        assert_eq!(passed, REQUEST_BUDGET.burst as usize);
        assert_eq!(budgets.take_new_bans()[0].reason, "too many requests");
        // An honest volunteer's pace never is.
        let honest = PeerId::random();
        for i in 0..100_000u32 {
            let at = t0 + secs(f64::from(i) / 100.0);
            assert!(budgets.charge(honest, Charge::Request, at));
        }
    }

    #[test]
    fn forgotten_state_is_pruned() {
        let t0 = Instant::now();
        let (peer, idle) = (PeerId::random(), PeerId::random());
        let mut budgets = Budgets::default();
        budgets.charge(idle, Charge::Request, t0);
        for _ in 0..=STRIKE_BUDGET.burst as usize {
            budgets.charge(peer, Charge::Strike, t0);
        }
        budgets.lift_expired(t0 + secs(10.0));
        assert!(!budgets.peers.contains_key(&idle), "a refilled budget was kept");
        budgets.lift_expired(t0 + BAN_FIRST + BAN_MEMORY);
        assert!(budgets.bans.is_empty(), "a ban was remembered forever");
    }
}
