//! Refused frames, frames redone after a ban, and failures the owner's Blender overrules.

use super::*;

/// A refused frame goes back to the queue for others and counts against its sender only: three refusals from three
/// peers never fail the job, and the sender is not given the frame again; enough refusals blocklist it.
#[test]
fn refused_frames_count_against_the_sender_not_the_job() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 4, 0, 0), &[], JobChange::Added, &[]),
            Claim("x", 1, 0, &[("j", 1)]),
            Rendered("x", "j", 1, Verdict::Accept),
            Refused("x", "j", 1),
            Claim("y", 1, 0, &[("j", 1)]),
            Refused("y", "j", 1),
            Claim("z", 1, 0, &[("j", 1)]),
            Refused("z", "j", 1),
            Status("j", Some(st(4, 0, 0, 4))),
            Claim("x", 1, 0, &[("j", 2)]),
            Refused("x", "j", 2),
            Claim("x", 1, 0, &[("j", 3)]),
            Refused("x", "j", 3),
            HasWork("x", false),
            Claim("x", 1, 0, &[]),
            // A refusal from a peer that never held the frame changes nothing.
            Refused("q", "j", 4),
            Claim("q", 1, 0, &[("j", 1)]),
        ],
    );
}

/// Three fresh identities that fail one frame fail the job; when the owner's Blender renders that frame, the
/// failure is overruled: the job goes on, the frame is pending for someone else, and the reporters never get it.
#[test]
fn a_failure_the_owner_does_not_reproduce_is_overruled() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 2, 0, 0), &[], JobChange::Added, &[]),
            Claim("x", 1, 0, &[("j", 1)]),
            Failed("x", "j", 1, "boom", Fail::Retry),
            Claim("y", 1, 0, &[("j", 1)]),
            Failed("y", "j", 1, "boom", Fail::Retry),
            Claim("z", 1, 0, &[("j", 1)]),
            Failed("z", "j", 1, "boom", Fail::JobFailed("frame 1 failed on 3 volunteers")),
            Offers(&[]),
            Overrule("j", 1, true),
            Overrule("j", 2, true),
            Offers(&[("j", 2)]),
            Claim("x", 2, 0, &[("j", 2)]),
            Claim("w", 2, 0, &[("j", 1)]),
        ],
    );
}

/// Frames of a banned volunteer are rendered again: done frames become pending, others are left alone.
#[test]
fn redone_frames_are_pending_again() {
    run(
        SchedulerConfig::default(),
        vec![
            Upsert(desc("j", 1, 3, 0, 0), &[1, 2, 3], JobChange::Added, &[]),
            Status("j", Some(st(3, 3, 0, 0))),
            Redo("j", &[1, 3, 7], 2),
            Redo("nope", &[1], 0),
            Status("j", Some(st(3, 1, 0, 2))),
            Redo("j", &[1], 0),
            Claim("a", 5, 0, &[("j", 1), ("j", 3)]),
        ],
    );
}
