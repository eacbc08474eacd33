//! Scenario tests: each is a list of steps (an input and the output it must produce) run through [`run`], which also
//! checks the scheduler's internal invariants after every step.

use std::time::{Duration, Instant};

use super::job::FrameState;
use super::*;

type P = &'static str;
type S = Scheduler<P>;
/// (peer, job, frame) of an expected recall.
type R = (P, &'static str, u32);

/// The only line to change if [`BlendHash`] becomes a newtype: `BlobHash([n; 32])`.
fn blend(n: u8) -> BlendHash {
    crate::protocol::BlobHash([n; 32])
}

fn desc(name: &str, first: u32, last: u32, priority: i32, order: u64) -> JobDesc {
    JobDesc {
        name: name.to_owned(),
        blend: blend(1),
        blend_size: 1000,
        first,
        last,
        priority,
        order,
        needs: JobNeeds::default(),
    }
}

/// A fresh job status with only the counters set.
fn st(total: u32, done: u32, leased: u32, pending: u32) -> JobStatus {
    JobStatus { total, done, leased, pending, suspended: false, failed: None, finished: done == total, failing: 0 }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[derive(Debug)]
enum Fail {
    Retry,
    /// The job failed and the reason contains this text.
    JobFailed(&'static str),
    Ignored,
}

/// One input and its expected output. Times are seconds since the start of the scenario.
#[derive(Debug)]
enum Step {
    Upsert(JobDesc, &'static [u32], JobChange, &'static [R]),
    Remove(&'static str, &'static [R]),
    Suspend(&'static str, bool),
    Claim(P, u32, u64, &'static [(&'static str, u32)]),
    Renew(P, &'static str, u32, u64, bool),
    Rendered(P, &'static str, u32, Verdict),
    Stored(&'static str, u32, &'static [R]),
    Failed(P, &'static str, u32, &'static str, Fail),
    Gone(P, &'static [(&'static str, u32)]),
    /// The host refused the frame the peer delivered.
    Refused(P, &'static str, u32),
    /// The owner's Blender rendered the frame: overrule its failure; whether it was overruled.
    Overrule(&'static str, u32, bool),
    /// Done frames to render again, and how many of them were done.
    Redo(&'static str, &'static [u32], usize),
    Tick(u64, &'static [R]),
    Status(&'static str, Option<JobStatus>),
    /// The job's failure reason contains this text.
    FailedWith(&'static str, &'static str),
    Offers(&'static [(&'static str, u32)]),
    HasWork(P, bool),
    Jobs(&'static [&'static str]),
}
use Step::*;

struct Harness {
    s: S,
    start: Instant,
}

impl Harness {
    fn new(config: SchedulerConfig) -> Self {
        Harness { s: Scheduler::new(config), start: Instant::now() }
    }

    fn at(&self, t: u64) -> Instant {
        self.start + secs(t)
    }

    /// The job's current version: scenario steps speak for volunteers holding a grant of it.
    fn version(&self, job: &str) -> BlendHash {
        self.s.job(job).map_or(blend(1), |j| j.desc.blend)
    }

    fn run(&mut self, steps: Vec<Step>) {
        for (i, step) in steps.into_iter().enumerate() {
            let context = format!("step {i}: {step:?}");
            self.step(step, &context);
            check_invariants(&self.s, &context);
        }
    }

    fn step(&mut self, step: Step, context: &str) {
        match step {
            Upsert(desc, done, change, recalls) => {
                let (got, got_recalls) = self.s.upsert_job(desc, done);
                assert_eq!(got, change, "{context}");
                assert_recalls(got_recalls, recalls, context);
            }
            Remove(name, recalls) => assert_recalls(self.s.remove_job(name), recalls, context),
            Suspend(name, suspended) => self.s.set_suspended(name, suspended),
            Claim(peer, slots, t, frames) => {
                let got = self.s.claim(&peer, slots, self.at(t));
                let got: Vec<(&str, u32)> = got.iter().map(|g| (g.job.as_str(), g.frame)).collect();
                assert_eq!(got, frames, "{context}");
            }
            Renew(peer, job, frame, t, ok) => {
                let version = self.version(job);
                assert_eq!(self.s.renew(&peer, job, frame, version, self.at(t)), ok, "{context}")
            }
            Rendered(peer, job, frame, verdict) => {
                let version = self.version(job);
                assert_eq!(self.s.rendered(&peer, job, frame, version), verdict, "{context}")
            }
            Stored(job, frame, recalls) => {
                let version = self.version(job);
                assert_recalls(self.s.frame_stored(job, frame, version), recalls, context)
            }
            Failed(peer, job, frame, error, expected) => {
                let version = self.version(job);
                let got = self.s.frame_failed(&peer, job, frame, version, error);
                match (&got, expected) {
                    (FailOutcome::Retry, Fail::Retry) | (FailOutcome::Ignored, Fail::Ignored) => {}
                    (FailOutcome::JobFailed { reason }, Fail::JobFailed(text)) if reason.contains(text) => {}
                    (got, expected) => panic!("{context}: got {got:?}, expected {expected:?}"),
                }
            }
            Gone(peer, frames) => {
                let mut got = self.s.peer_gone(&peer);
                got.sort();
                let mut expected: Vec<(String, u32)> = frames.iter().map(|&(j, f)| (j.to_owned(), f)).collect();
                expected.sort();
                assert_eq!(got, expected, "{context}");
            }
            Refused(peer, job, frame) => {
                let version = self.version(job);
                self.s.frame_refused(&peer, job, frame, version)
            }
            Overrule(job, frame, ok) => assert_eq!(self.s.overrule_failure(job, frame), ok, "{context}"),
            Redo(job, frames, count) => assert_eq!(self.s.redo(job, frames), count, "{context}"),
            Tick(t, recalls) => assert_recalls(self.s.tick(self.at(t)), recalls, context),
            Status(name, status) => assert_eq!(self.s.status(name), status, "{context}"),
            FailedWith(name, text) => {
                let failed = self.s.status(name).and_then(|s| s.failed);
                assert!(failed.as_deref().is_some_and(|r| r.contains(text)), "{context}: {failed:?}");
            }
            Offers(offers) => {
                let expected: Vec<(String, u32)> = offers.iter().map(|&(j, n)| (j.to_owned(), n)).collect();
                assert_eq!(self.s.offers(), expected, "{context}");
            }
            HasWork(peer, yes) => assert_eq!(self.s.has_work_for(&peer), yes, "{context}"),
            Jobs(names) => assert_eq!(self.s.jobs().collect::<Vec<_>>(), names, "{context}"),
        }
    }
}

fn assert_recalls(got: Vec<Recall<P>>, expected: &[R], context: &str) {
    let mut got: Vec<(P, String, u32)> = got.into_iter().map(|r| (r.peer, r.job, r.frame)).collect();
    got.sort();
    let mut expected: Vec<(P, String, u32)> = expected.iter().map(|&(p, j, f)| (p, j.to_owned(), f)).collect();
    expected.sort();
    assert_eq!(got, expected, "{context}");
}

fn run(config: SchedulerConfig, steps: Vec<Step>) -> Harness {
    let mut h = Harness::new(config);
    h.run(steps);
    h
}

/// Everything the scheduler's speed and correctness rely on: counters match the frame table, leases exist exactly for
/// leased frames, and the cursor/requeued split covers every pending frame once.
fn check_invariants(s: &S, context: &str) {
    assert_eq!(s.jobs.len(), s.keys.len(), "{context}");
    for (key, job) in &s.jobs {
        let name = &job.desc.name;
        assert_eq!(s.keys.get(name), Some(key), "{context}");
        let count = |state| job.frames.iter().filter(|&&x| x == state).count() as u32;
        assert_eq!(job.pending, count(FrameState::Pending), "{context}: {name} pending");
        assert_eq!(job.leased, count(FrameState::Leased), "{context}: {name} leased");
        assert_eq!(job.done, count(FrameState::Done), "{context}: {name} done");
        assert_eq!(job.leases.len() as u32, job.leased, "{context}: {name} lease map");
        for (&frame, holders) in &job.leases {
            assert_eq!(job.state(frame), Some(FrameState::Leased), "{context}: {name}/{frame}");
            assert!(!holders.is_empty() && holders.len() <= 2, "{context}: {name}/{frame} {holders:?}");
            assert!(holders.len() < 2 || holders[0].peer != holders[1].peer, "{context}: {name}/{frame}");
        }
        for &frame in &job.requeued {
            let idx = job.index(frame).expect("requeued frame in range");
            assert!(idx < job.cursor, "{context}: {name}/{frame} requeued ahead of the cursor");
            assert_eq!(job.frames[idx], FrameState::Pending, "{context}: {name}/{frame} requeued");
        }
        let behind = job.frames[..job.cursor.min(job.frames.len())].iter().filter(|&&x| x == FrameState::Pending);
        assert_eq!(behind.count(), job.requeued.len(), "{context}: {name} requeued set");
        for frame in job.late.keys() {
            assert!(job.index(*frame).is_some(), "{context}: {name}/{frame} late but out of range");
            assert_ne!(job.state(*frame), Some(FrameState::Done), "{context}: {name}/{frame} late but done");
        }
    }
}

#[test]
fn jobs_are_served_by_priority_then_order() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("low", 1, 3, 0, 1), &[], JobChange::Added, &[]),
            Upsert(desc("high", 1, 2, 5, 3), &[], JobChange::Added, &[]),
            Upsert(desc("old", 10, 11, 0, 0), &[], JobChange::Added, &[]),
            Jobs(&["high", "old", "low"]),
            Offers(&[("high", 2), ("old", 2), ("low", 3)]),
            Claim("a", 3, 0, &[("high", 1), ("high", 2), ("old", 10)]),
            Claim("b", 2, 0, &[("old", 11), ("low", 1)]),
            Claim("c", 5, 0, &[("low", 2), ("low", 3)]),
            Claim("d", 1, 0, &[]),
            Offers(&[("high", 0), ("old", 0), ("low", 0)]),
            // A priority change reorders service.
            Upsert(desc("low", 1, 3, 9, 1), &[], JobChange::Updated, &[]),
            Jobs(&["low", "high", "old"]),
        ],
    );
}

