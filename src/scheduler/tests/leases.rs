//! Scheduler tests of leases, backups in the tail and failures.

use super::*;

#[test]
fn leases_expire_on_tick() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 3, 0, 0), &[], JobChange::Added, &[]),
            Claim("a", 2, 0, &[("j", 1), ("j", 2)]),
            Claim("b", 1, 10, &[("j", 3)]),
            Tick(29, &[]),
            Tick(30, &[("a", "j", 1), ("a", "j", 2)]),
            Status("j", Some(st(3, 0, 1, 2))),
            Renew("a", "j", 1, 31, false),
            Tick(40, &[("b", "j", 3)]),
            Tick(40, &[]),
            Claim("c", 3, 41, &[("j", 1), ("j", 2), ("j", 3)]),
        ],
    );
}

#[test]
fn renew_extends_a_lease() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 2, 0, 0), &[], JobChange::Added, &[]),
            Claim("a", 1, 0, &[("j", 1)]),
            Renew("a", "j", 1, 20, true),
            Tick(30, &[]),
            Tick(49, &[]),
            Renew("b", "j", 1, 49, false),
            Renew("a", "j", 2, 49, false),
            Renew("a", "nope", 1, 49, false),
            Tick(50, &[("a", "j", 1)]),
        ],
    );
}

#[test]
fn renew_peer_extends_all_its_leases() {
    let mut h = run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 3, 0, 0), &[], JobChange::Added, &[]),
            Claim("a", 2, 0, &[("j", 1), ("j", 2)]),
            Claim("b", 1, 0, &[("j", 3)]),
        ],
    );
    assert_eq!(h.s.renew_peer(&"a", h.at(25)), 2);
    assert_eq!(h.s.renew_peer(&"z", h.at(25)), 0);
    assert_eq!(h.s.leases_of(&"a"), vec![("j".to_owned(), 1), ("j".to_owned(), 2)]);
    h.run(vec![Tick(30, &[("b", "j", 3)]), Tick(55, &[("a", "j", 1), ("a", "j", 2)])]);
    assert!(h.s.leases_of(&"a").is_empty());
}

#[test]
fn late_result_is_accepted_until_the_frame_is_done() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 2, 0, 0), &[], JobChange::Added, &[]),
            Claim("a", 1, 0, &[("j", 1)]),
            Tick(30, &[("a", "j", 1)]),
            Rendered("a", "j", 1, Verdict::Accept),
            Stored("j", 1, &[]),
            Status("j", Some(st(2, 1, 0, 1))),
            Rendered("a", "j", 1, Verdict::Discard),
            // Done at most once.
            Stored("j", 1, &[]),
            Status("j", Some(st(2, 1, 0, 1))),
            Rendered("z", "j", 2, Verdict::Discard),
            Rendered("a", "j", 9, Verdict::Discard),
            Rendered("a", "nope", 1, Verdict::Discard),
            Stored("j", 9, &[]),
            Stored("nope", 1, &[]),
        ],
    );
}

#[test]
fn backup_copy_in_the_tail_and_first_result_wins() {
    let config = SchedulerConfig { lease_timeout: secs(1000), ..SchedulerConfig::default() };
    run(
        config,
        vec![
            Upsert(desc("j", 1, 3, 0, 0), &[], JobChange::Added, &[]),
            Claim("a", 3, 0, &[("j", 1), ("j", 2), ("j", 3)]),
            Rendered("a", "j", 1, Verdict::Accept),
            Stored("j", 1, &[]),
            Claim("b", 1, 100, &[]),
            // Frames 2 and 3 went out together; the lower one is backed up first.
            Claim("b", 1, 180, &[("j", 2)]),
            Claim("b", 1, 181, &[("j", 3)]),
            Claim("b", 1, 181, &[]),
            Claim("c", 2, 181, &[]),
            Status("j", Some(st(3, 1, 2, 0))),
            Rendered("b", "j", 2, Verdict::Accept),
            Stored("j", 2, &[("a", "j", 2)]),
            Rendered("a", "j", 2, Verdict::Discard),
            Rendered("a", "j", 3, Verdict::Accept),
            Stored("j", 3, &[("b", "j", 3)]),
            Status("j", Some(st(3, 3, 0, 0))),
            Offers(&[]),
        ],
    );
}

