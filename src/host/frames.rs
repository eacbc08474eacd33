//! Storing verified frames: moved into place (durably), recorded as done, and only then is each volunteer answered.
//!
//! The disk work never runs on the host's event loop. Frames that arrive while a batch is being stored wait; then
//! every waiting frame goes in the next batch, on a blocking thread: each is renamed into place, each folder is
//! fsynced once, and all the frames are recorded done in one redb commit ([`StateStore::mark_done_batch`]). With
//! many volunteers a batch holds many frames, so the cost per frame falls as the load rises. The loop only decides
//! which frames are still wanted before, and tells the scheduler and the volunteers after.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{
    blobs::{ExpectedUpload, FrameArrived},
    Host,
};
use crate::{scheduler::Verdict, store::state::StateStore};

/// One frame (or File Output file) on its way into the render folder.
pub struct Storing {
    peer: PeerId,
    upload: ExpectedUpload,
    temp: PathBuf,
    target: PathBuf,
    reply: oneshot::Sender<Result<(), String>>,
}

/// A stored batch, back on the loop: each item with what became of it.
pub struct StoredBatch(Vec<(Storing, Result<(), String>)>);

/// Frames waiting for the batch in progress to finish.
#[derive(Default)]
pub struct FrameQueue {
    waiting: Vec<FrameArrived>,
    storing: bool,
}

impl Host {
    /// A checked frame is in the temp folder: it joins the next batch.
    pub(super) fn queue_frame(&mut self, arrival: FrameArrived, stored: &mpsc::Sender<StoredBatch>) {
        self.frames.waiting.push(arrival);
        if !self.frames.storing {
            self.store_waiting(stored);
        }
    }

    /// Starts storing every waiting frame that is still wanted, on a blocking thread.
    fn store_waiting(&mut self, stored: &mpsc::Sender<StoredBatch>) {
        let mut batch = Vec::new();
        for FrameArrived { peer, upload, temp, reply, .. } in std::mem::take(&mut self.frames.waiting) {
            let ExpectedUpload { job, frame, blend, .. } = &upload;
            if self.verifier.is_banned(&peer) || self.scheduler.rendered(&peer, job, *frame, *blend) == Verdict::Discard
            {
                let _ = std::fs::remove_file(&temp);
                let _ = reply.send(Err(format!("frame {frame} of {job} is no longer wanted")));
                continue;
            }
            let target = self.target_of(&upload);
            batch.push(Storing { peer, upload, temp, target, reply });
        }
        if batch.is_empty() {
            return;
        }
        self.frames.storing = true;
        let (state, stored) = (self.state.clone(), stored.clone());
        tokio::spawn(async move {
            let done = tokio::task::spawn_blocking(move || store_batch(batch, &state)).await;
            // A panicked batch drops its replies: the volunteers are told the upload failed, and try again.
            if let Ok(done) = done {
                let _ = stored.send(done).await;
            }
        });
    }

    /// Where an upload goes: `RENDERDIR/JOB/NNNN.EXT`, or a File Output file under its checked name.
    pub(super) fn target_of(&self, upload: &ExpectedUpload) -> PathBuf {
        let dir = self.config.renderdir.join(&upload.job);
        match &upload.output {
            Some(name) => name.split('/').fold(dir, |p, c| p.join(c)),
            None => dir.join(format!("{:04}.{}", upload.frame, upload.ext)),
        }
    }

    /// A batch is durable: the scheduler learns which frames are done, volunteers are answered, the next batch starts.
    pub(super) fn on_batch_stored(&mut self, StoredBatch(items): StoredBatch, stored: &mpsc::Sender<StoredBatch>) {
        self.frames.storing = false;
        for (Storing { peer, upload, target, reply, .. }, result) in items {
            if result.is_ok() && upload.output.is_none() {
                self.frame_done(peer, &upload, &target);
            }
            let _ = reply.send(result);
        }
        if !self.frames.waiting.is_empty() {
            self.store_waiting(stored);
        }
    }