#[test]
fn claims_fill_many_slots_across_jobs() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 3, 0, 0), &[], JobChange::Added, &[]),
            Upsert(desc("k", 1, 3, 0, 1), &[], JobChange::Added, &[]),
            Claim("a", 0, 0, &[]),
            Claim("a", 5, 0, &[("j", 1), ("j", 2), ("j", 3), ("k", 1), ("k", 2)]),
            Claim("b", u32::MAX, 0, &[("k", 3)]),
            Status("j", Some(st(3, 0, 3, 0))),
        ],
    );
}

#[test]
fn suspended_job_is_skipped_and_resumed() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("a", 1, 4, 0, 0), &[], JobChange::Added, &[]),
            Upsert(desc("b", 1, 2, 0, 1), &[], JobChange::Added, &[]),
            Claim("p", 1, 0, &[("a", 1)]),
            Suspend("a", true),
            Status("a", Some(JobStatus { suspended: true, ..st(4, 0, 1, 3) })),
            Offers(&[("b", 2)]),
            Claim("p", 2, 0, &[("b", 1), ("b", 2)]),
            // In-flight work on the suspended job goes on and is kept.
            Renew("p", "a", 1, 10, true),
            Rendered("p", "a", 1, Verdict::Accept),
            Stored("a", 1, &[]),
            Claim("q", 1, 10, &[]),
            HasWork("q", false),
            Suspend("a", false),
            HasWork("q", true),
            Claim("q", 1, 10, &[("a", 2)]),
            Status("a", Some(st(4, 1, 1, 2))),
            Suspend("nope", true),
        ],
    );
}

