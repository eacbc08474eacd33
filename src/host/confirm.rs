//! A job fails only on evidence that survives fresh identities. Peer ids cost nothing, so three of them reporting
//! one frame failed prove nothing by themselves; before the host gives up on a job, the owner's own Blender (the one
//! that lists the job's files) renders that frame. If it fails there too, the job fails with both reasons; if it
//! renders, the reports are overruled and the job goes on. A host without a Blender keeps the plain rule (three
//! volunteers), as docs/SECURITY.md says.

use std::{path::PathBuf, time::Duration};

use tokio::process::Command;
use tracing::{info, warn};

use super::{
    limited::{describe, printable_lines, run_limited},
    verify::CheckDone,
    Host,
};
use crate::protocol::BlobHash;

/// The owner's render of one frame may take this long before the failure is taken as confirmed.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(1800);

impl Host {
    /// The scheduler failed `job` on `frame` (`reason`): confirm with the owner's Blender when there is one. Returns
    /// false when there is none, and the failure stands.
    pub(super) fn confirm_failure(&mut self, job: &str, frame: u32, blend: BlobHash, reason: String) -> bool {
        let (Some(program), Some(file)) = (self.config.blender.clone(), self.jobs.file(job)) else {
            return false;
        };
        let blend_path = file.blend.clone();
        let scratch = self.config.state_dir.join("confirm").join(job);
        info!("job {job}: frame {frame} failed on volunteers; rendering it with the owner's Blender to confirm");
        self.joblog.append(
            job,
            &format!("frame {frame} failed on volunteers ({reason}); the owner's Blender renders it to confirm"),
        );
        let (done, job) = (self.checked_tx.clone(), job.to_string());
        tokio::spawn(async move {
            let result = render_once(&program, &blend_path, frame, scratch).await;
            let _ = done.send(CheckDone::Confirmed { job, frame, blend, reason, result }).await;
        });
        true
    }

    pub(super) fn on_confirmed(
        &mut self,
        job: &str,
        frame: u32,
        blend: BlobHash,
        reason: String,
        result: Result<(), String>,
    ) {
        if self.jobs.file(job).is_none() || !self.scheduler.is_current(job, blend) {
            return;
        }
        match result {
            Ok(()) => {
                if self.scheduler.overrule_failure(job, frame) {
                    warn!("job {job}: frame {frame} renders on the owner's Blender; the failure reports are overruled");
                    self.joblog.append(job, &format!("frame {frame} renders on the owner's Blender: the volunteers' failure reports are overruled and the job goes on"));
                    self.offer_now = true;
                }
            }
            Err(owner) => {
                let reason = format!("{reason}; the owner's Blender fails on it too: {owner}");
                warn!("job {job} failed: {reason}");
                self.joblog.append(job, &format!("job failed: {reason}"));
                self.job_ended(job, super::finish::JobEnd::Failed);
            }
        }
    }
}

/// Renders `frame` of `blend` once with `program` into `scratch` (emptied first); Ok when an image file came out.
/// Blender's exit status alone does not tell (it exits 0 when a frame fails to render), so the output decides.
async fn render_once(
    program: &std::path::Path,
    blend: &std::path::Path,
    frame: u32,
    scratch: PathBuf,
) -> Result<(), String> {
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    tokio::fs::create_dir_all(&scratch).await.map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let mut cmd = Command::new(program);
    cmd.args(["-b", "--factory-startup", "--disable-autoexec"]).arg(blend);
    cmd.arg("-o").arg(scratch.join("frame_####")).arg("-f").arg(frame.to_string());
    let ran = run_limited(cmd, CONFIRM_TIMEOUT, 64 * 1024)
        .await
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let mut made = false;
    if let Ok(mut entries) = tokio::fs::read_dir(&scratch).await {
        while let Ok(Some(entry)) = entries.next_entry().await {
            made |= entry.file_name().to_string_lossy().starts_with("frame_");
        }
    }
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    match ran.status {
        _ if made => Ok(()),
        None => Err(format!("it did not finish within {} s", CONFIRM_TIMEOUT.as_secs())),
        Some(status) => {
            let lines = printable_lines(&ran.stdout.bytes);
            let errors: Vec<&String> = lines.iter().filter(|l| l.contains("Error") || l.contains("error")).collect();
            let last = errors.last().copied().or(lines.last()).map_or(String::new(), |l| l.to_string());
            Err(format!("no image ({}): {last}", describe(status)))
        }
    }
}
