//! A seeded simulation of a whole farm: many volunteers, some broken, silent or leaving, until every job is done.

use super::*;

/// Small deterministic generator for the simulation.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// 50 volunteers (3 of them broken), 2000 frames in three jobs, with silent peers, departures and failures: every
/// job finishes, every frame is done exactly once, nobody renders a frame it failed, and no frame has more than two
/// holders (checked by the invariants).
#[test]
fn simulated_farm_finishes_every_frame_once() {
    let config = SchedulerConfig { max_frame_failures: 4, ..SchedulerConfig::default() };
    let mut s: S = Scheduler::new(config);
    let names: [&'static str; 50] = std::array::from_fn(|i| &*Box::leak(format!("peer{i:02}").into_boxed_str()));
    let broken = |p: P| p < "peer03";
    s.upsert_job(desc("a", 1, 1000, 1, 0), &[]);
    s.upsert_job(desc("b", 1, 600, 0, 1), &[]);
    s.upsert_job(desc("c", 0, 399, 0, 2), &[5, 6, 7]);
    let start = Instant::now();
    let mut rng = Lcg(42);
    let mut done_once = std::collections::HashSet::new();
    let mut failed_by = std::collections::HashSet::new();
    let mut held: Vec<(P, String, u32)> = Vec::new();
    let mut t = 0u64;
    let finished = |s: &S| ["a", "b", "c"].iter().all(|j| s.status(j).is_some_and(|st| st.finished));
    while !finished(&s) {
        t += 5;
        assert!(t < 100_000, "the farm got stuck");
        let now = start + secs(t);
        for peer in names {
            for g in s.claim(&peer, 2, now) {
                assert!(!failed_by.contains(&(peer, g.job.clone(), g.frame)), "{peer} got {g:?} again");
                held.push((peer, g.job, g.frame));
            }
        }
        let mut still = Vec::new();
        for (peer, job, frame) in held.drain(..) {
            match rng.below(20) {
                _ if broken(peer) => {
                    assert!(matches!(
                        s.frame_failed(&peer, &job, frame, blend(1), "no gpu"),
                        FailOutcome::Retry | FailOutcome::Ignored
                    ));
                    failed_by.insert((peer, job, frame));
                }
                0..=9 => {
                    if s.rendered(&peer, &job, frame, blend(1)) == Verdict::Accept {
                        let already = s.status(&job).map(|st| st.done);
                        s.frame_stored(&job, frame, blend(1));
                        if s.status(&job).map(|st| st.done) != already {
                            assert!(done_once.insert((job, frame)), "stored twice");
                        }
                    }
                }
                10 => {
                    s.peer_gone(&peer);
                }
                11 => {} // silent: the lease will expire
                _ => {
                    if s.renew(&peer, &job, frame, blend(1), now) {
                        still.push((peer, job, frame));
                    }
                }
            }
        }
        held = still;
        s.tick(now);
        check_invariants(&s, &format!("t={t}"));
    }
    assert_eq!(done_once.len(), 1000 + 600 + 397);
    for name in ["a", "b", "c"] {
        assert_eq!(s.status(name).and_then(|st| st.failed), None);
    }
}