#[test]
fn done_frames_at_upsert_are_not_granted() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 5, 0, 0), &[2, 4, 99, 2], JobChange::Added, &[]),
            Status("j", Some(st(5, 2, 0, 3))),
            Claim("a", 5, 0, &[("j", 1), ("j", 3), ("j", 5)]),
            Stored("j", 2, &[]),
            Status("j", Some(st(5, 2, 3, 0))),
            Upsert(desc("all", 1, 2, 0, 1), &[1, 2], JobChange::Added, &[]),
            Status("all", Some(st(2, 2, 0, 0))),
            Offers(&[("j", 0)]),
        ],
    );
}

#[test]
fn restarted_scheduler_resumes_from_done_frames() {
    // First life: some frames get stored, which the host persists.
    let mut first = run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 6, 0, 0), &[], JobChange::Added, &[]),
            Upsert(desc("k", 1, 2, 0, 1), &[], JobChange::Added, &[]),
            Claim("a", 4, 0, &[("j", 1), ("j", 2), ("j", 3), ("j", 4)]),
            Rendered("a", "j", 1, Verdict::Accept),
            Stored("j", 1, &[]),
            Rendered("a", "j", 3, Verdict::Accept),
            Stored("j", 3, &[]),
        ],
    );
    let durable: Vec<u32> =
        (1..=6).filter(|&f| first.s.jobs.values().any(|j| j.state(f) == Some(FrameState::Done))).collect();
    assert_eq!(durable, vec![1, 3]);
    first.s = Scheduler::new(SchedulerConfig::default());
    // Second life: jobs re-added with their done frames; in-flight leases were lost with the old process.
    first.run(vec![
        Upsert(desc("k", 1, 2, 0, 1), &[], JobChange::Added, &[]),
        Upsert(desc("j", 1, 6, 0, 0), &[1, 3], JobChange::Added, &[]),
        Status("j", Some(st(6, 2, 0, 4))),
        // `a` held frames 2 and 4 in the previous life; this scheduler never granted them, so its result is
        // refused (the .blend may have changed meanwhile) and the frames go out again.
        Rendered("a", "j", 2, Verdict::Discard),
        Claim("c", 10, 0, &[("j", 2), ("j", 4), ("j", 5), ("j", 6), ("k", 1), ("k", 2)]),
        Rendered("a", "j", 4, Verdict::Discard),
        Rendered("c", "j", 4, Verdict::Accept),
    ]);
}

