//! Spot checks: which delivered frames another volunteer renders again, who renders those copies, and what a
//! comparison proves. Pure, like the scheduler: the host feeds it deliveries, claims, comparisons and time, and acts
//! on what comes back (leases of check copies, bans).
//!
//! Model. Cycles on CPU renders a frame the same way on every honest volunteer (within a small, measured tolerance:
//! see docs/SECURITY.md), so a second copy from someone else is a strong check of the first. A check is opened on a
//! stored frame: always on a volunteer's first frame of a job, then on a fraction of its frames (less for volunteers
//! that passed many checks). A copy is leased to a volunteer that is neither the original's author nor already part
//! of the check; the volunteer cannot tell a check from an ordinary frame. Its copy is compared with the stored frame
//! and with the first copy that disagreed, if any:
//!
//! - agrees with the stored frame, nothing disagreed so far: the check passes (both volunteers earn trust);
//! - agrees with the stored frame after someone disagreed: the dissenter lied and is banned;
//! - disagrees, first to do so: its copy is kept and a third volunteer decides;
//! - disagrees with the stored frame but agrees with the earlier dissenter: two volunteers independently agree
//!   against the original, whose author is banned;
//! - agrees with nobody: the scene does not render deterministically (Eevee, GPU, a simulation); nobody is banned and
//!   after [`MAX_COPIES`] copies the check is closed as inconclusive.
//!
//! So a ban always needs two volunteers that agree against one; a lone Sybil identity cannot get an honest
//! volunteer banned, and a cheater is caught on its first frame of every job when another two volunteers are around.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

use super::BlendHash;

/// Copies of one frame compared at most before a check is closed as inconclusive.
pub const MAX_COPIES: usize = 3;
/// Open checks at most; past it, new deliveries are not checked (a first frame always is, up to twice this).
pub const MAX_OPEN_CHECKS: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VerifyConfig {
    /// A volunteer that passed this many checks is trusted: its frames are checked at `trusted_factor` times the
    /// job's fraction (BOINC's adaptive replication does the same).
    pub trusted_after: u32,
    pub trusted_factor: f64,
    /// A check copy's lease expires when not renewed for this long.
    pub lease_timeout: Duration,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig { trusted_after: 10, trusted_factor: 0.2, lease_timeout: Duration::from_secs(30) }
    }
}

/// What a comparison of a check copy says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparison {
    /// The copy agrees with the stored frame.
    pub with_stored: bool,
    /// The copy agrees with the kept copy of the first dissenter; `None` when there is none.
    pub with_dissent: Option<bool>,
}

/// What the host must do after a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome<P> {
    /// The stored frame is confirmed; the check is closed.
    Passed { original: P },
    /// The copy disagrees and is the first to: keep it (the next copy is compared with it) until the check closes.
    KeepCopy,
    /// The copy agrees with nobody; wait for another.
    Undecided,
    /// Nobody agrees after [`MAX_COPIES`] copies: closed, nobody banned.
    Inconclusive { original: P },
    /// `peer` delivered a wrong frame (as original or as a check copy): ban it. When the original is banned, the
    /// stored frame is wrong and the check is closed.
    Ban { peer: P, original_wrong: bool },
}

#[derive(Debug, Clone)]
struct Check<P> {
    blend: BlendHash,
    original: P,
    /// Volunteers whose copies were compared, or who failed or dropped a copy: never asked again for this frame.
    involved: Vec<P>,
    /// The first volunteer whose copy disagreed with the stored frame.
    dissenter: Option<P>,
    copies: usize,
    lease: Option<(P, Instant)>,
}

/// Spot-check state of one farm.
#[derive(Debug)]
pub struct Verifier<P> {
    config: VerifyConfig,
    /// Checks passed per volunteer (as original or as a copy that agreed).
    passed: HashMap<P, u32>,
    banned: HashSet<P>,
    /// (volunteer, job) pairs whose first frame is already checked or being checked.
    first_seen: HashSet<(P, String)>,
    checks: BTreeMap<(String, u32), Check<P>>,
}

impl<P: Clone + Eq + Hash + Ord + std::fmt::Debug> Verifier<P> {
    pub fn new(config: VerifyConfig, banned: impl IntoIterator<Item = P>) -> Self {
        Verifier {
            config,
            passed: HashMap::new(),
            banned: banned.into_iter().collect(),
            first_seen: HashSet::new(),
            checks: BTreeMap::new(),
        }
    }

    pub fn is_banned(&self, peer: &P) -> bool {
        self.banned.contains(peer)
    }

    pub fn passed(&self, peer: &P) -> u32 {
        self.passed.get(peer).copied().unwrap_or(0)
    }

    pub fn open_checks(&self) -> usize {
        self.checks.len()
    }

