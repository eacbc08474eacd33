//! Tells the host when JOBDIR, or a folder holding files its jobs use, may have changed: at once through notify, and
//! every second regardless, because notify is blind on some file systems (network mounts, some containers).

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::warn;

/// The fallback rescan period; also the bound on how late a change is seen.
const RESCAN: Duration = Duration::from_secs(1);
/// Most folders of jobs' files watched through notify (each costs an inotify watch); the rest rely on the rescan.
const MAX_WATCHED_FOLDERS: usize = 1024;

pub struct JobDirWatcher {
    /// Kept alive for as long as we want notify events.
    watcher: Option<notify::RecommendedWatcher>,
    /// Folders of jobs' files being watched besides JOBDIR.
    folders: HashSet<PathBuf>,
    events: mpsc::Receiver<()>,
    rescan: tokio::time::Interval,
}

impl JobDirWatcher {
    pub fn start(jobdir: &Path) -> Self {
        let (tx, events) = mpsc::channel(1);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Reads (our own rescans among them) and the host's own job logs and lock change no job.
            let ours = |p: &std::path::PathBuf| {
                p.extension().is_some_and(|e| e == "log" || e == "lock") || p.ends_with(".blenderdist-host.lock")
            };
            if event.is_ok_and(|e| e.kind.is_access() || (!e.paths.is_empty() && e.paths.iter().all(ours))) {
                return;
            }
            // A full channel already holds a wake-up; dropping this one loses nothing.
            let _ = tx.try_send(());
        })
        .and_then(|mut w| w.watch(jobdir, RecursiveMode::NonRecursive).map(|_| w));
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                warn!("cannot watch {} ({e}); rescanning it every second instead", jobdir.display());
                None
            }
        };
        Self { watcher, folders: HashSet::new(), events, rescan: tokio::time::interval(RESCAN) }
    }

    /// Watches exactly these folders of jobs' files from now on (besides JOBDIR), so a repainted texture is noticed
    /// at once rather than at the next rescan.
    pub fn watch_folders(&mut self, mut wanted: HashSet<PathBuf>) {
        let Some(watcher) = self.watcher.as_mut() else { return };
        if wanted.len() > MAX_WATCHED_FOLDERS {
            let mut sorted: Vec<PathBuf> = wanted.into_iter().collect();
            sorted.sort();
            wanted = sorted.into_iter().take(MAX_WATCHED_FOLDERS).collect();
        }
        for gone in self.folders.difference(&wanted) {
            let _ = watcher.unwatch(gone);
        }
        for new in wanted.difference(&self.folders) {
            // A folder that cannot be watched is still rescanned every second.
            let _ = watcher.watch(new, RecursiveMode::NonRecursive);
        }
        self.folders = wanted;
    }

    /// Resolves when the folder should be rescanned. Cancellation-safe: it is one arm of the host's `select!`.
    pub async fn changed(&mut self) {
        tokio::select! {
            Some(()) = self.events.recv() => {
                // One rescan covers a burst of events.
                while self.events.try_recv().is_ok() {}
            }
            _ = self.rescan.tick() => {}
        }
    }
}
