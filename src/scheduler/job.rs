//! Per-job frame bookkeeping: which frames are pending, leased or done, who holds which lease, and who failed what.
//!
//! Memory is one byte per frame plus entries for the few frames that are out of the ordinary (leased, requeued,
//! failed), so a 100,000-frame job costs about 100 KiB. Handing out the next frame is amortised O(1): a cursor walks
//! the frame table once, and frames that become pending again behind the cursor go to a small ordered set.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use super::{JobDesc, MAX_JOB_FRAMES};

/// How many peers that lost a lease on a frame are remembered as its possible late renderers; a cap keeps a frame
/// that keeps timing out from growing the list without bound.
const MAX_LATE_PER_FRAME: usize = 4;

/// Frame state is one byte; the lease holders live in [`Job::leases`], only for the frames that have them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FrameState {
    Pending,
    Leased,
    Done,
}

/// One peer's lease on one frame.
#[derive(Debug, Clone)]
pub(super) struct Holder<P> {
    pub(super) peer: P,
    /// When the lease was granted; a backup copy is judged by how long the frame has been out, not by renewals.
    pub(super) granted: Instant,
    /// Last sign of life for this lease; it expires `lease_timeout` after this.
    pub(super) renewed: Instant,
    /// The peer reported the frame rendered and was told to upload. It is not recalled when another copy wins the
    /// race (it has nothing left to stop), and nobody backs up a frame that is already being uploaded.
    pub(super) rendered: bool,
    /// When the upload was invited (the last sign of life before it): an upload is renewed for
    /// `upload_timeout` at most, so a volunteer that never delivers cannot hold the frame forever.
    pub(super) rendered_at: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct Job<P> {
    pub(super) desc: JobDesc,
    /// State of frame `desc.first + index`.
    pub(super) frames: Vec<FrameState>,
    /// Every pending frame below this index is in `requeued`; frames at or above it are pending iff their state says
    /// so. The cursor only moves forward (until the range is edited), which makes claims amortised O(1).
    pub(super) cursor: usize,
    /// Pending frames behind the cursor (frame numbers): requeued after an expiry, failure or departure, or skipped
    /// because the claiming peer had failed them.
    pub(super) requeued: BTreeSet<u32>,
    pub(super) pending: u32,
    /// Frames with at least one holder.
    pub(super) leased: u32,
    pub(super) done: u32,
    /// Holders per leased frame (frame number), at most two (the original and one backup).
    pub(super) leases: BTreeMap<u32, Vec<Holder<P>>>,
    /// Peers that lost their lease on a not-yet-done frame by expiry or departure, per frame. Their result is still
    /// welcome; a peer that never held the frame in this incarnation of the job (for example before a restart with a
    /// new .blend) is not.
    pub(super) late: HashMap<u32, Vec<P>>,
    /// Distinct peers that failed each frame.
    pub(super) frame_failures: HashMap<u32, Vec<P>>,
    /// Distinct frames each peer failed; a peer is never handed a frame it failed, and enough failures blocklist it.
    pub(super) peer_failures: HashMap<P, Vec<u32>>,
    pub(super) suspended: bool,
    /// The frame that failed the job, and why.
    pub(super) failed: Option<(u32, String)>,
}

/// Number of frames of `first..=last`, capped at [`MAX_JOB_FRAMES`] so a bogus range cannot exhaust memory.
fn frame_count(first: u32, last: u32) -> usize {
    if last < first {
        return 0;
    }
    (last - first).min(MAX_JOB_FRAMES - 1) as usize + 1
}

impl<P: Clone + Eq + Hash + Ord + Debug> Job<P> {
    pub(super) fn new(desc: JobDesc, done: &[u32]) -> Self {
        let len = frame_count(desc.first, desc.last);
        let mut job = Job {
            desc,
            frames: vec![FrameState::Pending; len],
            cursor: 0,
            requeued: BTreeSet::new(),
            pending: len as u32,
            leased: 0,
            done: 0,
            leases: BTreeMap::new(),
            late: HashMap::new(),
            frame_failures: HashMap::new(),
            peer_failures: HashMap::new(),
            suspended: false,
            failed: None,
        };
        for &frame in done {
            job.mark_done(frame);
        }
        job
    }