#[test]
fn backups_skip_uploading_frames_and_frames_the_peer_failed() {
    let config = SchedulerConfig { lease_timeout: secs(1000), ..SchedulerConfig::default() };
    run(
        config,
        vec![
            Upsert(desc("j", 1, 2, 0, 0), &[], JobChange::Added, &[]),
            Claim("a", 1, 0, &[("j", 1)]),
            Claim("b", 1, 0, &[("j", 2)]),
            Failed("b", "j", 2, "gpu", Fail::Retry),
            Claim("c", 1, 0, &[("j", 2)]),
            Rendered("a", "j", 1, Verdict::Accept),
            // Frame 1 is uploading, frame 2 failed on `b`: nothing to back up for it.
            Claim("b", 1, 500, &[]),
            Claim("d", 2, 500, &[("j", 2)]),
            // The original expires; the backup keeps the frame leased, so it is not pending.
            Tick(1000, &[("a", "j", 1), ("c", "j", 2)]),
            // Frame 2 failed once and is not done: it counts as failing.
            Status("j", Some(JobStatus { failing: 1, ..st(2, 0, 1, 1) })),
            Gone("d", &[("j", 2)]),
            Status("j", Some(JobStatus { failing: 1, ..st(2, 0, 0, 2) })),
        ],
    );
}

#[test]
fn failed_frame_is_retried_on_another_peer_only() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 2, 0, 0), &[], JobChange::Added, &[]),
            Claim("a", 1, 0, &[("j", 1)]),
            Failed("a", "j", 1, "boom", Fail::Retry),
            Status("j", Some(JobStatus { failing: 1, ..st(2, 0, 0, 2) })),
            Claim("a", 2, 1, &[("j", 2)]),
            HasWork("a", false),
            HasWork("b", true),
            Claim("b", 1, 1, &[("j", 1)]),
            // `a` no longer holds frame 1; a repeated report changes nothing.
            Failed("a", "j", 1, "boom", Fail::Ignored),
            Failed("a", "j", 7, "boom", Fail::Ignored),
            Failed("a", "nope", 1, "boom", Fail::Ignored),
        ],
    );
}

#[test]
fn late_failure_counts_but_stale_ones_do_not() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 1, 0, 0), &[], JobChange::Added, &[]),
            Claim("a", 1, 0, &[("j", 1)]),
            Tick(30, &[("a", "j", 1)]),
            Claim("b", 1, 30, &[("j", 1)]),
            // `a` lost its lease but was working on the frame: its failure is real.
            Failed("a", "j", 1, "boom", Fail::Retry),
            Failed("a", "j", 1, "boom", Fail::Ignored),
            Gone("b", &[("j", 1)]),
            Claim("a", 1, 31, &[]),
        ],
    );
}

#[test]
fn job_fails_after_three_distinct_peers_fail_a_frame() {
    let mut h = run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 5, 0, 0), &[], JobChange::Added, &[]),
            Claim("a", 1, 0, &[("j", 1)]),
            Failed("a", "j", 1, "e1", Fail::Retry),
            Claim("b", 1, 0, &[("j", 1)]),
            Failed("b", "j", 1, "e2", Fail::Retry),
            Claim("c", 1, 0, &[("j", 1)]),
            Claim("d", 2, 0, &[("j", 2), ("j", 3)]),
            Failed("c", "j", 1, "segfault in cycles", Fail::JobFailed("segfault in cycles")),
            FailedWith("j", "frame 1"),
            Claim("e", 1, 0, &[]),
            Offers(&[]),
            HasWork("e", false),
            // In-flight frames go on and are kept.
            Renew("d", "j", 2, 1, true),
            Rendered("d", "j", 2, Verdict::Accept),
            Stored("j", 2, &[]),
            // Later failures do not fail the job again.
            Failed("d", "j", 3, "again", Fail::Retry),
            FailedWith("j", "segfault in cycles"),
            Claim("d", 1, 1, &[]),
            Claim("f", 1, 1, &[]),
        ],
    );
    assert!(h.s.clear_failures("j"));
    assert!(!h.s.clear_failures("nope"));
    h.run(vec![Status("j", Some(st(5, 1, 0, 4))), Claim("a", 2, 2, &[("j", 1), ("j", 3)])]);
}

