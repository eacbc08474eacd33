//! The host's side of trusting nothing a volunteer sends: every frame is checked before it is stored
//! ([`check::check_frame`]), and a sample is rendered again by another volunteer and compared (the rules, pure and
//! tested, are in [`crate::scheduler::verify`]). Decoding and comparing run on blocking threads and come back to the
//! loop as a [`CheckDone`]; so does a ban, which is one redb commit that also takes back the banned volunteer's
//! frames.

use std::{
    hash::BuildHasher as _,
    path::{Path, PathBuf},
};

use libp2p::PeerId;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    blobs::{ExpectedUpload, FrameArrived},
    check::{self, Difference, FrameProblem},
    Host,
};
use crate::{
    protocol::BlobHash,
    scheduler::verify::{CheckOutcome, Comparison},
};

/// Results of work done off the loop for checks and bans.
pub enum CheckDone {
    /// A check copy was compared with the stored frame (and with the kept copy of a dissenter, if any).
    Copy { arrival: FrameArrived, result: Result<(Comparison, Difference), String> },
    /// A ban is durable; these frames of the banned volunteer were taken back.
    Banned { peer: PeerId, reason: String, redo: Result<Vec<(String, u32)>, String> },
    /// The owner's Blender rendered a frame volunteers reported failing (Ok), or failed on it too.
    Confirmed { job: String, frame: u32, blend: BlobHash, reason: String, result: Result<(), String> },
}

/// A uniform random number in [0, 1), from the standard library's randomly keyed hasher (no extra crate for one
/// coin toss per frame).
fn roll() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Where the copy of the first volunteer that disagreed with a stored frame waits for the deciding copy.
fn dissent_path(state_dir: &Path, job: &str, frame: u32, ext: &str) -> PathBuf {
    state_dir.join("checks").join(job).join(format!("{frame:04}.{ext}"))
}

impl Host {
    /// A frame (or a check copy, or a File Output file) arrived, its hash verified: a frame, checked as it was
    /// received, is stored or refused; a check copy is compared with the stored frame, off the loop.
    pub(super) fn on_frame_arrived(
        &mut self,
        mut arrival: FrameArrived,
        stored: &mpsc::Sender<super::frames::StoredBatch>,
    ) {
        if !arrival.upload.check {
            // File Output files are whatever the compositor writes, stored as they come (never checked).
            return match arrival.problem.take() {
                None => self.queue_frame(arrival, stored),
                Some(problem) => self.refuse_frame(arrival, problem),
            };
        }
        let upload = &arrival.upload;
        let want = upload.want;
        let (temp, ext) = (arrival.temp.clone(), upload.ext.clone());
        let done = self.checked_tx.clone();
        let stored_frame = self.target_of(upload);
        let dissent = dissent_path(&self.config.state_dir, &upload.job, upload.frame, &upload.ext);
        tokio::spawn(async move {
            let compare = move || compare_copy(&temp, &ext, want, &stored_frame, &dissent);
            let result = tokio::task::spawn_blocking(compare).await.unwrap_or_else(|e| Err(e.to_string()));
            let _ = done.send(CheckDone::Copy { arrival, result }).await;
        });
    }

    pub(super) fn on_check_done(&mut self, done: CheckDone) {
        match done {
            CheckDone::Copy { arrival, result } => self.on_copy_compared(arrival, result),
            CheckDone::Banned { peer, reason, redo } => self.on_banned(peer, &reason, redo),
            CheckDone::Confirmed { job, frame, blend, reason, result } => {
                self.on_confirmed(&job, frame, blend, reason, result)
            }
        }
    }

