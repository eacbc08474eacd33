//! Reconciles JOBDIR with the scheduler: new, changed, suspended and removed job files, and the ones that cannot
//! be used (reported once per distinct reason, in the host's log and in `JOBDIR/NAME.log`).

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use tracing::{info, warn};

use super::{
    jobfile,
    project::Prepared,
    scan::{DirScan, ScannedJob},
    Host,
};
use crate::{
    protocol::BlobHash,
    scheduler::{JobChange, JobDesc, JobNeeds},
    store::state::JobRecord,
};

/// The jobs the host knows, and what it last said about the bad ones.
#[derive(Default)]
pub struct JobTable {
    jobs: HashMap<String, TrackedJob>,
    errors: HashMap<String, String>,
    /// Jobs whose project is being prepared in the background.
    preparing: HashSet<String>,
    /// What the job log last said about jobs no volunteer can render, so it is said once.
    waiting: HashMap<String, String>,
    /// From the last scan of JOBDIR: whether each job is suspended, and its arrival order.
    scanned: HashMap<String, (bool, u64)>,
    /// Job names in JOBDIR at the last scan: a preparation that finishes for a job no longer listed is dropped.
    listed: HashSet<String>,
}

/// A step of a job's way in, done in the background and sent back to the event loop.
pub struct JobPrepared {
    file: jobfile::JobFile,
    stage: Stage,
}

enum Stage {
    /// Its project was prepared (hashed, dependencies found), or could not be.
    Prepared(Result<Prepared, super::project::PrepareError>),
    /// A new or changed job was recorded in the state store (a durable commit); with its frames already done whose
    /// files are still in the render folder.
    Recorded(Prepared, Result<Vec<u32>, String>),
}

struct TrackedJob {
    file: jobfile::JobFile,
    blend: BlobHash,
    /// The size of its frames in pixels, when the owner's Blender told (frames of another size are refused).
    resolution: Option<(u32, u32)>,
    suspended: bool,
    started_reported: bool,
    finished_reported: bool,
}

impl JobTable {
    /// The .blend (as the job file names it) and priority of an accepted job.
    pub fn blend_and_priority(&self, name: &str) -> Option<(String, i32)> {
        self.jobs.get(name).map(|j| (j.file.blend.display().to_string(), j.file.priority))
    }

    /// The job file of an accepted job.
    pub fn file(&self, name: &str) -> Option<&jobfile::JobFile> {
        self.jobs.get(name).map(|j| &j.file)
    }

    /// Done frames of the job are wanted again (their author was banned): its end will be reported again.
    pub fn reopen(&mut self, name: &str) {
        if let Some(job) = self.jobs.get_mut(name) {
            job.finished_reported = false;
        }
    }

    /// The size of a job's frames in pixels, when known.
    pub fn resolution(&self, name: &str) -> Option<(u32, u32)> {
        self.jobs.get(name).and_then(|j| j.resolution)
    }

    /// Job files that are not (yet) jobs: rejected ones with their reason, and those being prepared.
    pub fn not_running(&self) -> Vec<(String, Option<String>)> {
        let mut out: Vec<(String, Option<String>)> =
            self.errors.iter().map(|(name, why)| (name.clone(), Some(why.clone()))).collect();
        out.extend(self.preparing.iter().filter(|n| !self.jobs.contains_key(*n)).map(|n| (n.clone(), None)));
        out.sort();
        out
    }

    fn suspended(&self, name: &str) -> bool {
        self.scanned.get(name).is_some_and(|s| s.0)
    }

    /// True the first time a frame of this job (in its current version) is granted, for the job log.
    pub fn first_grant(&mut self, name: &str) -> bool {
        match self.jobs.get_mut(name) {
            Some(t) if !t.started_reported => {
                t.started_reported = true;
                true
            }
            _ => false,
        }
    }
}

impl Host {
    /// Brings the scheduler in line with a scan of JOBDIR (read on a blocking thread): job files that are gone or
    /// unusable are dealt with here; every usable one has its project prepared in the background
    /// ([`Host::on_prepared`] applies the result). Returns whether anything changed.
    pub(super) fn on_scan(&mut self, scan: DirScan) -> bool {
        if let Some(error) = scan.error {
            warn!("cannot list the job folder {error}");
            return false;
        }
        let mut changed = false;
        let mut seen = HashSet::new();
        for ScannedJob { name, file, suspended, order } in scan.jobs {
            let name = match name {
                Ok(name) => name,
                Err(shown) => {
                    seen.insert(shown.clone());
                    if let std::collections::hash_map::Entry::Vacant(e) = self.jobs.errors.entry(shown) {
                        warn!(
                            "ignoring {}: a job name must not be empty, start with a dot or hold control characters",
                            e.key()
                        );
                        e.insert("bad name".into());
                    }
                    continue;
                }
            };
            seen.insert(name.clone());
            self.jobs.scanned.insert(name.clone(), (suspended, order));
            match file {
                Ok(file) => changed |= self.prepare_job(file),
                Err(e) => changed |= self.reject_job(&name, e),
            }
        }
        let gone: Vec<String> = self.jobs.jobs.keys().filter(|n| !seen.contains(*n)).cloned().collect();
        for name in gone {
            self.cancel_job(&name, "its job file was removed");
            changed = true;
        }
        self.jobs.errors.retain(|name, _| seen.contains(name));
        self.jobs.scanned.retain(|name, _| seen.contains(name));
        self.jobs.listed = seen;
        changed
    }