    fn frame_done(&mut self, peer: PeerId, upload: &ExpectedUpload, target: &Path) {
        let ExpectedUpload { job, frame, blend, ext, .. } = upload;
        for recall in self.scheduler.frame_stored(job, *frame, *blend) {
            debug!("frame {} of {} done elsewhere; {} may stop", recall.frame, recall.job, recall.peer);
        }
        let took = self.grant_times.remove(&(job.clone(), *frame)).map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
        self.tallies.frame_done(peer, job, took);
        let by = self.tallies.label(&peer);
        if let (Some(feed), Some(file)) = (&mut self.snapshots, target.file_name()) {
            feed.frame_done(job, *frame, &file.to_string_lossy(), self.tallies.name_of(&peer));
        }
        // The job log has every frame; the host's own log has them at debug level (thousands a second, with many
        // volunteers, each a wake-up of the log's writer thread).
        debug!("frame {frame} of {job} done by {by} in {took:.1} s: {}", target.display());
        self.joblog.append(job, &format!("frame {frame} done by {by} in {took:.1} s"));
        self.maybe_check(peer, job, *frame, *blend, ext);
        if let Some(status) = self.scheduler.status(job) {
            if status.finished && self.report_finished(job) {
                info!("job {job} finished: {} frames in {}", status.total, self.config.renderdir.join(job).display());
                self.joblog.append(job, &format!("finished: {} frames", status.total));
                self.job_ended(job, super::finish::JobEnd::Done);
            }
        }
    }
}

/// The disk side of a batch (blocking): rename each file into place, fsync each folder once, then record every frame
/// done in one commit. Moved into place first, recorded second: a crash in between leaves files that do not count as
/// done, so those frames are rendered again and the files replaced, never a done frame whose file is stale.
fn store_batch(batch: Vec<Storing>, state: &Arc<StateStore>) -> StoredBatch {
    let mut results: Vec<Result<(), String>> = Vec::with_capacity(batch.len());
    let mut folders = BTreeSet::new();
    for item in &batch {
        let parent = item.target.parent().map(Path::to_path_buf).unwrap_or_default();
        // The folder exists but for a job's first frames (or File Output folders): made only when the rename says so.
        let moved = match std::fs::rename(&item.temp, &item.target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && item.temp.exists() => {
                std::fs::create_dir_all(&parent).and_then(|_| std::fs::rename(&item.temp, &item.target))
            }
            moved => moved,
        };
        results.push(moved.map_err(|e| {
            let _ = std::fs::remove_file(&item.temp);
            warn!("cannot write {}: {e}", item.target.display());
            format!("the host cannot write {}", item.target.display())
        }));
        folders.insert(parent);
    }
    for folder in &folders {
        if let Err(e) = std::fs::File::open(folder).and_then(|f| f.sync_all()) {
            warn!("cannot sync {}: {e}", folder.display());
            for (item, result) in batch.iter().zip(results.iter_mut()) {
                if item.target.parent() == Some(folder.as_path()) && result.is_ok() {
                    *result = Err(format!("the host cannot write {}", item.target.display()));
                }
            }
        }
    }
    // Every frame whose file is in place, recorded in one commit (File Output files are not frames).
    let frames: Vec<usize> =
        (0..batch.len()).filter(|&i| results[i].is_ok() && batch[i].upload.output.is_none()).collect();
    let keys: Vec<(String, u32, crate::protocol::BlobHash, Vec<u8>)> = frames
        .iter()
        .map(|&i| {
            let (upload, by) = (&batch[i].upload, batch[i].peer.to_bytes());
            (upload.job.clone(), upload.frame, upload.blend, by)
        })
        .collect();
    for (&i, answer) in frames.iter().zip(state.mark_done_batch(&keys)) {
        if let Err(e) = answer {
            let ExpectedUpload { job, frame, .. } = &batch[i].upload;
            warn!("cannot record frame {frame} of {job} as done: {e}");
            results[i] = Err(format!("the host cannot record frame {frame} of {job}"));
        }
    }
    StoredBatch(batch.into_iter().zip(results).collect())
}