    /// `peer` delivered `frame` of `job` and it is stored. `fraction` is the job's `verify =` (0 turns checks off);
    /// `roll` is a uniform random number in [0, 1) from the caller. Returns whether a check was opened.
    pub fn delivered(&mut self, peer: &P, job: &str, frame: u32, blend: BlendHash, fraction: f64, roll: f64) -> bool {
        if fraction <= 0.0 || self.banned.contains(peer) || self.checks.contains_key(&(job.to_owned(), frame)) {
            return false;
        }
        let first = self.first_seen.insert((peer.clone(), job.to_owned()));
        let trusted = self.passed(peer) >= self.config.trusted_after;
        let chance = if trusted { fraction * self.config.trusted_factor } else { fraction };
        let room = if first { 2 * MAX_OPEN_CHECKS } else { MAX_OPEN_CHECKS };
        if !(first || roll < chance) || self.checks.len() >= room {
            return false;
        }
        let check =
            Check { blend, original: peer.clone(), involved: Vec::new(), dissenter: None, copies: 0, lease: None };
        self.checks.insert((job.to_owned(), frame), check);
        true
    }

    /// A check copy for `peer` to render, if one waits that it may take: not its own frame, not one it was already
    /// part of. `able` says whether the peer may render that job at all (the scheduler's view).
    pub fn claim(&mut self, peer: &P, now: Instant, able: impl Fn(&str) -> bool) -> Option<(String, u32, BlendHash)> {
        if self.banned.contains(peer) {
            return None;
        }
        let ((job, frame), check) = self.checks.iter_mut().find(|((job, _), c)| {
            c.lease.is_none() && &c.original != peer && !c.involved.contains(peer) && able(job)
        })?;
        check.lease = Some((peer.clone(), now));
        Some((job.clone(), *frame, check.blend))
    }

    /// Whether `peer` holds the lease of a check copy of this frame (of this .blend).
    pub fn holds(&self, peer: &P, job: &str, frame: u32, blend: BlendHash) -> bool {
        self.checks
            .get(&(job.to_owned(), frame))
            .is_some_and(|c| c.blend == blend && c.lease.as_ref().is_some_and(|(p, _)| p == peer))
    }

    /// The jobs of which `peer` holds a check copy's lease (it may fetch their files).
    pub fn jobs_leased_to(&self, peer: &P) -> Vec<&str> {
        let leased = self.checks.iter().filter(|(_, c)| c.lease.as_ref().is_some_and(|(p, _)| p == peer));
        leased.map(|((job, _), _)| job.as_str()).collect()
    }

    /// Keeps a check copy's lease alive. False when `peer` holds none for this frame.
    pub fn renew(&mut self, peer: &P, job: &str, frame: u32, blend: BlendHash, now: Instant) -> bool {
        match self.checks.get_mut(&(job.to_owned(), frame)) {
            Some(Check { blend: b, lease: Some((p, at)), .. }) if p == peer && *b == blend => {
                *at = now;
                true
            }
            _ => false,
        }
    }

    /// `peer` could not render its copy (or its copy could not be used): someone else is asked.
    pub fn copy_failed(&mut self, peer: &P, job: &str, frame: u32) {
        if let Some(check) = self.checks.get_mut(&(job.to_owned(), frame)) {
            if check.lease.as_ref().is_some_and(|(p, _)| p == peer) {
                check.lease = None;
                check.involved.push(peer.clone());
            }
        }
    }

    /// Drops copy leases not renewed within the lease timeout; their frames wait for another volunteer.
    pub fn tick(&mut self, now: Instant) {
        let timeout = self.config.lease_timeout;
        for check in self.checks.values_mut() {
            if check.lease.as_ref().is_some_and(|(_, at)| now.saturating_duration_since(*at) > timeout) {
                if let Some((peer, _)) = check.lease.take() {
                    check.involved.push(peer);
                }
            }
        }
    }

    /// `peer` left: its copy leases go to others.
    pub fn peer_gone(&mut self, peer: &P) {
        for check in self.checks.values_mut() {
            if check.lease.as_ref().is_some_and(|(p, _)| p == peer) {
                check.lease = None;
            }
        }
    }

    /// The job's frames changed under the checks (a new .blend, the job removed): its checks are dropped.
    pub fn forget_job(&mut self, job: &str) {
        self.checks.retain(|(j, _), _| j != job);
        self.first_seen.retain(|(_, j)| j != job);
    }