    /// Index of `frame` in the frame table, if it is in the job's range.
    pub(super) fn index(&self, frame: u32) -> Option<usize> {
        let offset = frame.checked_sub(self.desc.first)? as usize;
        (offset < self.frames.len()).then_some(offset)
    }

    pub(super) fn state(&self, frame: u32) -> Option<FrameState> {
        self.index(frame).map(|idx| self.frames[idx])
    }

    /// The last frames go to peers with nothing to render: while fewer frames are pending than peers hold leases on
    /// the job, a peer that holds a frame it has not reported rendered (it claims ahead, for when its current frame
    /// is done) gets none, so no frame waits behind another on one volunteer while another volunteer sits idle.
    /// Before that point every working peer gets at least one more frame anyway, and claiming ahead costs nothing.
    pub(super) fn holds_back_from(&self, peer: &P) -> bool {
        // Each leased frame has at most two holders: with this many frames pending, the tail is not reached.
        if self.pending as usize >= 2 * self.leased as usize {
            return false;
        }
        let mut working = std::collections::HashSet::new();
        let mut ahead = false;
        for holder in self.leases.values().flatten() {
            working.insert(&holder.peer);
            ahead |= holder.peer == *peer && !holder.rendered;
        }
        ahead && (self.pending as usize) < working.len()
    }

    pub(super) fn total(&self) -> u32 {
        self.frames.len() as u32
    }

    pub(super) fn finished(&self) -> bool {
        self.done == self.total()
    }

    /// Frames this peer failed in this job.
    fn failed_by(&self, peer: &P) -> &[u32] {
        self.peer_failures.get(peer).map_or(&[], Vec::as_slice)
    }

    pub(super) fn blocks(&self, peer: &P, max_peer_failures: u32) -> bool {
        self.failed_by(peer).len() >= max_peer_failures.max(1) as usize
    }

    /// Whether new frames of this job may go to this peer at all.
    pub(super) fn serves(&self, peer: &P, max_peer_failures: u32) -> bool {
        self.eligible() && !self.blocks(peer, max_peer_failures)
    }

    /// Whether the job hands out frames to anybody: not suspended, failed or finished.
    pub(super) fn eligible(&self) -> bool {
        !self.suspended && self.failed.is_none() && !self.finished()
    }

    /// Whether a pending frame exists that this peer has not failed.
    pub(super) fn has_pending_for(&self, peer: &P) -> bool {
        let excluded = self.failed_by(peer).iter().filter(|&&f| self.state(f) == Some(FrameState::Pending)).count();
        self.pending as usize > excluded
    }

    pub(super) fn holder_mut(&mut self, peer: &P, frame: u32) -> Option<&mut Holder<P>> {
        self.leases.get_mut(&frame)?.iter_mut().find(|h| &h.peer == peer)
    }

    pub(super) fn is_late(&self, peer: &P, frame: u32) -> bool {
        self.late.get(&frame).is_some_and(|peers| peers.contains(peer))
    }

    fn enter_pending(&mut self, frame: u32, idx: usize) {
        self.frames[idx] = FrameState::Pending;
        self.pending += 1;
        if idx < self.cursor {
            self.requeued.insert(frame);
        }
    }

    fn leave_pending(&mut self, frame: u32, idx: usize) {
        self.pending -= 1;
        if idx < self.cursor {
            self.requeued.remove(&frame);
        }
    }

    /// Leases up to `want` pending frames to `peer`, lowest first, skipping frames it failed. Returns them.
    pub(super) fn take_pending(&mut self, peer: &P, want: usize, now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        let failed = self.peer_failures.get(peer).map_or(&[][..], Vec::as_slice);
        // Everything requeued lies behind the cursor, so it comes first in frame order.
        for &frame in &self.requeued {
            if out.len() >= want {
                break;
            }
            if !failed.contains(&frame) {
                out.push(frame);
            }
        }
        while out.len() < want && self.cursor < self.frames.len() {
            let idx = self.cursor;
            self.cursor += 1;
            if self.frames[idx] == FrameState::Pending {
                let frame = self.desc.first + idx as u32;
                if failed.contains(&frame) {
                    // Keep the invariant: a pending frame behind the cursor is in `requeued`.
                    self.requeued.insert(frame);
                } else {
                    out.push(frame);
                }
            }
        }
        for &frame in &out {
            self.add_holder(frame, peer, now);
        }
        out
    }