    /// A frame that is not what the job renders: thrown away, rendered again elsewhere, counted against its sender.
    fn refuse_frame(&mut self, arrival: FrameArrived, problem: FrameProblem) {
        let FrameArrived { peer, upload, temp, reply, .. } = arrival;
        let ExpectedUpload { job, frame, blend, ext, .. } = &upload;
        file_chores(None, vec![temp]);
        let by = self.tallies.label(&peer);
        warn!("frame {frame} of {job} from {by} refused: the .{ext} file {problem}");
        self.joblog.append(job, &format!("frame {frame} from {by} refused: the .{ext} file {problem}"));
        if let Some(feed) = &mut self.snapshots {
            feed.error(job, Some(*frame), Some(by), &format!("refused: {problem}"));
        }
        self.scheduler.frame_refused(&peer, job, *frame, *blend);
        self.offer_now = true;
        let _ = reply.send(Err(format!("the host refused frame {frame} of {job}: the file {problem}")));
    }

    /// A stored frame's author: perhaps open a check on it (the job's `verify =` fraction, always its first).
    pub(super) fn maybe_check(&mut self, peer: PeerId, job: &str, frame: u32, blend: BlobHash, ext: &str) {
        let comparable = check::comparable(ext);
        let fraction = self.jobs.file(job).map_or(0.0, |f| f.verify());
        if comparable && self.verifier.delivered(&peer, job, frame, blend, fraction, roll()) {
            tracing::debug!("frame {frame} of {job} by {peer} will be rendered again to check it");
            self.offer_now = true;
        }
    }

    fn on_copy_compared(&mut self, arrival: FrameArrived, result: Result<(Comparison, Difference), String>) {
        let FrameArrived { peer, upload, temp, reply, .. } = arrival;
        let ExpectedUpload { job, frame, ext, .. } = &upload;
        // The volunteer is never told it rendered a check: it did its work either way.
        let _ = reply.send(Ok(()));
        let (seen, diff) = match result {
            Ok(compared) => compared,
            Err(why) => {
                warn!("cannot compare the copy of frame {frame} of {job} from {peer}: {why}");
                file_chores(None, vec![temp]);
                self.verifier.copy_failed(&peer, job, *frame);
                return;
            }
        };
        let dissent = dissent_path(&self.config.state_dir, job, *frame, ext);
        let Some(outcome) = self.verifier.compared(&peer, job, *frame, seen) else {
            file_chores(None, vec![temp]);
            return;
        };
        let checker = self.tallies.label(&peer);
        let percent = diff.differing * 100.0;
        let closed = !matches!(outcome, CheckOutcome::KeepCopy | CheckOutcome::Undecided);
        let mut keep = None;
        match outcome {
            CheckOutcome::Passed { original } => {
                let by = self.tallies.label(&original);
                info!("frame {frame} of {job} by {by} verified: {checker}'s copy agrees");
                self.joblog.append(job, &format!("verified: frame {frame} by {by} agrees with {checker}'s copy"));
            }
            CheckOutcome::KeepCopy => {
                keep = Some((temp.clone(), dissent.clone()));
                self.joblog.append(
                    job,
                    &format!("check: {checker}'s copy of frame {frame} differs ({percent:.1} % of pixels); a third volunteer decides"),
                );
                self.offer_now = true;
            }
            CheckOutcome::Undecided => self.offer_now = true,
            CheckOutcome::Inconclusive { original } => {
                let by = self.tallies.label(&original);
                self.joblog.append(
                    job,
                    &format!("check: copies of frame {frame} by {by} all differ; the scene does not render the same twice (nobody banned)"),
                );
            }
            CheckOutcome::Ban { peer: cheat, original_wrong } => {
                let reason = if original_wrong {
                    format!("failed verification on frame {frame} of {job}: {percent:.0} % of pixels differ from two other volunteers' copies")
                } else {
                    format!("failed verification on frame {frame} of {job}: its copy differs from two other volunteers' renders")
                };
                self.ban(cheat, reason);
            }
        }
        let mut remove = vec![temp];
        if closed {
            remove.push(dissent);
        }
        file_chores(keep, remove);
    }

    /// Bans `peer` durably (and takes back its frames in the same commit) on a blocking thread.
    fn ban(&mut self, peer: PeerId, reason: String) {
        self.verifier.ban(&peer);
        let (state, done) = (self.state.clone(), self.checked_tx.clone());
        tokio::spawn(async move {
            let bytes = peer.to_bytes();
            let why = reason.clone();
            let redo = tokio::task::spawn_blocking(move || state.ban(&bytes, &why).map_err(|e| e.to_string()))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            let _ = done.send(CheckDone::Banned { peer, reason, redo }).await;
        });
    }

