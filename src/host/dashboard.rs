//! Feeds the dashboard ([`super::http`]): the latest finished frames and errors, and a [`Snapshot`] of the farm
//! published on a watch channel every tick of the host's loop (500 ms). Building one walks the jobs' frame states
//! (one byte per frame, at most [`MAX_GRID`] cells per job) and the volunteers' leases: well under a millisecond for
//! a farm of hundreds of volunteers, and only on hosts started with `--http`.

use std::{collections::VecDeque, sync::Arc};

use tokio::sync::watch;

use super::http::{ErrorEntry, FinishedFrame, FrameGrid, Snapshot, MAX_GRID};

/// Latest finished frames kept for the dashboard.
const RECENT: usize = 24;
/// Latest errors kept for the dashboard.
const ERRORS: usize = 20;
/// Longest error text kept for the dashboard (the end of Blender's output matters most).
const ERROR_TEXT: usize = 4096;

pub(super) struct Publisher {
    tx: watch::Sender<Arc<Snapshot>>,
    recent: VecDeque<FinishedFrame>,
    errors: VecDeque<ErrorEntry>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Publisher {
    pub fn new(tx: watch::Sender<Arc<Snapshot>>) -> Self {
        Self { tx, recent: VecDeque::new(), errors: VecDeque::new() }
    }

    pub fn frame_done(&mut self, job: &str, frame: u32, file: &str, by: String) {
        self.recent.push_front(FinishedFrame { job: job.into(), frame, file: file.into(), by, at: unix_now() });
        self.recent.truncate(RECENT);
    }

    pub fn error(&mut self, job: &str, frame: Option<u32>, by: Option<String>, text: &str) {
        let start = text.len().saturating_sub(ERROR_TEXT);
        let start = (start..=text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
        let text = text[start..].to_string();
        self.errors.push_front(ErrorEntry { job: job.into(), frame, by, at: unix_now(), text });
        self.errors.truncate(ERRORS);
    }

    /// Publishes a new snapshot with the status and frame grids `build` makes.
    pub fn publish(&mut self, build: impl FnOnce() -> (crate::protocol::StatusReport, Vec<FrameGrid>)) {
        let (status, frames) = build();
        let snapshot = Snapshot {
            status,
            frames,
            recent: self.recent.iter().cloned().collect(),
            errors: self.errors.iter().cloned().collect(),
        };
        self.tx.send_replace(Arc::new(snapshot));
    }
}

impl super::Host {
    /// Publishes the dashboard's snapshot, when there is a dashboard.
    pub(super) fn publish_snapshot(&mut self) {
        let Some(mut feed) = self.snapshots.take() else { return };
        feed.publish(|| {
            let status = self.status_report();
            let grids = status
                .jobs
                .iter()
                .map(|job| match self.scheduler.frame_grid(&job.name, MAX_GRID) {
                    Some((first, states, per_cell)) => FrameGrid { job: job.name.clone(), first, states, per_cell },
                    None => FrameGrid { job: job.name.clone(), first: 0, states: String::new(), per_cell: 1 },
                })
                .collect();
            (status, grids)
        });
        self.snapshots = Some(feed);
    }
}