    /// Gives `peer` a lease on `frame` (pending, or leased to someone else as a backup).
    pub(super) fn add_holder(&mut self, frame: u32, peer: &P, now: Instant) {
        let Some(idx) = self.index(frame) else { return };
        match self.frames[idx] {
            FrameState::Done => return,
            FrameState::Pending => {
                self.leave_pending(frame, idx);
                self.frames[idx] = FrameState::Leased;
                self.leased += 1;
            }
            FrameState::Leased => {}
        }
        let holder = Holder { peer: peer.clone(), granted: now, renewed: now, rendered: false, rendered_at: None };
        self.leases.entry(frame).or_default().push(holder);
        self.forget_late(frame, peer);
    }

    /// Removes `peer`'s lease on `frame`; the frame is pending again once nobody holds it. False if it held none.
    pub(super) fn drop_holder(&mut self, frame: u32, peer: &P) -> bool {
        let Some(holders) = self.leases.get_mut(&frame) else {
            return false;
        };
        let Some(pos) = holders.iter().position(|h| &h.peer == peer) else {
            return false;
        };
        holders.remove(pos);
        if holders.is_empty() {
            self.release(frame);
        }
        true
    }

    /// The last holder of `frame` is gone: it is pending again.
    fn release(&mut self, frame: u32) {
        self.leases.remove(&frame);
        if let Some(idx) = self.index(frame) {
            self.leased -= 1;
            self.enter_pending(frame, idx);
        }
    }

    pub(super) fn remember_late(&mut self, frame: u32, peer: P) {
        let peers = self.late.entry(frame).or_default();
        if !peers.contains(&peer) {
            if peers.len() >= MAX_LATE_PER_FRAME {
                peers.remove(0);
            }
            peers.push(peer);
        }
    }

    pub(super) fn forget_late(&mut self, frame: u32, peer: &P) {
        if let Some(peers) = self.late.get_mut(&frame) {
            peers.retain(|p| p != peer);
            if peers.is_empty() {
                self.late.remove(&frame);
            }
        }
    }

    /// Marks `frame` done (no-op when done or out of range). Returns the holders still rendering it, to recall.
    pub(super) fn mark_done(&mut self, frame: u32) -> Vec<P> {
        let Some(idx) = self.index(frame) else {
            return Vec::new();
        };
        match self.frames[idx] {
            FrameState::Done => return Vec::new(),
            FrameState::Pending => self.leave_pending(frame, idx),
            FrameState::Leased => self.leased -= 1,
        }
        self.frames[idx] = FrameState::Done;
        self.done += 1;
        self.late.remove(&frame);
        self.frame_failures.remove(&frame);
        let holders = self.leases.remove(&frame).unwrap_or_default();
        holders.into_iter().filter(|h| !h.rendered).map(|h| h.peer).collect()
    }

    /// A done frame is wanted again (its file was wrong): it becomes pending. False when it was not done.
    pub(super) fn unmark_done(&mut self, frame: u32) -> bool {
        let Some(idx) = self.index(frame).filter(|&idx| self.frames[idx] == FrameState::Done) else {
            return false;
        };
        self.done -= 1;
        self.enter_pending(frame, idx);
        true
    }

    /// Drops every lease without requeueing (the caller rebuilds or discards the frame table). Returns them.
    pub(super) fn take_all_leases(&mut self) -> Vec<(u32, P)> {
        let leases = std::mem::take(&mut self.leases);
        leases.into_iter().flat_map(|(frame, holders)| holders.into_iter().map(move |h| (frame, h.peer))).collect()
    }