#[test]
fn peer_is_blocklisted_after_three_failures_in_a_job() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 10, 0, 0), &[], JobChange::Added, &[]),
            Upsert(desc("k", 1, 2, 0, 1), &[], JobChange::Added, &[]),
            Claim("a", 3, 0, &[("j", 1), ("j", 2), ("j", 3)]),
            Failed("a", "j", 1, "x", Fail::Retry),
            Failed("a", "j", 2, "x", Fail::Retry),
            HasWork("a", true),
            Failed("a", "j", 3, "x", Fail::Retry),
            Claim("a", 3, 1, &[("k", 1), ("k", 2)]),
            HasWork("a", false),
            Claim("b", 3, 1, &[("j", 1), ("j", 2), ("j", 3)]),
            Offers(&[("j", 7), ("k", 0)]),
        ],
    );
}

#[test]
fn an_upload_that_never_arrives_stops_being_renewed_and_the_frame_moves_on() {
    let config = SchedulerConfig { upload_timeout: secs(60), ..SchedulerConfig::default() };
    let mut s: S = Scheduler::new(config);
    let t0 = Instant::now();
    s.upsert_job(desc("j", 1, 1, 0, 0), &[]);
    assert_eq!(s.claim(&"a", 1, t0).len(), 1);
    assert_eq!(s.rendered(&"a", "j", 1, blend(1)), Verdict::Accept);
    // Renewed while the upload is reasonably young...
    assert!(s.renew(&"a", "j", 1, blend(1), t0 + secs(30)));
    assert!(s.renew(&"a", "j", 1, blend(1), t0 + secs(55)));
    // ...but not forever: past the upload timeout the renewal is refused and the lease runs out.
    assert!(!s.renew(&"a", "j", 1, blend(1), t0 + secs(61)));
    let expired = s.tick(t0 + secs(61) + SchedulerConfig::default().lease_timeout);
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(s.claim(&"b", 1, t0 + secs(100)).len(), 1, "the frame did not go to another volunteer");
    // The slow upload is still welcome if it arrives first.
    assert_eq!(s.rendered(&"a", "j", 1, blend(1)), Verdict::Accept);
}

#[test]
fn the_last_frames_go_to_peers_with_nothing_to_render() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 6, 0, 0), &[], JobChange::Added, &[]),
            Claim("a", 1, 0, &[("j", 1)]),
            Claim("b", 1, 0, &[("j", 2)]),
            // Four pending, two peers working: claiming ahead is fine.
            Claim("a", 1, 0, &[("j", 3)]),
            Claim("b", 1, 0, &[("j", 4)]),
            // Two pending, two peers working: still fine.
            Claim("a", 1, 0, &[("j", 5)]),
            // One pending, two working, and b holds frame 4 unrendered: the last frame waits for an idle peer.
            Claim("b", 1, 0, &[]),
            Claim("c", 1, 0, &[("j", 6)]),
            Status("j", Some(st(6, 0, 6, 0))),
        ],
    );
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 3, 0, 0), &[], JobChange::Added, &[]),
            Claim("a", 1, 0, &[("j", 1)]),
            Claim("b", 1, 0, &[("j", 2)]),
            // a holds frame 1 unrendered: held back; once it reports frame 1 rendered it holds nothing to render.
            Claim("a", 1, 0, &[]),
            Rendered("a", "j", 1, Verdict::Accept),
            Claim("a", 1, 0, &[("j", 3)]),
        ],
    );
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 2, 0, 0), &[], JobChange::Added, &[]),
            // A lone volunteer is never held back: nobody else would take the frame.
            Claim("a", 1, 0, &[("j", 1)]),
            Claim("a", 1, 0, &[("j", 2)]),
        ],
    );
}
