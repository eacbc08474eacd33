//! The owner's frame scheduler: which volunteer renders which frame of which job, and when to give up on one.
//!
//! It is a pure state machine in the style of raft-rs: time (`now`) and messages (claims, reports, departures) are
//! inputs, and everything the caller must act on (grants, recalls, requeued frames, verdicts) comes back as data. It
//! reads no clock, touches no file and never awaits, so every rule below is tested by feeding inputs in order, and
//! the host's event loop stays the only place with side effects.
//!
//! Model. A job is a range of frames of one .blend. A frame is pending, leased (to one peer, or to two when a backup
//! copy races a straggler in the tail) or done. Leases expire unless renewed, so a silent volunteer cannot sit on
//! work. Results are judged by whether the frame is still wanted, not by whether the lease is still current: a late
//! result from a peer that held the frame (in this incarnation of the job) is as good as a fresh one while nobody has
//! finished it. Frames are done at most once; the host persists "done" and feeds it back through
//! [`Scheduler::upsert_job`] after a restart.
//!
//! Cost. Per job, one byte per frame plus small maps for the frames that are leased, requeued or failed (about
//! 100 KiB for 100,000 frames). A claim is amortised O(1) per granted frame plus O(log n) for requeued ones; tick,
//! peer departure and backup selection walk the current leases, which number at most the volunteers' slots.

mod job;
#[cfg(test)]
mod tests;
mod trust;
mod types;
pub mod verify;

pub use types::*;

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

use job::{FrameState, Job};

/// Jobs are kept sorted by this key, so iteration order is service order: priority high to low, then oldest first
/// (the name only breaks exact ties deterministically).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ServiceKey {
    priority: Reverse<i32>,
    order: u64,
    name: String,
}

impl ServiceKey {
    fn of(desc: &JobDesc) -> Self {
        ServiceKey { priority: Reverse(desc.priority), order: desc.order, name: desc.name.clone() }
    }
}

/// The owner's scheduler over peers of type `P` (a libp2p `PeerId` in the real program).
#[derive(Debug)]
pub struct Scheduler<P> {
    config: SchedulerConfig,
    jobs: BTreeMap<ServiceKey, Job<P>>,
    keys: HashMap<String, ServiceKey>,
    /// What each peer's Blender can do, for peers that said; forgotten when the peer leaves.
    caps: HashMap<P, PeerCaps>,
}

fn recall<P>(job: &str, frame: u32, peer: P) -> Recall<P> {
    Recall { peer, job: job.to_owned(), frame }
}

impl<P: Clone + Eq + Hash + Ord + Debug> Scheduler<P> {
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler { config, jobs: BTreeMap::new(), keys: HashMap::new(), caps: HashMap::new() }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    fn job(&self, name: &str) -> Option<&Job<P>> {
        self.jobs.get(self.keys.get(name)?)
    }

    fn job_mut(&mut self, name: &str) -> Option<&mut Job<P>> {
        self.jobs.get_mut(self.keys.get(name)?)
    }

    /// The job, if `version` (the hash a grant named) is its current one. Every message about a frame passes here:
    /// nothing rendered from, renewed for or failed on a job's older files ever counts for its new ones.
    fn current_mut(&mut self, name: &str, version: BlendHash) -> Option<&mut Job<P>> {
        self.job_mut(name).filter(|j| j.desc.blend == version)
    }

    /// Adds or updates a job. `done`: frames already finished (from durable state); ignored if outside the range,
    /// and ignored on [`JobChange::Restarted`]. For an existing job, listed frames are marked done too (durable state
    /// wins) and their holders recalled.
    pub fn upsert_job(&mut self, desc: JobDesc, done: &[u32]) -> (JobChange, Vec<Recall<P>>) {
        let Some(old_key) = self.keys.get(&desc.name).cloned() else {
            self.keys.insert(desc.name.clone(), ServiceKey::of(&desc));
            self.jobs.insert(ServiceKey::of(&desc), Job::new(desc, done));
            return (JobChange::Added, Vec::new());
        };
        let Some(mut job) = self.jobs.remove(&old_key) else {
            // Unreachable while `keys` and `jobs` agree; treat as new rather than panic.
            self.keys.insert(desc.name.clone(), ServiceKey::of(&desc));
            self.jobs.insert(ServiceKey::of(&desc), Job::new(desc, done));
            return (JobChange::Added, Vec::new());
        };
        let name = desc.name.clone();
        let key = ServiceKey::of(&desc);
        let (change, dropped) = if job.desc.blend != desc.blend {
            let dropped = job.take_all_leases();
            let suspended = job.suspended;
            job = Job::new(desc, &[]);
            job.suspended = suspended;
            (JobChange::Restarted, dropped)
        } else {
            let change = if job.desc == desc { JobChange::Unchanged } else { JobChange::Updated };
            let mut dropped = Vec::new();
            if (job.desc.first, job.desc.last) != (desc.first, desc.last) {
                dropped = job.rerange(desc.first, desc.last);
            }
            job.desc = desc;
            for &frame in done {
                dropped.extend(job.mark_done(frame).into_iter().map(|peer| (frame, peer)));
            }
            (change, dropped)
        };
        let recalls = dropped.into_iter().map(|(frame, peer)| recall(&name, frame, peer)).collect();
        self.keys.insert(name, key.clone());
        self.jobs.insert(key, job);
        (change, recalls)
    }

