//! Scheduler tests of jobs that change: range edits, a new .blend, removal, a peer leaving.

use super::*;

#[test]
fn range_edit_keeps_done_frames_and_recalls_leases_outside() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 10, 0, 0), &[], JobChange::Added, &[]),
            Claim("a", 3, 0, &[("j", 1), ("j", 2), ("j", 3)]),
            Claim("b", 2, 0, &[("j", 4), ("j", 5)]),
            Rendered("a", "j", 1, Verdict::Accept),
            Stored("j", 1, &[]),
            Rendered("a", "j", 2, Verdict::Accept),
            Stored("j", 2, &[]),
            Upsert(desc("j", 2, 4, 0, 0), &[], JobChange::Updated, &[("b", "j", 5)]),
            Status("j", Some(st(3, 1, 2, 0))),
            Rendered("b", "j", 5, Verdict::Discard),
            Rendered("a", "j", 3, Verdict::Accept),
            // Growing again: frame 1 fell out of the range, so only durable state can say it is done.
            Upsert(desc("j", 0, 6, 0, 0), &[1], JobChange::Updated, &[]),
            Status("j", Some(st(7, 2, 2, 3))),
            Claim("c", 10, 1, &[("j", 0), ("j", 5), ("j", 6)]),
            // Leases inside the range survived the edits.
            Renew("a", "j", 3, 1, true),
            Renew("b", "j", 4, 1, true),
            Renew("b", "j", 5, 1, false),
        ],
    );
}

#[test]
fn blend_change_restarts_the_job() {
    let mut h = run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 3, 0, 0), &[], JobChange::Added, &[]),
            Claim("a", 2, 0, &[("j", 1), ("j", 2)]),
            Failed("a", "j", 1, "oom", Fail::Retry),
            Rendered("a", "j", 2, Verdict::Accept),
            Stored("j", 2, &[]),
            Claim("b", 1, 0, &[("j", 1)]),
            Claim("a", 1, 0, &[("j", 3)]),
            Suspend("j", true),
            Upsert(
                JobDesc { blend: blend(2), ..desc("j", 1, 3, 0, 0) },
                &[3],
                JobChange::Restarted,
                &[("a", "j", 3), ("b", "j", 1)],
            ),
            // Everything pending again (the done list describes the old scene), suspension kept.
            Status("j", Some(JobStatus { suspended: true, ..st(3, 0, 0, 3) })),
            Rendered("a", "j", 3, Verdict::Discard),
            Failed("b", "j", 1, "x", Fail::Ignored),
            Suspend("j", false),
            // The old failure is forgotten: `a` may render frame 1 of the new scene.
            Claim("a", 1, 0, &[("j", 1)]),
        ],
    );
    let grants = h.s.claim(&"c", 1, h.at(0));
    assert_eq!(grants, vec![Grant { job: "j".into(), frame: 2, blend: blend(2), blend_size: 1000 }]);
}

#[test]
fn upsert_reports_unchanged_and_applies_done_frames() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 3, 0, 0), &[], JobChange::Added, &[]),
            Upsert(desc("j", 1, 3, 0, 0), &[], JobChange::Unchanged, &[]),
            Claim("a", 1, 0, &[("j", 1)]),
            // Durable state wins: a frame listed as done is done, and its holder stops.
            Upsert(desc("j", 1, 3, 0, 0), &[1], JobChange::Unchanged, &[("a", "j", 1)]),
            Status("j", Some(st(3, 1, 0, 2))),
            Upsert(JobDesc { blend_size: 5, ..desc("j", 1, 3, 0, 0) }, &[], JobChange::Updated, &[]),
            Upsert(desc("j", 1, 3, 0, 7), &[], JobChange::Updated, &[]),
            Claim("b", 1, 0, &[("j", 2)]),
        ],
    );
}

#[test]
fn remove_recalls_in_flight_frames() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 5, 0, 0), &[], JobChange::Added, &[]),
            Claim("a", 2, 0, &[("j", 1), ("j", 2)]),
            Claim("b", 1, 0, &[("j", 3)]),
            Remove("j", &[("a", "j", 1), ("a", "j", 2), ("b", "j", 3)]),
            Status("j", None),
            Offers(&[]),
            Rendered("a", "j", 1, Verdict::Discard),
            Failed("a", "j", 1, "x", Fail::Ignored),
            Stored("j", 1, &[]),
            Remove("j", &[]),
            // A job re-added under the same name is a new incarnation: old holders' results are not taken.
            Upsert(desc("j", 1, 5, 0, 0), &[], JobChange::Added, &[]),
            Rendered("a", "j", 1, Verdict::Discard),
        ],
    );
}

#[test]
fn peer_gone_requeues_its_frames() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 4, 0, 0), &[], JobChange::Added, &[]),
            Upsert(desc("k", 1, 1, 0, 1), &[], JobChange::Added, &[]),
            Claim("a", 2, 0, &[("j", 1), ("j", 2)]),
            Claim("b", 1, 0, &[("j", 3)]),
            // j's last frame waits for a peer with nothing to render (a holds two unrendered): a gets k's only.
            Claim("a", 2, 0, &[("k", 1)]),
            Gone("a", &[("j", 1), ("j", 2), ("k", 1)]),
            Status("j", Some(st(4, 0, 1, 3))),
            Claim("c", 5, 1, &[("j", 1), ("j", 2), ("j", 4), ("k", 1)]),
            Gone("x", &[]),
            // If `a` comes back with a result, it is still welcome: frame 1 is not done.
            Rendered("a", "j", 1, Verdict::Accept),
            Stored("j", 1, &[("c", "j", 1)]),
        ],
    );
}

/// The one rule for every message about a frame: it counts only for the version the job has now.
#[test]
fn messages_about_an_older_version_never_count() {
    let mut s = S::new(SchedulerConfig::default());
    let now = Instant::now();
    s.upsert_job(desc("j", 1, 2, 0, 0), &[]);
    assert_eq!(s.claim(&"a", 1, now)[0].blend, blend(1));
    // A texture changed: the job restarts with a new version, and "a" is granted frame 1 of it.
    s.upsert_job(JobDesc { blend: blend(2), ..desc("j", 1, 2, 0, 0) }, &[]);
    assert_eq!(s.claim(&"a", 1, now)[0].blend, blend(2));
    // (peer, version) → what a renewal, a result and a failure report get.
    let table = [
        (blend(1), false, Verdict::Discard, FailOutcome::Ignored),
        (blend(2), true, Verdict::Accept, FailOutcome::Retry),
    ];
    // A frame of the old version stored late changes nothing.
    assert!(s.frame_stored("j", 2, blend(1)).is_empty());
    assert_eq!(s.status("j").map(|st| st.done), Some(0));
    for (version, renewed, verdict, failure) in table {
        assert_eq!(s.renew(&"a", "j", 1, version, now), renewed, "{version:?}");
        assert_eq!(s.rendered(&"a", "j", 1, version), verdict, "{version:?}");
        assert_eq!(s.frame_failed(&"a", "j", 1, version, "boom"), failure, "{version:?}");
    }
}