    /// Prepares a job's project in the background, unless a preparation of it is running already. A job whose
    /// project is known only has its suspension brought up to date here.
    fn prepare_job(&mut self, file: jobfile::JobFile) -> bool {
        let name = file.name.clone();
        let changed = self.sync_suspension(&name);
        if !self.jobs.preparing.insert(name.clone()) {
            return changed;
        }
        let (preparer, done) = (self.preparer.clone(), self.prepared_tx.clone());
        tokio::spawn(async move {
            let result = preparer.prepare(&file.blend).await;
            let _ = done.send(JobPrepared { file, stage: Stage::Prepared(result) }).await;
        });
        changed
    }

    /// A preparation or a recording finished: the job starts, restarts on new files, or stays as it is.
    pub(super) fn on_prepared(&mut self, prepared: JobPrepared) -> bool {
        let JobPrepared { file, stage } = prepared;
        self.jobs.preparing.remove(&file.name);
        if !self.jobs.listed.contains(&file.name) {
            return false;
        }
        match stage {
            Stage::Prepared(Ok(project)) => self.apply_job(file, project),
            Stage::Prepared(Err(e)) => self.reject_job(&file.name.clone(), e.to_string()),
            Stage::Recorded(project, Ok(done)) => self.start_job(file, project, done),
            Stage::Recorded(_, Err(e)) => self.reject_job(&file.name.clone(), e),
        }
    }

    fn sync_suspension(&mut self, name: &str) -> bool {
        let suspended = self.jobs.suspended(name);
        let Some(tracked) = self.jobs.jobs.get_mut(name) else { return false };
        if tracked.suspended == suspended {
            return false;
        }
        tracked.suspended = suspended;
        self.scheduler.set_suspended(name, suspended);
        let what = if suspended { "suspended: no new frames until NAME.job.suspend goes" } else { "resumed" };
        info!("job {name} {what}");
        self.joblog.append(name, what);
        true
    }

    /// A prepared job: unchanged, it only has its suspension brought up to date; new or changed, it is recorded in
    /// the state store off the loop first ([`Host::start_job`] goes on when that is durable).
    fn apply_job(&mut self, file: jobfile::JobFile, project: Prepared) -> bool {
        let name = file.name.clone();
        self.jobs.errors.remove(&name);
        let unchanged = self.jobs.jobs.get(&name).is_some_and(|t| t.file == file && t.blend == project.manifest);
        if !unchanged {
            self.record_job(file, project);
            return false;
        }
        self.sync_suspension(&name)
    }

    /// Records a new or changed job (a durable commit, which also forgets the done frames of an older .blend) and
    /// reads which of its frames are done and still on disk, on a blocking thread: a job of a million frames must not
    /// hold up the loop. The job counts as being prepared until the answer is back.
    fn record_job(&mut self, file: jobfile::JobFile, project: Prepared) {
        self.jobs.preparing.insert(file.name.clone());
        let (state, tx) = (self.state.clone(), self.prepared_tx.clone());
        let folder = self.config.renderdir.join(&file.name);
        let record = JobRecord { blend: project.manifest, first: file.first, last: file.last };
        let name = file.name.clone();
        tokio::spawn(async move {
            let done = tokio::task::spawn_blocking(move || {
                state.put_job(&name, &record).map_err(|e| e.to_string())?;
                let mut done = state.done_frames(&name).map_err(|e| e.to_string())?;
                // A frame the owner deleted from the render folder is rendered again.
                let present = frames_on_disk(&folder);
                done.retain(|f| present.contains(f));
                Ok(done)
            })
            .await
            .unwrap_or_else(|e| Err(format!("recording the job stopped: {e}")));
            let _ = tx.send(JobPrepared { file, stage: Stage::Recorded(project, done) }).await;
        });
    }