    /// Forgets a job; every in-flight frame is recalled.
    pub fn remove_job(&mut self, name: &str) -> Vec<Recall<P>> {
        let Some(key) = self.keys.remove(name) else {
            return Vec::new();
        };
        let Some(mut job) = self.jobs.remove(&key) else {
            return Vec::new();
        };
        job.take_all_leases().into_iter().map(|(frame, peer)| recall(name, frame, peer)).collect()
    }

    /// A suspended job grants nothing new; in-flight leases continue and their results are kept, so suspending is
    /// cheap to undo.
    pub fn set_suspended(&mut self, name: &str, suspended: bool) {
        if let Some(job) = self.job_mut(name) {
            job.suspended = suspended;
        }
    }

    /// Forgets a job's failure, its frames' failure counts and its blocklist, e.g. after the owner fixed a volunteer
    /// problem without changing the .blend. Returns false for an unknown job.
    pub fn clear_failures(&mut self, name: &str) -> bool {
        let Some(job) = self.job_mut(name) else { return false };
        job.failed = None;
        job.frame_failures.clear();
        job.peer_failures.clear();
        true
    }

    /// Records what `peer`'s Blender can do; jobs it cannot render are no longer offered to it.
    pub fn set_caps(&mut self, peer: &P, caps: PeerCaps) {
        self.caps.insert(peer.clone(), caps);
    }

    /// Jobs with frames to hand out that no known volunteer can render, each with the reason: `saved by Blender
    /// 4.3; volunteers have 3.4.1`. Empty while no volunteer has said what it can do.
    pub fn unservable(&self) -> Vec<(String, String)> {
        if self.caps.is_empty() {
            return Vec::new();
        }
        let mut have: Vec<&str> = self.caps.values().map(|c| c.blender_text.as_str()).collect();
        have.sort_unstable();
        have.dedup();
        let mut out = Vec::new();
        for job in self.jobs.values().filter(|j| j.eligible() && j.pending > 0) {
            let reasons: Vec<String> = self.caps.values().filter_map(|c| job.desc.needs.unmet_by(c)).collect();
            if reasons.len() == self.caps.len() {
                let reason = reasons.into_iter().next().unwrap_or_default();
                out.push((job.desc.name.clone(), format!("{reason}; volunteers have Blender {}", have.join(", "))));
            }
        }
        out
    }

    /// Whether `peer` can render `job` as far as its reported capabilities tell.
    fn can_render(&self, peer: &P, job: &Job<P>) -> bool {
        self.caps.get(peer).is_none_or(|caps| job.desc.needs.unmet_by(caps).is_none())
    }