    fn on_banned(&mut self, peer: PeerId, reason: &str, redo: Result<Vec<(String, u32)>, String>) {
        let by = self.tallies.label(&peer);
        let redo = match redo {
            Ok(redo) => redo,
            Err(e) => {
                warn!("cannot record the ban of {by}: {e}");
                Vec::new()
            }
        };
        let mut per_job: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
        for (job, frame) in redo {
            per_job.entry(job).or_default().push(frame);
        }
        warn!("volunteer {by} banned: {reason}");
        let (id, name) = (peer.to_string(), self.tallies.name_of(&peer));
        self.bans.retain(|b| b.id != id);
        self.bans.push(crate::protocol::BannedPeer { id, name, reason: reason.to_string() });
        for recall in self.scheduler.peer_gone(&peer) {
            tracing::debug!("frame {} of {} requeued: its holder is banned", recall.1, recall.0);
        }
        for (job, frames) in &per_job {
            let count = self.scheduler.redo(job, frames);
            self.jobs.reopen(job);
            let line = format!("{by} {reason}; its {count} frames are rendered again");
            self.joblog.append(job, &line);
            if let Some(feed) = &mut self.snapshots {
                feed.error(job, None, Some(by.clone()), &line);
            }
            // Its files are known to be wrong: none stays in the render folder meanwhile.
            let folder = self.config.renderdir.join(job);
            let mut names: Vec<PathBuf> = Vec::new();
            for f in frames {
                names.extend(crate::protocol::FRAME_EXTENSIONS.iter().map(|ext| folder.join(format!("{f:04}.{ext}"))));
            }
            tokio::task::spawn_blocking(move || names.iter().for_each(|p| drop(std::fs::remove_file(p))));
        }
        self.offer_now = true;
    }
}

/// Compares a check copy with the stored frame and, if there is one, with the kept copy of the first dissenter.
fn compare_copy(
    copy: &Path,
    ext: &str,
    want: Option<(u32, u32)>,
    stored: &Path,
    dissent: &Path,
) -> Result<(Comparison, Difference), String> {
    let decode = |path: &Path, want| -> Result<image::DynamicImage, String> {
        let checked = check::check_frame(path, ext, want).map_err(|e| format!("{}: {e}", path.display()))?;
        checked.image.ok_or_else(|| format!("{} cannot be compared", path.display()))
    };
    let copy = match decode(copy, want) {
        Ok(copy) => copy,
        // A copy that is not even a frame of the job disagrees with everything.
        Err(_) => {
            let nothing = Difference { differing: 1.0, largest: f32::INFINITY };
            let with_dissent = dissent.exists().then_some(false);
            return Ok((Comparison { with_stored: false, with_dissent }, nothing));
        }
    };
    let stored = decode(stored, None)?;
    let diff = check::compare(&stored, &copy);
    let with_dissent =
        if dissent.exists() { Some(check::compare(&decode(dissent, None)?, &copy).agrees()) } else { None };
    Ok((Comparison { with_stored: diff.agrees(), with_dissent }, diff))
}

/// The file work of a check (keeping a dissenting copy: `(from, to)`; then removing files), done in this order on a
/// blocking thread: the event loop never waits for the disk.
fn file_chores(keep: Option<(PathBuf, PathBuf)>, remove: Vec<PathBuf>) {
    tokio::task::spawn_blocking(move || {
        if let Some((from, to)) = keep {
            let kept = to.parent().map(std::fs::create_dir_all).transpose().and_then(|_| std::fs::rename(&from, &to));
            if let Err(e) = kept {
                warn!("cannot keep a check's copy at {}: {e}", to.display());
            }
        }
        for path in remove {
            let _ = std::fs::remove_file(path);
        }
    });
}