    /// A recorded job goes to the scheduler: accepted, updated or restarted.
    fn start_job(&mut self, file: jobfile::JobFile, project: Prepared, done: Vec<u32>) -> bool {
        let name = file.name.clone();
        let blend = project.manifest;
        self.upsert_job(&file, &project, &done);
        let (resolution, suspended) = (project.scene.resolution, self.jobs.suspended(&name));
        let tracked =
            TrackedJob { file, blend, resolution, suspended, started_reported: false, finished_reported: false };
        self.jobs.jobs.insert(name.clone(), tracked);
        self.scheduler.set_suspended(&name, suspended);
        if suspended {
            info!("job {name} suspended");
            self.joblog.append(&name, "suspended: no new frames until NAME.job.suspend goes");
        }
        true
    }

    fn upsert_job(&mut self, file: &jobfile::JobFile, project: &Prepared, done: &[u32]) {
        let (blend, size) = (project.manifest, project.manifest_size);
        let desc = JobDesc {
            name: file.name.clone(),
            blend,
            blend_size: size,
            first: file.first,
            last: file.last,
            priority: file.priority,
            order: self.jobs.scanned.get(&file.name).map_or(u64::MAX, |s| s.1),
            needs: JobNeeds {
                saved_by: project.saved_by,
                denoiser: project.scene.denoising,
                opengl: matches!(
                    project.scene.engine.as_str(),
                    "BLENDER_EEVEE" | "BLENDER_EEVEE_NEXT" | "BLENDER_WORKBENCH"
                ),
            },
        };
        let (change, _recalls) = self.scheduler.upsert_job(desc, done);
        self.blob_server.serve_job(&file.name, project.serve.clone());
        if change == JobChange::Restarted {
            self.forget_old_files(&file.name);
        }
        let what = match change {
            JobChange::Added => "accepted",
            JobChange::Updated => "updated",
            JobChange::Restarted => "restarted: the .blend or a file it uses changed",
            JobChange::Unchanged => return,
        };
        let line = format!(
            "{what}: frames {}..{} of {} (version {}), {} already done; {}",
            file.first,
            file.last,
            file.blend.display(),
            blend.short(),
            done.iter().filter(|f| (file.first..=file.last).contains(*f)).count(),
            project.summary,
        );
        info!("job {}: {line}", file.name);
        self.joblog.append(&file.name, &line);
        for warning in &project.warnings {
            warn!("job {}: {warning}", file.name);
            self.joblog.append(&file.name, &format!("warning: {warning}"));
        }
    }

    /// Reports a job that cannot be used, once per distinct reason, and stops any earlier version of it.
    fn reject_job(&mut self, name: &str, reason: String) -> bool {
        let changed = self.jobs.jobs.contains_key(name);
        if changed {
            self.cancel_job(name, "its job file is no longer usable");
        }
        if self.jobs.errors.get(name) != Some(&reason) {
            warn!("job {name}: {reason}");
            self.joblog.append(name, &format!("rejected: {reason}"));
            self.jobs.errors.insert(name.to_string(), reason);
        }
        changed
    }

    fn cancel_job(&mut self, name: &str, why: &str) {
        self.jobs.jobs.remove(name);
        self.blob_server.serve_job(name, Vec::new());
        self.forget_old_files(name);
        let recalls = self.scheduler.remove_job(name);
        info!("job {name} cancelled ({why}); {} frames in flight recalled", recalls.len());
        self.joblog.append(name, &format!("cancelled: {why}"));
    }

    /// Keeps the host's memory bounded by its current jobs: grant times of a job that was removed or restarted, and
    /// the hashes and traces of files no job uses any more.
    fn forget_old_files(&mut self, name: &str) {
        self.grant_times.retain(|(job, _), _| job != name);
        // Checks of the old version's frames would grant copies of frames that no longer exist as they were.
        self.verifier.forget_job(name);
        self.tallies.forget_job(name);
        self.preparer.retain(&self.blob_server.served_paths());
    }

    /// Says once in each job's log that no volunteer can render it, and why; the job waits meanwhile.
    pub(super) fn report_unservable(&mut self) {
        let now: HashMap<String, String> = self.scheduler.unservable().into_iter().collect();
        for (job, reason) in &now {
            if self.jobs.waiting.get(job) != Some(reason) {
                warn!("job {job} waits: no volunteer can render it: {reason}");
                self.joblog.append(job, &format!("waiting: no volunteer can render it: {reason}"));
            }
        }
        self.jobs.waiting = now;
    }

    /// Reports each job's completion once.
    pub(super) fn report_finished(&mut self, name: &str) -> bool {
        match self.jobs.jobs.get_mut(name) {
            Some(t) if !t.finished_reported => {
                t.finished_reported = true;
                true
            }
            _ => false,
        }
    }
}

/// Frame numbers of the files in a job's render folder (`NNNN.EXT`).
fn frames_on_disk(dir: &Path) -> HashSet<u32> {
    let Ok(entries) = std::fs::read_dir(dir) else { return HashSet::new() };
    entries.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str()?.split_once('.')?.0.parse().ok()).collect()
}