    /// Moves the job to a new range with the same .blend: states of frames in both ranges are kept, leases outside
    /// the new range are dropped and returned for recall, and everything else starts pending.
    pub(super) fn rerange(&mut self, first: u32, last: u32) -> Vec<(u32, P)> {
        let len = frame_count(first, last);
        let in_range = |frame: u32| frame >= first && ((frame - first) as usize) < len;
        let mut frames = vec![FrameState::Pending; len];
        for (idx, state) in frames.iter_mut().enumerate() {
            if let Some(old) = self.state(first + idx as u32) {
                *state = old;
            }
        }
        let outside: Vec<u32> = self.leases.keys().copied().filter(|&f| !in_range(f)).collect();
        let mut recalls = Vec::new();
        for frame in outside {
            if let Some(holders) = self.leases.remove(&frame) {
                recalls.extend(holders.into_iter().map(|h| (frame, h.peer)));
            }
        }
        self.late.retain(|&f, _| in_range(f));
        self.frame_failures.retain(|&f, _| in_range(f));
        if self.failed.as_ref().is_some_and(|(f, _)| !in_range(*f)) {
            // The frame that failed the job was cut off: the rest deserves another chance.
            self.failed = None;
        }
        let count = |s: FrameState| frames.iter().filter(|&&x| x == s).count() as u32;
        self.pending = count(FrameState::Pending);
        self.leased = count(FrameState::Leased);
        self.done = count(FrameState::Done);
        self.frames = frames;
        // Restart the walk; the cursor skips leased and done frames at no cost beyond one pass.
        self.cursor = 0;
        self.requeued.clear();
        self.desc.first = first;
        self.desc.last = last;
        recalls
    }

    /// Drops leases not renewed within `timeout`, remembering their holders as possible late renderers.
    pub(super) fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<(u32, P)> {
        let mut expired = Vec::new();
        for (&frame, holders) in &mut self.leases {
            holders.retain(|h| {
                let alive = now.saturating_duration_since(h.renewed) < timeout;
                if !alive {
                    expired.push((frame, h.peer.clone()));
                }
                alive
            });
        }
        self.settle(&expired);
        expired
    }

    /// Drops every lease `peer` holds, remembering it as a possible late renderer. Returns the frames.
    pub(super) fn drop_peer(&mut self, peer: &P) -> Vec<u32> {
        let mut dropped = Vec::new();
        for (&frame, holders) in &mut self.leases {
            let before = holders.len();
            holders.retain(|h| &h.peer != peer);
            if holders.len() != before {
                dropped.push((frame, peer.clone()));
            }
        }
        self.settle(&dropped);
        dropped.into_iter().map(|(frame, _)| frame).collect()
    }

    /// After holders were removed in bulk: requeue frames left without one and remember the removed as late.
    fn settle(&mut self, removed: &[(u32, P)]) {
        for (frame, peer) in removed {
            if self.leases.get(frame).is_some_and(Vec::is_empty) {
                self.release(*frame);
            }
            self.remember_late(*frame, peer.clone());
        }
    }

    /// The frame most worth a backup copy for `peer`: the one out the longest (at least `after`), with a single
    /// holder that is not `peer`, not already uploading, and not a frame `peer` failed.
    pub(super) fn backup_candidate(&self, peer: &P, now: Instant, after: Duration) -> Option<u32> {
        let failed = self.failed_by(peer);
        self.leases
            .iter()
            .filter(|(frame, holders)| {
                holders.len() < 2 && !failed.contains(frame) && holders.iter().all(|h| &h.peer != peer && !h.rendered)
            })
            .filter_map(|(&frame, holders)| {
                let since = holders.iter().map(|h| h.granted).min()?;
                (now.saturating_duration_since(since) >= after).then_some((since, frame))
            })
            .min()
            .map(|(_, frame)| frame)
    }

    /// Records that `peer` failed `frame`; returns how many distinct peers have failed it.
    pub(super) fn record_failure(&mut self, peer: &P, frame: u32) -> usize {
        let peers = self.frame_failures.entry(frame).or_default();
        if !peers.contains(peer) {
            peers.push(peer.clone());
            self.peer_failures.entry(peer.clone()).or_default().push(frame);
        }
        peers.len()
    }

    /// Counts a refused frame against the peer only (see [`super::Scheduler::frame_refused`]).
    pub(super) fn record_peer_failure(&mut self, peer: &P, frame: u32) {
        let frames = self.peer_failures.entry(peer.clone()).or_default();
        if !frames.contains(&frame) {
            frames.push(frame);
        }
    }
}