#[test]
fn empty_range_has_no_frames() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("empty", 5, 4, 0, 0), &[], JobChange::Added, &[]),
            Status("empty", Some(st(0, 0, 0, 0))),
            Offers(&[]),
            Claim("a", 2, 0, &[]),
            Upsert(desc("top", u32::MAX - 1, u32::MAX, 0, 2), &[], JobChange::Added, &[]),
            Claim("b", 3, 0, &[("top", u32::MAX - 1), ("top", u32::MAX)]),
            Rendered("b", "top", u32::MAX, Verdict::Accept),
            Stored("top", u32::MAX, &[]),
            Status("top", Some(st(2, 1, 1, 0))),
        ],
    );
}

/// A bogus range cannot allocate gigabytes: it is capped at [`MAX_JOB_FRAMES`]. (No invariant walk over 16 M frames
/// here, which would be slow in a debug build.)
#[test]
fn frame_grid_letters_and_runs() {
    let mut s = S::new(SchedulerConfig { max_frame_failures: 5, ..Default::default() });
    s.upsert_job(desc("j", 10, 17, 0, 0), &[10, 11]);
    let t = Instant::now();
    let granted = s.claim(&"a", 2, t);
    assert_eq!(granted.iter().map(|g| g.frame).collect::<Vec<_>>(), [12, 13]);
    s.frame_failed(&"a", "j", 13, blend(1), "boom");
    assert_eq!(s.frame_grid("j", 100), Some((10, "ddrfpppp".to_string(), 1)));
    assert_eq!(s.status("j").map(|st| st.failing), Some(1));
    // Runs of 3: the most telling state of each run wins.
    assert_eq!(s.frame_grid("j", 3), Some((10, "rfp".to_string(), 3)));
    assert_eq!(s.frame_grid("nope", 3), None);
}

#[test]
fn huge_range_is_capped() {
    let mut s: S = Scheduler::new(SchedulerConfig::default());
    let now = Instant::now();
    assert_eq!(s.upsert_job(desc("huge", 0, u32::MAX, 0, 0), &[u32::MAX, 1]).0, JobChange::Added);
    assert_eq!(s.status("huge"), Some(st(MAX_JOB_FRAMES, 1, 0, MAX_JOB_FRAMES - 1)));
    let frames: Vec<u32> = s.claim(&"a", 2, now).iter().map(|g| g.frame).collect();
    assert_eq!(frames, vec![0, 2]);
    assert_eq!(s.rendered(&"a", "huge", u32::MAX, blend(1)), Verdict::Discard);
    assert_eq!(s.rendered(&"a", "huge", MAX_JOB_FRAMES, blend(1)), Verdict::Discard);
}

/// A 100,000-frame job is claimed through in small batches, with requeues mixed in, and ends with no per-frame
/// leftovers. (How fast is the scaling benchmark's business, not a test's.)
#[test]
fn hundred_thousand_frames_claim_through() {
    const FRAMES: u32 = 100_000;
    let mut s: S = Scheduler::new(SchedulerConfig::default());
    s.upsert_job(desc("big", 1, FRAMES, 0, 0), &[]);
    let peers: Vec<P> = vec!["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"];
    let now = Instant::now();
    let mut stored = 0u32;
    let mut round = 0usize;
    while stored < FRAMES {
        let peer = &peers[round % peers.len()];
        round += 1;
        let grants = s.claim(peer, 8, now);
        assert!(!grants.is_empty(), "ran dry at {stored}");
        for (i, g) in grants.iter().enumerate() {
            // Every 50th round the peer leaves before finishing its last frame: that frame is requeued.
            if round.is_multiple_of(50) && i + 1 == grants.len() {
                assert_eq!(s.peer_gone(peer), vec![("big".to_owned(), g.frame)]);
                continue;
            }
            assert_eq!(s.rendered(peer, "big", g.frame, blend(1)), Verdict::Accept);
            assert!(s.frame_stored("big", g.frame, blend(1)).is_empty());
            stored += 1;
        }
    }
    check_invariants(&s, "end");
    assert_eq!(s.status("big"), Some(st(FRAMES, FRAMES, 0, 0)));
    let job = s.jobs.values().next().expect("the job");
    assert!(job.frames.capacity() <= FRAMES as usize && job.requeued.is_empty() && job.leases.is_empty());
}

/// Jobs only volunteers with the right Blender can render.
mod caps;
/// Jobs that change under the scheduler: range edits, a new .blend, removal, a peer leaving.
mod changes;
/// Leases, backups and failures: the tests of work that goes missing.
mod leases;
/// A seeded farm of 50 volunteers run to the end.
mod simulation;
/// Frames a volunteer should not be trusted with: refused, redone after a ban, failures the owner overrules.
mod trust;
