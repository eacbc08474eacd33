//! The host's answers to volunteers' work requests: claims, renewals, result notices, failure reports and status
//! questions. Split from the event loop in `mod.rs`; every decision is the scheduler's, this file turns it into
//! answers, log lines and expected uploads.

use libp2p::PeerId;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{blobs::ExpectedUpload, Host, MAX_CLAIM_SLOTS};
use crate::{
    protocol::{
        check_output_name, is_frame_extension, one_line, truncate_utf8, BlobHash, ExtraOutput, FrameGrant,
        VolunteerCaps, WorkRequest, WorkResponse, MAX_BLOB_SIZE, MAX_ERROR_TEXT, MAX_EXTRA_OUTPUTS, MAX_LOGGED_TEXT,
        MAX_NAME, PROTOCOL_VERSION,
    },
    scheduler::{BlendVersion, FailOutcome, Grant, PeerCaps, Verdict},
};

/// What the scheduler needs of a volunteer's reported capabilities; a version it cannot read counts as unknown.
fn peer_caps(caps: VolunteerCaps) -> Option<PeerCaps> {
    let mut text = caps.blender;
    truncate_utf8(&mut text, 64);
    let blender = BlendVersion::from_blender_version_string(&text)?;
    Some(PeerCaps { blender, blender_text: text, denoiser: caps.denoiser, opengl: caps.opengl })
}

fn to_wire(g: Grant) -> FrameGrant {
    FrameGrant { job: g.job, frame: g.frame, blend: g.blend, blend_size: g.blend_size }
}

impl Host {
    pub(super) fn on_request(&mut self, peer: PeerId, request: WorkRequest) -> WorkResponse {
        match request {
            WorkRequest::Claim { version, .. } if version != PROTOCOL_VERSION => WorkResponse::Refused {
                reason: format!("this host speaks protocol version {PROTOCOL_VERSION}, the volunteer {version}"),
            },
            WorkRequest::Claim { .. } if self.verifier.is_banned(&peer) => WorkResponse::Refused {
                reason: "this volunteer is banned from this farm: it delivered a frame that failed verification".into(),
            },
            WorkRequest::Claim { slots, caps, .. } => {
                match &caps {
                    Some(caps) if self.tallies.announce(peer, caps) => {
                        info!(
                            "volunteer {} joined (Blender {})",
                            self.tallies.label(&peer),
                            caps.blender.escape_debug()
                        );
                    }
                    Some(_) => {}
                    None => self.tallies.seen(peer),
                }
                if let Some(caps) = caps.and_then(peer_caps) {
                    self.scheduler.set_caps(&peer, caps);
                }
                let now = Instant::now();
                let slots = slots.clamp(1, MAX_CLAIM_SLOTS);
                // A check copy first (at most one per claim): it looks like any other frame to the volunteer.
                let scheduler = &self.scheduler;
                let copy = self.verifier.claim(&peer, now.into_std(), |job| scheduler.serves_checks(&peer, job));
                let copy = copy.and_then(|(job, frame, _)| self.scheduler.check_grant(&peer, &job, frame));
                let mut grants = self.scheduler.claim(&peer, slots - u32::from(copy.is_some()), now.into_std());
                if let Some(copy) = copy {
                    debug!("a check copy of frame {} of {} granted to {peer}", copy.frame, copy.job);
                    grants.insert(0, copy);
                }
                if grants.is_empty() {
                    return WorkResponse::NoWork;
                }
                for g in &grants {
                    debug!("frame {} of {} granted to {peer}", g.frame, g.job);
                    self.grant_times.insert((g.job.clone(), g.frame), now);
                    if self.jobs.first_grant(&g.job) {
                        let by = self.tallies.label(&peer);
                        self.joblog.append(&g.job, &format!("started: frame {} to {by}", g.frame));
                    }
                }
                WorkResponse::Granted(grants.into_iter().map(to_wire).collect())
            }
            WorkRequest::Renew { job, frame, blend } => {
                let now = Instant::now().into_std();
                if self.verifier.renew(&peer, &job, frame, blend, now)
                    || self.scheduler.renew(&peer, &job, frame, blend, now)
                {
                    WorkResponse::Noted
                } else {
                    WorkResponse::Discard
                }
            }
            WorkRequest::Rendered { job, frame, blend, blob, size, ext, outputs } => {
                self.on_rendered(peer, (job, frame, blend), (blob, size, ext), outputs)
            }
            WorkRequest::Status => WorkResponse::Status(self.status_report()),
            WorkRequest::Failed { job, frame, blend, .. } if self.verifier.holds(&peer, &job, frame, blend) => {
                // A check copy that could not be rendered says nothing about the frame: someone else is asked.
                self.verifier.copy_failed(&peer, &job, frame);
                WorkResponse::Noted
            }
            WorkRequest::Failed { job, frame, blend, error } => {
                // The report's text reaches logs, the job log and the dashboard as one escaped, capped line.
                let error = one_line(&error, MAX_LOGGED_TEXT.min(MAX_ERROR_TEXT));
                // Only the current holder of the frame's grant may report it failed: a peer without one (a fresh
                // identity, or one whose lease ran out) would otherwise fail frames, and jobs, it never rendered.
                if !self.scheduler.leases_of(&peer).iter().any(|(j, f)| *j == job && *f == frame) {
                    let job = one_line(&job, MAX_NAME);
                    debug!("ignoring a failure of frame {frame} of {job} from {peer}, which holds no lease on it");
                    return WorkResponse::Refused { reason: format!("no lease on frame {frame} of {job}") };
                }
                let outcome = self.scheduler.frame_failed(&peer, &job, frame, blend, &error);
                if outcome == FailOutcome::Ignored {
                    debug!("ignoring a stale failure of frame {frame} of {job} from {peer}: {error}");
                    return WorkResponse::Noted;
                }
                let by = self.tallies.label(&peer);
                if let Some(feed) = &mut self.snapshots {
                    feed.error(&job, Some(frame), Some(by.clone()), &error);
                }
                warn!("frame {frame} of {job} failed on {by}: {error}");
                self.joblog.append(&job, &format!("frame {frame} failed on {by}: {error}"));
                self.offer_now = true;
                if let FailOutcome::JobFailed { reason } = outcome {
                    // Fresh peer ids cost nothing: the owner's Blender confirms the failure first, when there is one.
                    if self.confirm_failure(&job, frame, blend, reason.clone()) {
                        return WorkResponse::Noted;
                    }
                    warn!("job {job} failed: {reason}");
                    self.joblog.append(&job, &format!("job failed: {reason}"));
                    self.job_ended(&job, super::finish::JobEnd::Failed);
                }
                WorkResponse::Noted
            }
        }
    }

