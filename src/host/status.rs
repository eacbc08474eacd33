//! What the host knows about its volunteers (the names they announce, frames they delivered, how long those took)
//! and how long each job's frames take, and the [`StatusReport`] built from it with the scheduler's counts, for
//! `blenderdist status` and the dashboard.

use std::collections::HashMap;

use libp2p::PeerId;

use crate::protocol::{display_name, FrameRef, JobReport, JobState, PeerReport, StatusReport, VolunteerCaps};

/// Per-volunteer and per-job tallies of this run of the host (not durable: averages restart with the host).
#[derive(Debug, Default)]
pub(super) struct Tallies {
    peers: HashMap<PeerId, Volunteer>,
    jobs: HashMap<String, Times>,
}

#[derive(Debug, Default)]
struct Volunteer {
    name: Option<String>,
    blender: Option<String>,
    times: Times,
}

/// Frames finished and the seconds they took, grant to result.
#[derive(Debug, Default, Clone, Copy)]
struct Times {
    frames: u32,
    seconds: f64,
}

impl Times {
    fn add(&mut self, seconds: f64) {
        self.frames += 1;
        self.seconds += seconds;
    }

    fn average(&self) -> Option<f64> {
        (self.frames > 0).then(|| self.seconds / f64::from(self.frames))
    }
}

impl Tallies {
    /// A volunteer said who it is with a claim; returns whether this is news (a new volunteer or a new name), so
    /// the host logs it once.
    pub fn announce(&mut self, peer: PeerId, caps: &VolunteerCaps) -> bool {
        let entry = self.peers.entry(peer).or_default();
        let name = caps.name.as_deref().and_then(display_name);
        let blender = display_name(&caps.blender);
        let news = entry.name != name || entry.blender.is_none();
        entry.name = name;
        entry.blender = blender;
        news
    }

    /// A volunteer that claimed without saying what it is (fake renderers in tests).
    pub fn seen(&mut self, peer: PeerId) {
        self.peers.entry(peer).or_default();
    }

    pub fn frame_done(&mut self, peer: PeerId, job: &str, seconds: f64) {
        self.peers.entry(peer).or_default().times.add(seconds);
        self.jobs.entry(job.to_string()).or_default().add(seconds);
    }

    pub fn peer_gone(&mut self, peer: &PeerId) -> Option<String> {
        self.peers.remove(peer).map(|_| self.label(peer))
    }

    pub fn forget_job(&mut self, job: &str) {
        self.jobs.remove(job);
    }

    /// How logs name a volunteer: `alice-desktop (12D3KooW…)`, or its peer id when it gave no name.
    pub fn label(&self, peer: &PeerId) -> String {
        match self.peers.get(peer).and_then(|v| v.name.as_deref()) {
            Some(name) => format!("{name} ({peer})"),
            None => peer.to_string(),
        }
    }

    /// A volunteer's name, or its peer id when it gave none.
    pub fn name_of(&self, peer: &PeerId) -> String {
        self.peers.get(peer).and_then(|v| v.name.clone()).unwrap_or_else(|| peer.to_string())
    }

    /// The volunteers' part of the report; `leases` gives the frames each renders now.
    pub fn peer_reports(&self, leases: impl Fn(&PeerId) -> Vec<(String, u32)>) -> Vec<PeerReport> {
        let mut peers: Vec<PeerReport> = self
            .peers
            .iter()
            .map(|(id, v)| PeerReport {
                id: id.to_string(),
                name: v.name.clone().unwrap_or_else(|| id.to_string()),
                blender: v.blender.clone(),
                frames_done: v.times.frames,
                rendering: leases(id).into_iter().map(|(job, frame)| FrameRef { job, frame }).collect(),
                avg_frame_seconds: v.times.average(),
            })
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        peers
    }

    /// The volunteers that claimed work.
    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.peers.keys()
    }

    /// Mean frame time of `job` in this run of the host.
    pub fn job_average(&self, job: &str) -> Option<f64> {
        self.jobs.get(job).and_then(Times::average)
    }
}

/// A job's line of the report from the scheduler's counts. `working`: volunteers rendering it now.
pub(super) fn job_report(
    name: &str,
    (blend, priority): (String, i32),
    status: &crate::scheduler::JobStatus,
    average: Option<f64>,
    working: usize,
) -> JobReport {
    let state = if status.finished {
        JobState::Done
    } else if status.failed.is_some() {
        JobState::Failed
    } else if status.suspended {
        JobState::Suspended
    } else if status.leased > 0 {
        JobState::Rendering
    } else {
        JobState::Queued
    };
    let left = status.total - status.done;
    let eta_seconds = match (state, average) {
        (JobState::Done, _) => Some(0.0),
        (JobState::Rendering, Some(avg)) if working > 0 => Some(f64::from(left) * avg / working as f64),
        _ => None,
    };
    JobReport {
        name: name.to_string(),
        state,
        priority,
        frames_total: status.total,
        frames_done: status.done,
        frames_rendering: status.leased,
        frames_failed: status.failing,
        avg_frame_seconds: average,
        eta_seconds,
        blend,
        error: status.failed.clone(),
    }
}

