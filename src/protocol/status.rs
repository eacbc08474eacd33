//! What a running host says about its farm: every job's progress and every volunteer's work. Sent to
//! `blenderdist status` over [`super::WORK_PROTOCOL`] (CBOR), printed by `status --json` and served at the
//! dashboard's `/api/status` (JSON); the JSON schema is documented in docs/PROTOCOL.md. Part of [`crate::protocol`].

use serde::{Deserialize, Serialize};

/// The whole farm as one host sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub jobs: Vec<JobReport>,
    pub peers: Vec<PeerReport>,
    /// Volunteers banned from the farm for delivering a frame that failed verification (absent from older hosts).
    #[serde(default)]
    pub banned: Vec<BannedPeer>,
}

/// A volunteer the host refuses for good: it delivered a frame that other volunteers' copies contradicted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BannedPeer {
    pub id: String,
    /// Its name when the ban happened in this run of the host (sanitized), else its peer id.
    pub name: String,
    pub reason: String,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a volunteer (none rendering it yet, or none able to).
    Queued,
    Rendering,
    /// Held back by a `NAME.job.suspend` file.
    Suspended,
    Done,
    /// Gave up (too many failures); `error` says why.
    Failed,
    /// The job file was rejected; `error` says why.
    Invalid,
}

/// One job of the host's job folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    pub name: String,
    pub state: JobState,
    pub priority: i32,
    pub frames_total: u32,
    pub frames_done: u32,
    pub frames_rendering: u32,
    /// Frames that failed at least once and are not done.
    pub frames_failed: u32,
    /// Mean render time of this job's finished frames (grant to result), when any finished in this run of the host.
    pub avg_frame_seconds: Option<f64>,
    /// Frames left × average frame time ÷ volunteers working on the job; absent until it can be estimated.
    pub eta_seconds: Option<f64>,
    /// The .blend, as the job file names it.
    pub blend: String,
    pub error: Option<String>,
}

/// One connected volunteer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerReport {
    /// Its libp2p peer id.
    pub id: String,
    /// The name it announced (`join --name`), sanitized; display only, never trusted.
    pub name: String,
    /// Its Blender version, when it said.
    pub blender: Option<String>,
    /// Frames it delivered to this host since the host started.
    pub frames_done: u32,
    /// The frames it renders now.
    pub rendering: Vec<FrameRef>,
    pub avg_frame_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameRef {
    pub job: String,
    pub frame: u32,
}