    /// A volunteer rendered a frame: check what it announces, then invite the upload of its File Output files and
    /// of the frame itself.
    fn on_rendered(
        &mut self,
        peer: PeerId,
        (job, frame, blend): (String, u32, BlobHash),
        (blob, size, ext): (BlobHash, u64, String),
        outputs: Vec<ExtraOutput>,
    ) -> WorkResponse {
        let ext = ext.to_ascii_lowercase();
        if !is_frame_extension(&ext) || size == 0 || size > MAX_BLOB_SIZE {
            let (job, ext) = (one_line(&job, MAX_NAME), one_line(&ext, 16));
            warn!("{peer} reported frame {frame} of {job} as a {size}-byte .{ext} file; refusing it");
            return WorkResponse::Refused { reason: format!("a {size}-byte .{ext} frame is not acceptable") };
        }
        if outputs.len() > MAX_EXTRA_OUTPUTS {
            return WorkResponse::Refused { reason: format!("more than {MAX_EXTRA_OUTPUTS} File Output files") };
        }
        for output in &outputs {
            if let Err(why) = check_output_name(&output.name) {
                let (job, name) = (one_line(&job, MAX_NAME), one_line(&output.name, 256));
                warn!("{peer} reported a File Output file {name} for frame {frame} of {job}: {why}");
                return WorkResponse::Refused {
                    reason: format!("the output {:?} is not acceptable: {why}", output.name),
                };
            }
            if output.size == 0 || output.size > MAX_BLOB_SIZE {
                return WorkResponse::Refused { reason: format!("a {}-byte output is not acceptable", output.size) };
            }
        }
        let check = self.verifier.holds(&peer, &job, frame, blend);
        let want = self.jobs.resolution(&job);
        let verdict = if check { Verdict::Accept } else { self.scheduler.rendered(&peer, &job, frame, blend) };
        match verdict {
            Verdict::Accept if check => {
                // A check copy: compared with the stored frame, never stored; its File Output files are not needed.
                let upload = ExpectedUpload { job, frame, ext, size, blend, want, output: None, check: true };
                self.blob_server.expect(peer, blob, upload);
                WorkResponse::Upload
            }
            Verdict::Accept => {
                let upload = ExpectedUpload { job, frame, ext, size, blend, want, output: None, check: false };
                for output in outputs {
                    let extra = ExpectedUpload { size: output.size, output: Some(output.name), ..upload.clone() };
                    self.blob_server.expect(peer, output.blob, extra);
                }
                self.blob_server.expect(peer, blob, upload);
                WorkResponse::Upload
            }
            Verdict::Discard => WorkResponse::Discard,
        }
    }
}
