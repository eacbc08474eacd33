//! The scheduler's vocabulary: its configuration, what it is told about jobs, and what it answers.

use std::time::Duration;

/// Content hash of a job's .blend; a different hash means a different scene, so all rendered frames are stale.
pub type BlendHash = crate::protocol::BlobHash;

pub use crate::blendfile::BlendVersion;

/// Largest number of frames one job may have; frames past `first + MAX_JOB_FRAMES - 1` are ignored. One byte per
/// frame is kept, so this bounds a job's memory at 16 MiB even for a bogus range such as `0..=u32::MAX`.
pub const MAX_JOB_FRAMES: u32 = 1 << 24;

/// Tuning knobs; the defaults suit frames that take seconds to minutes and volunteers renewing every few seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// A lease not renewed for this long expires and its frame goes back to the queue.
    pub lease_timeout: Duration,
    /// In the tail (nothing pending), a frame leased this long gets a backup copy on an idle volunteer, so one slow
    /// machine cannot hold up the end of a job.
    pub backup_after: Duration,
    /// An invited upload is renewed for this long at most; then the lease runs out and the frame goes to someone
    /// else (a late upload is still taken if the frame is not done by then).
    pub upload_timeout: Duration,
    /// A peer failing this many distinct frames of a job is not given that job any more (at least 1).
    pub max_peer_failures: u32,
    /// A frame failing on this many distinct peers fails the job: the scene is broken, not the volunteers.
    pub max_frame_failures: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease_timeout: Duration::from_secs(30),
            backup_after: Duration::from_secs(180),
            upload_timeout: Duration::from_secs(600),
            max_peer_failures: 3,
            max_frame_failures: 3,
        }
    }
}

/// A job as the owner describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDesc {
    pub name: String,
    pub blend: BlendHash,
    pub blend_size: u64,
    /// First frame, inclusive.
    pub first: u32,
    /// Last frame, inclusive; a range with `last < first` has no frames.
    pub last: u32,
    /// Higher is served first.
    pub priority: i32,
    /// Arrival order: among equal priorities, lower (older) is served first.
    pub order: u64,
    /// What a volunteer's Blender must be able to do to render it.
    pub needs: JobNeeds,
}

/// What a job needs of a volunteer's Blender.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobNeeds {
    /// The Blender that saved the .blend: an older one cannot open it (Blender 3.4 crashes loading a 4.x file).
    pub saved_by: Option<BlendVersion>,
    /// Cycles denoising is on: a Blender built without OpenImageDenoise fails every frame.
    pub denoiser: bool,
    /// The scene renders with Eevee or Workbench, which need OpenGL.
    pub opengl: bool,
}

/// What a volunteer's Blender can do, as it reported when it claimed. A peer that reported nothing (an older or
/// a test volunteer) is given anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCaps {
    pub blender: BlendVersion,
    /// The full version text, for messages (`3.4.1`).
    pub blender_text: String,
    pub denoiser: bool,
    /// Whether Eevee works there; `None`: not known yet, so trusted.
    pub opengl: Option<bool>,
}

impl JobNeeds {
    /// Why a volunteer with `caps` cannot render the job, or None when it can.
    pub fn unmet_by(&self, caps: &PeerCaps) -> Option<String> {
        if let Some(saved_by) = self.saved_by {
            if caps.blender < saved_by {
                return Some(format!("saved by Blender {saved_by}"));
            }
        }
        if self.denoiser && !caps.denoiser {
            return Some("uses Cycles denoising, which needs a Blender built with OpenImageDenoise".into());
        }
        if self.opengl && caps.opengl == Some(false) {
            return Some("renders with Eevee or Workbench, which need OpenGL, and Blender cannot start it".into());
        }
        None
    }
}

/// What `Scheduler::upsert_job` did with a job description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobChange {
    /// The job is new.
    Added,
    /// Same description as before (newly listed done frames may still have been marked).
    Unchanged,
    /// Priority, order, size or range changed: done frames inside the new range are kept, leases of frames now outside
    /// it are recalled.
    Updated,
    /// The .blend hash changed: every frame is pending again, all leases are recalled, failures are forgotten, and
    /// the `done` list is ignored (it describes the old scene). The caller drops its stored frames of the old scene.
    Restarted,
}

/// A frame leased to a volunteer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub job: String,
    pub frame: u32,
    pub blend: BlendHash,
    pub blend_size: u64,
}

/// Answer to "I rendered job/frame; may I upload it?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Discard,
}

/// Tell `peer` to stop working on `job`/`frame`: it is done elsewhere, no longer wanted, or its lease expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recall<P> {
    pub peer: P,
    pub job: String,
    pub frame: u32,
}

/// What became of a frame after a failure report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailOutcome {
    /// The frame is pending again, for another peer (never one that already failed it). Also the answer for a job
    /// that had already failed: the frame waits until the job is revived, and the failure is not reported twice.
    Retry,
    /// This report failed the job (returned once per failure): it hands out nothing more until it is restarted with a
    /// new .blend, its range drops the frame, or `Scheduler::clear_failures`.
    JobFailed { reason: String },
    /// A stale report: unknown job, frame out of range or already done, or a peer that never held the frame in this
    /// incarnation of the job. Nothing changed.
    Ignored,
}

/// Progress of one job; `leased` counts frames, not holders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    pub total: u32,
    pub done: u32,
    pub leased: u32,
    pub pending: u32,
    pub suspended: bool,
    pub failed: Option<String>,
    pub finished: bool,
    /// Frames that failed at least once and are not done.
    pub failing: u32,
}
