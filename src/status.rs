//! `blenderdist status`: ask a running host over the mesh what its farm is doing, and print it for people (a table
//! with progress bars) or for scripts (`--json`, the [`StatusReport`] schema in docs/PROTOCOL.md).

use std::{fmt::Write as _, time::Duration};

use anyhow::Context as _;
use libp2p::Multiaddr;

use crate::{
    net::{self, NetConfig, NetEvent},
    protocol::{JobState, StatusReport, WorkRequest, WorkResponse},
};

/// How long a host may take to be reached and to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// Connects to the host at `addr` with a throwaway identity (it claims nothing, so the host never counts it as a
/// volunteer), asks for its status and disconnects.
pub async fn fetch(addr: Multiaddr) -> anyhow::Result<StatusReport> {
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let config = NetConfig { keypair, is_host: false, listen: vec![], bootstrap: vec![addr.clone()], mdns: false };
    let (client, mut events) = net::spawn(config)?;
    let ask = async {
        let host = loop {
            match events.recv().await {
                Some(NetEvent::HostFound(peer)) => break peer,
                Some(NetEvent::Incompatible { theirs, host: true, .. }) => anyhow::bail!(
                    "the host speaks {theirs}, this program {}; use the same version of blenderdist",
                    crate::protocol::IDENTIFY_PROTOCOL
                ),
                Some(_) => continue,
                None => anyhow::bail!("the network stopped"),
            }
        };
        match client.request(host, WorkRequest::Status).await? {
            WorkResponse::Status(report) => Ok(report),
            WorkResponse::Refused { reason } => anyhow::bail!("the host refused: {reason}"),
            other => anyhow::bail!("the host answered {other:?}; is it an older blenderdist?"),
        }
    };
    tokio::time::timeout(ANSWER_WITHIN, ask)
        .await
        .with_context(|| format!("no blenderdist host answered at {addr} within {} s", ANSWER_WITHIN.as_secs()))?
}

/// The report as `status --json` prints it.
pub fn to_json(report: &StatusReport) -> anyhow::Result<String> {
    serde_json::to_string_pretty(report).context("cannot encode the status as JSON")
}

/// The report as a table for people: each job with a progress bar, its state, frame counts, average frame time and
/// ETA; then each volunteer.
pub fn to_text(report: &StatusReport) -> String {
    let mut out = String::new();
    if report.jobs.is_empty() {
        out.push_str("no jobs\n");
    }
    let width = report.jobs.iter().map(|j| j.name.chars().count()).max().unwrap_or(0).max(3);
    for job in &report.jobs {
        let state = state_word(job.state);
        let _ = write!(out, "{:<width$}  {} {:>5.1}%  {:<9}", job.name, bar(job), percent(job), state);
        let _ = write!(out, "  {}/{} done", job.frames_done, job.frames_total);
        if job.frames_rendering > 0 {
            let _ = write!(out, ", {} rendering", job.frames_rendering);
        }
        if job.frames_failed > 0 {
            let _ = write!(out, ", {} failed", job.frames_failed);
        }
        if let Some(avg) = job.avg_frame_seconds {
            let _ = write!(out, ", {} per frame", duration(avg));
        }
        if let Some(eta) = job.eta_seconds.filter(|_| job.state == JobState::Rendering) {
            let _ = write!(out, ", ETA {}", duration(eta));
        }
        if let Some(error) = &job.error {
            let _ = write!(out, "\n{:<width$}  {}", "", error.replace('\n', " "));
        }
        out.push('\n');
    }
    out.push('\n');
    if report.peers.is_empty() {
        out.push_str("no volunteers\n");
    }
    for peer in &report.peers {
        let id = &peer.id[peer.id.len().saturating_sub(8)..];
        let _ = write!(out, "{} (…{id})  Blender {}", peer.name, peer.blender.as_deref().unwrap_or("?"));
        let _ = write!(out, "  {} frames done", peer.frames_done);
        if let Some(avg) = peer.avg_frame_seconds {
            let _ = write!(out, ", {} per frame", duration(avg));
        }
        let now: Vec<String> = peer.rendering.iter().map(|f| format!("{} frame {}", f.job, f.frame)).collect();
        if now.is_empty() {
            out.push_str(", idle");
        } else {
            let _ = write!(out, ", rendering {}", now.join(", "));
        }
        out.push('\n');
    }
    out
}

fn state_word(state: JobState) -> &'static str {
    match state {
        JobState::Queued => "queued",
        JobState::Rendering => "rendering",
        JobState::Suspended => "suspended",
        JobState::Done => "done",
        JobState::Failed => "failed",
        JobState::Invalid => "invalid",
    }
}

fn percent(job: &crate::protocol::JobReport) -> f64 {
    if job.frames_total == 0 {
        return 0.0;
    }
    100.0 * f64::from(job.frames_done) / f64::from(job.frames_total)
}

/// A 20-character bar: `[#######.............]`.
fn bar(job: &crate::protocol::JobReport) -> String {
    let full = (percent(job) / 5.0).floor() as usize;
    format!("[{}{}]", "#".repeat(full.min(20)), ".".repeat(20 - full.min(20)))
}

/// Seconds for people: `41.2 s`, `12 min`, `3 h 05 min`.
fn duration(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1} s")
    } else if secs < 3600.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        let mins = (secs / 60.0).round() as u64;
        format!("{} h {:02} min", mins / 60, mins % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FrameRef, JobReport, PeerReport};

    #[test]
    fn text_and_json() {
        let report = StatusReport {
            jobs: vec![JobReport {
                name: "shot1".into(),
                state: JobState::Rendering,
                priority: 0,
                frames_total: 250,
                frames_done: 125,
                frames_rendering: 2,
                frames_failed: 1,
                avg_frame_seconds: Some(41.2),
                eta_seconds: Some(5400.0),
                blend: "/jobs/shot1.blend".into(),
                error: None,
            }],
            peers: vec![PeerReport {
                id: "12D3KooWabcdefgh".into(),
                name: "alice-desktop".into(),
                blender: Some("3.4.1".into()),
                frames_done: 7,
                rendering: vec![FrameRef { job: "shot1".into(), frame: 41 }],
                avg_frame_seconds: Some(40.0),
            }],
        };
        let text = to_text(&report);
        assert!(text.contains("shot1  [##########..........]  50.0%  rendering"), "{text}");
        assert!(text.contains("125/250 done, 2 rendering, 1 failed, 41.2 s per frame, ETA 1 h 30 min"), "{text}");
        assert!(text.contains("alice-desktop (…abcdefgh)  Blender 3.4.1  7 frames done"), "{text}");
        assert!(text.contains("rendering shot1 frame 41"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&to_json(&report).unwrap()).unwrap();
        assert_eq!(json["jobs"][0]["state"], "rendering");
        assert_eq!(json["jobs"][0]["eta_seconds"], 5400.0);
        assert_eq!(json["peers"][0]["rendering"][0]["frame"], 41);
    }
}
