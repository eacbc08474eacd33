//! The scheduler's side of trusting nothing a volunteer sends: frames the host refused, frames redone after their
//! author was banned, failures the owner's Blender overrules, and grants for spot-check copies. The spot-check rules
//! themselves are in [`super::verify`].

use std::fmt::Debug;
use std::hash::Hash;

use super::job::FrameState;
use super::{grant, BlendHash, Grant, Scheduler};

impl<P: Clone + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// The owner's own Blender rendered `frame`, which volunteers reported failing: their reports are not evidence
    /// against the scene. The job is no longer failed (if that frame failed it) and the frame's failure count starts
    /// over; the reporters keep their own failures (they are not given that frame again). False when the job failed
    /// on another frame or is unknown.
    pub fn overrule_failure(&mut self, name: &str, frame: u32) -> bool {
        let Some(job) = self.job_mut(name) else { return false };
        if job.failed.as_ref().is_some_and(|(f, _)| *f != frame) {
            return false;
        }
        job.failed = None;
        job.frame_failures.remove(&frame);
        true
    }

    /// The host refused the frame `peer` delivered (it did not decode, had the wrong size or format): the frame goes
    /// back to the queue for someone else and counts against the peer (it is never given this frame again, and
    /// `max_peer_failures` refusals blocklist it for the job), but not against the frame: a volunteer that sends junk
    /// says nothing about the scene, so refusals alone never fail a job.
    pub fn frame_refused(&mut self, peer: &P, job: &str, frame: u32, version: BlendHash) {
        let Some(j) = self.current_mut(job, version) else { return };
        if j.state(frame) == Some(FrameState::Done) {
            return;
        }
        let held = j.drop_holder(frame, peer);
        if held || j.is_late(peer, frame) {
            j.forget_late(frame, peer);
            j.record_peer_failure(peer, frame);
        }
    }

    /// Done frames that must be rendered again (their author was caught delivering a wrong frame): each becomes
    /// pending. Returns how many were done.
    pub fn redo(&mut self, job: &str, frames: &[u32]) -> usize {
        let Some(j) = self.job_mut(job) else { return 0 };
        frames.iter().filter(|&&f| j.unmark_done(f)).count()
    }

    /// Whether `peer` may render check copies of `job`: it exists, has not failed, the peer's Blender can render it
    /// and the peer is not blocklisted for it.
    pub fn serves_checks(&self, peer: &P, job: &str) -> bool {
        self.job(job).is_some_and(|j| {
            self.can_render(peer, j) && !j.blocks(peer, self.config.max_peer_failures) && j.failed.is_none()
        })
    }

    /// A grant of `frame` of `job` for `peer`, for a check copy: only if the job exists, the peer can render it and
    /// is not blocklisted for it (suspended or finished jobs still get their checks).
    pub fn check_grant(&self, peer: &P, job: &str, frame: u32) -> Option<Grant> {
        let j = self.job(job)?;
        self.serves_checks(peer, job).then(|| grant(&j.desc, frame))
    }

    /// Whether `version` is the job's current .blend (the job exists and was not restarted since).
    pub fn is_current(&self, job: &str, version: BlendHash) -> bool {
        self.job(job).is_some_and(|j| j.desc.blend == version)
    }
}