/// A job file that was rejected, or is still being prepared.
pub(super) fn other_job(name: &str, error: Option<&str>) -> JobReport {
    JobReport {
        name: name.to_string(),
        state: if error.is_some() { JobState::Invalid } else { JobState::Queued },
        priority: 0,
        frames_total: 0,
        frames_done: 0,
        frames_rendering: 0,
        frames_failed: 0,
        avg_frame_seconds: None,
        eta_seconds: None,
        blend: String::new(),
        error: error.map(str::to_string),
    }
}

/// The report: jobs in the scheduler's service order, then job files that are not running, by name.
pub(super) fn report(jobs: Vec<JobReport>, peers: Vec<PeerReport>) -> StatusReport {
    StatusReport { jobs, peers, banned: Vec::new() }
}

impl super::Host {
    /// Every job's progress and every volunteer's work, for `blenderdist status` and the dashboard.
    pub(super) fn status_report(&self) -> crate::protocol::StatusReport {
        let leases: HashMap<PeerId, Vec<(String, u32)>> =
            self.tallies.peers().map(|peer| (*peer, self.scheduler.leases_of(peer))).collect();
        let mut jobs = Vec::new();
        for name in self.scheduler.jobs() {
            let (Some(st), Some(file)) = (self.scheduler.status(name), self.jobs.blend_and_priority(name)) else {
                continue;
            };
            let working = leases.values().filter(|l| l.iter().any(|(job, _)| job == name)).count();
            jobs.push(job_report(name, file, &st, self.tallies.job_average(name), working));
        }
        for (name, error) in self.jobs.not_running() {
            jobs.push(other_job(&name, error.as_deref()));
        }
        let peers = self.tallies.peer_reports(|peer| leases.get(peer).cloned().unwrap_or_default());
        StatusReport { banned: self.bans.clone(), ..report(jobs, peers) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::JobStatus;

    fn status(total: u32, done: u32, leased: u32) -> JobStatus {
        JobStatus {
            total,
            done,
            leased,
            pending: total - done - leased,
            suspended: false,
            failed: None,
            finished: done == total,
            failing: 0,
        }
    }

    #[test]
    fn states_and_eta() {
        let blend = || ("/jobs/a.blend".to_string(), 0);
        let table = [
            (status(10, 0, 0), Some(2.0), 0, JobState::Queued, None),
            (status(10, 2, 2), Some(2.0), 2, JobState::Rendering, Some(8.0)),
            (status(10, 2, 2), None, 2, JobState::Rendering, None),
            (status(10, 10, 0), Some(2.0), 0, JobState::Done, Some(0.0)),
            (JobStatus { suspended: true, ..status(10, 2, 0) }, Some(2.0), 0, JobState::Suspended, None),
            (JobStatus { failed: Some("boom".into()), ..status(10, 2, 0) }, None, 0, JobState::Failed, None),
        ];
        for (st, avg, working, state, eta) in table {
            let r = job_report("a", blend(), &st, avg, working);
            assert_eq!((r.state, r.eta_seconds), (state, eta), "{st:?}");
        }
    }

    #[test]
    fn names_are_sanitized_and_labelled() {
        let mut t = Tallies::default();
        let peer = PeerId::random();
        let caps = VolunteerCaps { name: Some("<b>bob\npc</b>".into()), blender: "3.4.1".into(), ..Default::default() };
        assert!(t.announce(peer, &caps));
        assert!(!t.announce(peer, &caps));
        assert_eq!(t.label(&peer), format!("bbob pc/b ({peer})"));
        t.frame_done(peer, "a", 3.0);
        t.frame_done(peer, "a", 1.0);
        let peers = t.peer_reports(|_| vec![("a".into(), 7)]);
        assert_eq!(peers[0].frames_done, 2);
        assert_eq!(peers[0].avg_frame_seconds, Some(2.0));
        assert_eq!(peers[0].rendering, vec![FrameRef { job: "a".into(), frame: 7 }]);
        assert_eq!(t.job_average("a"), Some(2.0));
        assert!(t.peer_gone(&peer).is_some());
        assert!(t.peer_reports(|_| vec![]).is_empty());
    }
}