    /// Leases up to `slots` frames to `peer`: highest-priority, oldest job first, lowest frame first, skipping
    /// suspended, failed and finished jobs, jobs that blocklist the peer and frames it failed, and jobs in their last
    /// frames when the peer already holds one it has not rendered (`Job::holds_back_from`). Slots left over when
    /// nothing is pending for this peer go to backup copies: per job in service order, the frame out the longest, if
    /// out for at least `backup_after`, held by one peer that is not this one and not already uploading.
    pub fn claim(&mut self, peer: &P, slots: u32, now: Instant) -> Vec<Grant> {
        let want = slots as usize;
        let max_peer_failures = self.config.max_peer_failures;
        let mut grants = Vec::new();
        let able: Vec<bool> = self.jobs.values().map(|j| self.can_render(peer, j)).collect();
        for (job, able) in self.jobs.values_mut().zip(&able) {
            if grants.len() >= want {
                return grants;
            }
            if !able || !job.serves(peer, max_peer_failures) || job.pending == 0 || job.holds_back_from(peer) {
                continue;
            }
            for frame in job.take_pending(peer, want - grants.len(), now) {
                grants.push(grant(&job.desc, frame));
            }
        }
        'backups: while grants.len() < want {
            for (job, able) in self.jobs.values_mut().zip(&able) {
                if !able || !job.serves(peer, max_peer_failures) {
                    continue;
                }
                if let Some(frame) = job.backup_candidate(peer, now, self.config.backup_after) {
                    job.add_holder(frame, peer, now);
                    grants.push(grant(&job.desc, frame));
                    continue 'backups;
                }
            }
            break;
        }
        grants
    }

    /// Extends `peer`'s lease on a frame. False if it holds none (it expired, was recalled, or never existed): the
    /// peer should stop.
    pub fn renew(&mut self, peer: &P, job: &str, frame: u32, version: BlendHash, now: Instant) -> bool {
        let upload_timeout = self.config.upload_timeout;
        let Some(holder) = self.current_mut(job, version).and_then(|j| j.holder_mut(peer, frame)) else {
            return false;
        };
        if holder.rendered_at.is_some_and(|t| now.saturating_duration_since(t) > upload_timeout) {
            return false;
        }
        holder.renewed = now;
        true
    }

    /// Extends every lease `peer` holds, for protocols where any message from a peer is its heartbeat. Returns how
    /// many leases it holds.
    pub fn renew_peer(&mut self, peer: &P, now: Instant) -> usize {
        let upload_timeout = self.config.upload_timeout;
        let mut count = 0;
        for job in self.jobs.values_mut() {
            for holder in job.leases.values_mut().flatten().filter(|h| &h.peer == peer) {
                if holder.rendered_at.is_some_and(|t| now.saturating_duration_since(t) > upload_timeout) {
                    continue;
                }
                holder.renewed = now;
                count += 1;
            }
        }
        count
    }

    /// Answer to "I rendered job/frame; may I upload?". Accept when the job exists, the frame is in range and not
    /// done, and the peer holds a lease on it or lost one by expiry or departure (a late result is welcome while the
    /// frame is not done). Discard otherwise, including from a peer whose lease was recalled by a restart with a new
    /// .blend: the wire report names no .blend, so the lease history is what tells a stale scene apart.
    ///
    /// An accepted holder stays a holder (it is not backed up, and not recalled when another copy wins), and its lease
    /// still expires: the caller renews it while the upload streams in.
    pub fn rendered(&mut self, peer: &P, job: &str, frame: u32, version: BlendHash) -> Verdict {
        let Some(job) = self.current_mut(job, version) else {
            return Verdict::Discard;
        };
        match job.state(frame) {
            None | Some(FrameState::Done) => return Verdict::Discard,
            Some(FrameState::Pending | FrameState::Leased) => {}
        }
        if let Some(holder) = job.holder_mut(peer, frame) {
            holder.rendered = true;
            holder.rendered_at.get_or_insert(holder.renewed);
            return Verdict::Accept;
        }
        if job.is_late(peer, frame) {
            Verdict::Accept
        } else {
            Verdict::Discard
        }
    }

    /// The frame is stored: marks it done (idempotent; unknown job or frame is a no-op). Holders still rendering it
    /// (a backup, or the original when the backup won) are recalled.
    pub fn frame_stored(&mut self, job: &str, frame: u32, version: BlendHash) -> Vec<Recall<P>> {
        let Some(j) = self.current_mut(job, version) else { return Vec::new() };
        j.mark_done(frame).into_iter().map(|peer| recall(job, frame, peer)).collect()
    }

    /// `peer` failed to render a frame. Its lease is dropped and the frame goes back to the queue for other peers;
    /// the failure counts towards the frame (`max_frame_failures` distinct peers fail the job, with a reason quoting
    /// `error`) and towards the peer (`max_peer_failures` distinct frames blocklist it for this job).
    pub fn frame_failed(&mut self, peer: &P, job: &str, frame: u32, version: BlendHash, error: &str) -> FailOutcome {
        let max_frame_failures = self.config.max_frame_failures.max(1) as usize;
        let Some(j) = self.current_mut(job, version) else {
            return FailOutcome::Ignored;
        };
        match j.state(frame) {
            None | Some(FrameState::Done) => return FailOutcome::Ignored,
            Some(FrameState::Pending | FrameState::Leased) => {}
        }
        let held = j.drop_holder(frame, peer);
        if !held && !j.is_late(peer, frame) {
            return FailOutcome::Ignored;
        }
        j.forget_late(frame, peer);
        let failures = j.record_failure(peer, frame);
        if j.failed.is_none() && failures >= max_frame_failures {
            let reason = format!("frame {frame} failed on {failures} volunteers; last error: {error}");
            j.failed = Some((frame, reason.clone()));
            return FailOutcome::JobFailed { reason };
        }
        FailOutcome::Retry
    }

    /// `peer` left: all its leases are dropped at once. Returns them (job, frame); a frame still held by a backup is
    /// not pending again. Its result, should it come back, is still accepted while the frame is not done.
    pub fn peer_gone(&mut self, peer: &P) -> Vec<(String, u32)> {
        self.caps.remove(peer);
        let mut out = Vec::new();
        for job in self.jobs.values_mut() {
            for frame in job.drop_peer(peer) {
                out.push((job.desc.name.clone(), frame));
            }
        }
        out
    }

    /// Expires leases not renewed within `lease_timeout`: the frame is requeued (unless a backup still holds it) and
    /// the peer told to stop.
    pub fn tick(&mut self, now: Instant) -> Vec<Recall<P>> {
        let mut recalls = Vec::new();
        for job in self.jobs.values_mut() {
            for (frame, peer) in job.expire(now, self.config.lease_timeout) {
                recalls.push(recall(&job.desc.name, frame, peer));
            }
        }
        recalls
    }

    /// Jobs open for volunteers (not suspended, failed or finished), in service order, with their pending frames
    /// (zero in the tail, when everything left is leased).
    pub fn offers(&self) -> Vec<(String, u32)> {
        self.jobs.values().filter(|j| j.eligible()).map(|j| (j.desc.name.clone(), j.pending)).collect()
    }

    /// Whether a claim by `peer` would get a pending frame. Backup copies are not considered: they depend on the time.
    pub fn has_work_for(&self, peer: &P) -> bool {
        self.jobs.values().any(|j| {
            self.can_render(peer, j) && j.serves(peer, self.config.max_peer_failures) && j.has_pending_for(peer)
        })
    }

    pub fn status(&self, name: &str) -> Option<JobStatus> {
        let job = self.job(name)?;
        Some(JobStatus {
            total: job.total(),
            done: job.done,
            leased: job.leased,
            pending: job.pending,
            suspended: job.suspended,
            failed: job.failed.as_ref().map(|(_, reason)| reason.clone()),
            finished: job.finished(),
            failing: job.frame_failures.keys().filter(|&&f| job.state(f).is_some_and(|s| s != FrameState::Done)).count()
                as u32,
        })
    }

    /// The state of every frame of job `name`, first frame first: `p` pending, `r` rendering (leased), `d` done,
    /// `f` failed at least once and not done; for the dashboard's grid. Runs of `per_cell` frames share one letter,
    /// the most telling of their states (f, then r, then p, then d), so a long job stays at most `max_cells` long.
    /// Returns (first frame, letters, frames per letter).
    pub fn frame_grid(&self, name: &str, max_cells: usize) -> Option<(u32, String, u32)> {
        let job = self.job(name)?;
        let total = job.frames.len();
        let per_cell = total.div_ceil(max_cells.max(1)).max(1);
        let rank = |c: u8| match c {
            b'f' => 3,
            b'r' => 2,
            b'p' => 1,
            _ => 0,
        };
        let letters = job
            .frames
            .chunks(per_cell)
            .enumerate()
            .map(|(cell, states)| {
                let first = job.desc.first + (cell * per_cell) as u32;
                let letter = |(i, state): (usize, &FrameState)| match state {
                    FrameState::Done => b'd',
                    _ if job.frame_failures.contains_key(&(first + i as u32)) => b'f',
                    FrameState::Leased => b'r',
                    FrameState::Pending => b'p',
                };
                states.iter().enumerate().map(letter).max_by_key(|&c| rank(c)).unwrap_or(b'd') as char
            })
            .collect();
        Some((job.desc.first, letters, per_cell as u32))
    }

    /// Job names in service order.
    pub fn jobs(&self) -> impl Iterator<Item = &str> {
        self.jobs.values().map(|j| j.desc.name.as_str())
    }

    /// The frames `peer` holds leases on, as (job, frame), e.g. to re-announce them after a reconnect.
    pub fn leases_of(&self, peer: &P) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for job in self.jobs.values() {
            for (&frame, holders) in &job.leases {
                if holders.iter().any(|h| &h.peer == peer) {
                    out.push((job.desc.name.clone(), frame));
                }
            }
        }
        out
    }
}

fn grant(desc: &JobDesc, frame: u32) -> Grant {
    Grant { job: desc.name.clone(), frame, blend: desc.blend, blend_size: desc.blend_size }
}