    /// The copy `peer` rendered of `frame` was compared. Returns what the host must do; [`CheckOutcome::Ban`] also
    /// bans the peer here and drops its other checks (its frames are rendered again by the host's doing).
    pub fn compared(&mut self, peer: &P, job: &str, frame: u32, seen: Comparison) -> Option<CheckOutcome<P>> {
        let key = (job.to_owned(), frame);
        let check = self.checks.get_mut(&key)?;
        if check.lease.as_ref().is_none_or(|(p, _)| p != peer) {
            return None;
        }
        check.lease = None;
        check.involved.push(peer.clone());
        check.copies += 1;
        let outcome = match (seen.with_stored, &check.dissenter, seen.with_dissent) {
            (true, None, _) => {
                let original = check.original.clone();
                *self.passed.entry(original.clone()).or_default() += 1;
                *self.passed.entry(peer.clone()).or_default() += 1;
                self.checks.remove(&key);
                return Some(CheckOutcome::Passed { original });
            }
            (true, Some(dissenter), _) => CheckOutcome::Ban { peer: dissenter.clone(), original_wrong: false },
            (false, None, _) => {
                check.dissenter = Some(peer.clone());
                CheckOutcome::KeepCopy
            }
            (false, Some(_), Some(true)) => CheckOutcome::Ban { peer: check.original.clone(), original_wrong: true },
            (false, Some(_), _) if check.copies >= MAX_COPIES => {
                let original = check.original.clone();
                self.checks.remove(&key);
                return Some(CheckOutcome::Inconclusive { original });
            }
            (false, Some(_), _) => CheckOutcome::Undecided,
        };
        if let CheckOutcome::Ban { peer: banned, .. } = &outcome {
            let banned = banned.clone();
            self.checks.remove(&key);
            self.ban(&banned);
        }
        Some(outcome)
    }

