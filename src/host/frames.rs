//! Storing a verified frame: moved into place (durably), then recorded as done, then the volunteer is answered.

use libp2p::PeerId;
use tracing::{debug, info, warn};

use super::{
    blobs::{ExpectedUpload, FrameArrived},
    Host,
};
use crate::scheduler::Verdict;

impl Host {
    /// A verified frame is in the temp folder: move it into place, then record it as done.
    pub(super) fn on_frame_arrived(&mut self, arrival: FrameArrived) {
        let FrameArrived { peer, upload, temp, reply } = arrival;
        let result = self.store_frame(peer, &upload, &temp);
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        let _ = reply.send(result);
    }

    fn store_frame(&mut self, peer: PeerId, upload: &ExpectedUpload, temp: &std::path::Path) -> Result<(), String> {
        let ExpectedUpload { job, frame, ext, blend, output, .. } = upload;
        if self.scheduler.rendered(&peer, job, *frame, *blend) == Verdict::Discard {
            return Err(format!("frame {frame} of {job} is no longer wanted"));
        }
        let dir = self.config.renderdir.join(job);
        if let Some(name) = output {
            return store_output(&dir, name, temp).map_err(|e| {
                warn!("cannot write {name} of frame {frame} of {job}: {e}");
                format!("the host cannot write {name} of frame {frame} of {job}")
            });
        }
        let target = dir.join(format!("{frame:04}.{ext}"));
        // Moved into place (durably), then recorded as done: a crash in between leaves a file that is not counted as
        // done, so the frame is rendered again and the file replaced — never a done frame whose file is stale.
        std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::rename(temp, &target))
            .and_then(|_| std::fs::File::open(&dir)?.sync_all())
            .map_err(|e| {
                warn!("cannot write {}: {e}", target.display());
                format!("the host cannot write frame {frame} of {job}")
            })?;
        if let Err(e) = self.state.mark_done(job, *frame) {
            warn!("cannot record frame {frame} of {job} as done: {e}");
            return Err(format!("the host cannot record frame {frame} of {job}"));
        }
        for recall in self.scheduler.frame_stored(job, *frame) {
            debug!("frame {} of {} done elsewhere; {} may stop", recall.frame, recall.job, recall.peer);
        }
        let took = self.grant_times.remove(&(job.clone(), *frame)).map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
        info!("frame {frame} of {job} done by {peer} in {took:.1}s: {}", target.display());
        self.joblog.append(job, &format!("frame {frame} done by {peer} in {took:.1}s"));
        if let Some(status) = self.scheduler.status(job) {
            if status.finished && self.report_finished(job) {
                info!("job {job} finished: {} frames in {}", status.total, dir.display());
                self.joblog.append(job, &format!("finished: {} frames", status.total));
            }
        }
        Ok(())
    }
}

/// Moves a File Output file into the job's render folder under its name (checked by the protocol: relative, plain
/// components), durably. It does not make the frame done: the frame itself comes last.
fn store_output(dir: &std::path::Path, name: &str, temp: &std::path::Path) -> std::io::Result<()> {
    let target = name.split('/').fold(dir.to_path_buf(), |p, c| p.join(c));
    let parent = target.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent)?;
    std::fs::rename(temp, &target)?;
    std::fs::File::open(parent)?.sync_all()?;
    debug!("stored {}", target.display());
    Ok(())
}