    /// Bans `peer` for this host's lifetime (the host also records it durably): no more frames or copies, and the
    /// checks of its own frames are dropped, since all of them are rendered again.
    pub fn ban(&mut self, peer: &P) {
        self.banned.insert(peer.clone());
        self.passed.remove(peer);
        self.checks.retain(|_, c| &c.original != peer);
        for check in self.checks.values_mut() {
            if check.lease.as_ref().is_some_and(|(p, _)| p == peer) {
                check.lease = None;
            }
            if check.dissenter.as_ref() == Some(peer) {
                check.dissenter = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: BlendHash = crate::protocol::BlobHash([7; 32]);

    fn verifier() -> Verifier<&'static str> {
        Verifier::new(VerifyConfig::default(), [])
    }

    fn agree() -> Comparison {
        Comparison { with_stored: true, with_dissent: None }
    }

    fn differ(with_dissent: Option<bool>) -> Comparison {
        Comparison { with_stored: false, with_dissent }
    }

    #[test]
    fn first_frame_of_each_job_is_always_checked_then_a_fraction() {
        let mut v = verifier();
        // (peer, job, frame, fraction, roll, checked?)
        let table = [
            ("alice", "a", 1, 0.05, 0.99, true),  // first frame of alice in job a
            ("alice", "a", 2, 0.05, 0.99, false), // roll above the fraction
            ("alice", "a", 3, 0.05, 0.01, true),  // roll below it
            ("alice", "b", 1, 0.05, 0.99, true),  // first frame of another job
            ("bob", "a", 4, 0.0, 0.0, false),     // verify = 0: never, not even the first
            ("bob", "a", 5, 0.05, 0.99, true),    // bob's first frame with checks on
            ("bob", "a", 5, 1.0, 0.0, false),     // a frame already under check
        ];
        for (i, (peer, job, frame, fraction, roll, want)) in table.into_iter().enumerate() {
            assert_eq!(v.delivered(&peer, job, frame, B, fraction, roll), want, "row {i}");
        }
        assert_eq!(v.open_checks(), 4);
    }

    #[test]
    fn trusted_volunteers_are_checked_less() {
        let mut v = verifier();
        v.passed.insert("alice", 10);
        v.first_seen.insert(("alice", "a".into()));
        assert!(!v.delivered(&"alice", "a", 1, B, 0.05, 0.02), "0.02 ≥ 0.05 × 0.2");
        assert!(v.delivered(&"alice", "a", 2, B, 0.05, 0.005));
    }

    #[test]
    fn copies_go_to_someone_else_and_leases_expire() {
        let mut v = verifier();
        let t0 = Instant::now();
        v.delivered(&"alice", "a", 1, B, 0.05, 0.5);
        assert_eq!(v.claim(&"alice", t0, |_| true), None, "never your own frame");
        assert_eq!(v.claim(&"bob", t0, |_| false), None, "not a job the peer cannot render");
        assert_eq!(v.claim(&"bob", t0, |_| true), Some(("a".into(), 1, B)));
        assert_eq!(v.claim(&"carol", t0, |_| true), None, "one copy at a time");
        assert!(v.holds(&"bob", "a", 1, B) && !v.holds(&"bob", "a", 1, crate::protocol::BlobHash([0; 32])));
        assert!(v.renew(&"bob", "a", 1, B, t0 + Duration::from_secs(20)));
        v.tick(t0 + Duration::from_secs(40));
        assert!(v.holds(&"bob", "a", 1, B), "renewed at 20 s, so alive at 40 s");
        v.tick(t0 + Duration::from_secs(60));
        assert!(!v.holds(&"bob", "a", 1, B));
        assert_eq!(v.claim(&"bob", t0, |_| true), None, "bob dropped it: not asked again");
        assert_eq!(v.claim(&"carol", t0, |_| true), Some(("a".into(), 1, B)));
        v.copy_failed(&"carol", "a", 1);
        assert_eq!(v.claim(&"carol", t0, |_| true), None);
        assert_eq!(v.claim(&"dave", t0, |_| true), Some(("a".into(), 1, B)));
    }

    /// Each row: the copies' comparisons in order (peer, comparison) and the outcomes expected.
    #[test]
    fn what_comparisons_prove() {
        type Row = (&'static str, Vec<(&'static str, Comparison)>, Vec<Option<CheckOutcome<&'static str>>>);
        let ban = |peer, original_wrong| Some(CheckOutcome::Ban { peer, original_wrong });
        let table: Vec<Row> = vec![
            ("honest pair", vec![("bob", agree())], vec![Some(CheckOutcome::Passed { original: "alice" })]),
            (
                "alice cheated: two copies agree against her",
                vec![("bob", differ(None)), ("carol", differ(Some(true)))],
                vec![Some(CheckOutcome::KeepCopy), ban("alice", true)],
            ),
            (
                "bob lied about an honest frame: carol sides with alice",
                vec![("bob", differ(None)), ("carol", agree())],
                vec![Some(CheckOutcome::KeepCopy), ban("bob", false)],
            ),
            (
                "nobody agrees: not deterministic, nobody banned",
                vec![("bob", differ(None)), ("carol", differ(Some(false))), ("dave", differ(Some(false)))],
                vec![
                    Some(CheckOutcome::KeepCopy),
                    Some(CheckOutcome::Undecided),
                    Some(CheckOutcome::Inconclusive { original: "alice" }),
                ],
            ),
        ];
        for (name, copies, want) in table {
            let mut v = verifier();
            let t0 = Instant::now();
            assert!(v.delivered(&"alice", "a", 1, B, 0.05, 0.5));
            let got: Vec<_> = copies
                .iter()
                .map(|(peer, seen)| {
                    assert!(v.claim(peer, t0, |_| true).is_some(), "{name}: {peer} gets the copy");
                    v.compared(peer, "a", 1, *seen)
                })
                .collect();
            assert_eq!(got, want, "{name}");
            assert_eq!(v.open_checks(), 0, "{name}: the check is closed");
        }
    }

    #[test]
    fn a_comparison_from_a_peer_without_the_lease_is_ignored() {
        let mut v = verifier();
        v.delivered(&"alice", "a", 1, B, 0.05, 0.5);
        assert_eq!(v.compared(&"mallory", "a", 1, differ(None)), None);
        v.claim(&"bob", Instant::now(), |_| true);
        assert_eq!(v.compared(&"mallory", "a", 1, differ(None)), None);
        assert_eq!(v.compared(&"bob", "a", 1, agree()), Some(CheckOutcome::Passed { original: "alice" }));
        assert_eq!((v.passed(&"alice"), v.passed(&"bob"), v.passed(&"mallory")), (1, 1, 0));
    }

    #[test]
    fn a_restarted_or_removed_job_drops_its_checks_and_first_frames() {
        let mut v = verifier();
        v.delivered(&"alice", "a", 1, B, 0.05, 0.5);
        v.delivered(&"alice", "b", 1, B, 0.05, 0.5);
        v.claim(&"bob", Instant::now(), |_| true);
        v.forget_job("a");
        assert_eq!(v.open_checks(), 1);
        assert!(!v.holds(&"bob", "a", 1, B));
        assert!(v.delivered(&"alice", "a", 2, B, 0.05, 0.99), "the new version's first frame is checked again");
    }

    #[test]
    fn a_banned_volunteer_gets_no_copies_and_its_frames_are_not_checked() {
        let mut v = Verifier::new(VerifyConfig::default(), ["mallory"]);
        assert!(!v.delivered(&"mallory", "a", 1, B, 1.0, 0.0));
        v.delivered(&"alice", "a", 2, B, 1.0, 0.0);
        assert_eq!(v.claim(&"mallory", Instant::now(), |_| true), None);
        v.delivered(&"bob", "a", 3, B, 1.0, 0.0);
        v.ban(&"bob");
        assert_eq!(v.open_checks(), 1, "bob's own checks are dropped: his frames are rendered again");
        assert!(v.is_banned(&"bob") && v.is_banned(&"mallory"));
    }
}
