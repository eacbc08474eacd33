//! Reconciles JOBDIR with the scheduler: new, changed, suspended and removed job files, and the ones that cannot
//! be used (reported once per distinct reason, in the host's log and in `JOBDIR/NAME.log`).

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

use tracing::{info, warn};

use super::{jobfile, project::Prepared, Host};
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
    /// Job names in JOBDIR at the last scan: a preparation that finishes for a job no longer listed is dropped.
    listed: HashSet<String>,
}

/// A finished preparation of a job's project, sent back to the event loop.
pub struct JobPrepared {
    path: PathBuf,
    file: jobfile::JobFile,
    result: Result<Prepared, super::project::PrepareError>,
}

struct TrackedJob {
    file: jobfile::JobFile,
    blend: BlobHash,
    suspended: bool,
    started_reported: bool,
    finished_reported: bool,
}

impl JobTable {
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
    /// Brings the scheduler in line with JOBDIR: job files that are gone or unusable are dealt with here; every usable
    /// one has its project prepared in the background ([`Host::on_prepared`] applies the result). Returns whether
    /// anything changed.
    pub(super) async fn rescan(&mut self) -> bool {
        let jobdir = self.config.jobdir.clone();
        let paths = match jobfile::scan_job_dir(&jobdir) {
            Ok(paths) => paths,
            Err(e) => {
                warn!("cannot list the job folder {}: {e}", jobdir.display());
                return false;
            }
        };
        let mut changed = false;
        let mut seen = HashSet::new();
        for path in paths {
            let Some(name) = jobfile::job_name(&path) else {
                let shown = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                seen.insert(shown.clone());
                if let std::collections::hash_map::Entry::Vacant(e) = self.jobs.errors.entry(shown) {
                    warn!(
                        "ignoring {}: a job name must not be empty, start with a dot or hold control characters",
                        e.key()
                    );
                    e.insert("bad name".into());
                }
                continue;
            };
            seen.insert(name.clone());
            match jobfile::load_job_file(&path, &jobdir) {
                Ok(file) => changed |= self.prepare_job(path, file),
                Err(e) => changed |= self.reject_job(&name, e.to_string()),
            }
        }
        let gone: Vec<String> = self.jobs.jobs.keys().filter(|n| !seen.contains(*n)).cloned().collect();
        for name in gone {
            self.cancel_job(&name, "its job file was removed");
            changed = true;
        }
        self.jobs.errors.retain(|name, _| seen.contains(name));
        self.jobs.listed = seen;
        changed
    }

    /// Prepares a job's project in the background, unless a preparation of it is running already. A job whose
    /// project is known only has its suspension brought up to date here.
    fn prepare_job(&mut self, path: PathBuf, file: jobfile::JobFile) -> bool {
        let name = file.name.clone();
        let changed = self.sync_suspension(&path, &name);
        if !self.jobs.preparing.insert(name.clone()) {
            return changed;
        }
        let (preparer, done) = (self.preparer.clone(), self.prepared_tx.clone());
        tokio::spawn(async move {
            let result = preparer.prepare(&file.blend).await;
            let _ = done.send(JobPrepared { path, file, result }).await;
        });
        changed
    }

    /// A preparation finished: the job starts, restarts on new files, or stays as it is.
    pub(super) fn on_prepared(&mut self, prepared: JobPrepared) -> bool {
        let JobPrepared { path, file, result } = prepared;
        self.jobs.preparing.remove(&file.name);
        if !self.jobs.listed.contains(&file.name) {
            return false;
        }
        match result {
            Ok(project) => self.apply_job(&path, file, project),
            Err(e) => self.reject_job(&file.name.clone(), e.to_string()),
        }
    }

    fn sync_suspension(&mut self, path: &Path, name: &str) -> bool {
        let suspended = suspend_path(path).exists();
        let Some(tracked) = self.jobs.jobs.get_mut(name) else { return false };
        if tracked.suspended == suspended {
            return false;
        }
        tracked.suspended = suspended;
        self.scheduler.set_suspended(name, suspended);
        info!("job {name} {}", if suspended { "suspended" } else { "resumed" });
        true
    }

    fn apply_job(&mut self, path: &Path, file: jobfile::JobFile, project: Prepared) -> bool {
        let name = file.name.clone();
        let blend = project.manifest;
        let suspended = suspend_path(path).exists();
        self.jobs.errors.remove(&name);
        let unchanged = self.jobs.jobs.get(&name).is_some_and(|t| t.file == file && t.blend == blend);
        let mut changed = false;
        if !unchanged {
            if let Err(e) = self.upsert_job(path, &file, &project) {
                return self.reject_job(&name, e);
            }
            self.jobs.jobs.insert(
                name.clone(),
                TrackedJob { file, blend, suspended: false, started_reported: false, finished_reported: false },
            );
            changed = true;
        }
        if let Some(tracked) = self.jobs.jobs.get_mut(&name) {
            if tracked.suspended != suspended || changed {
                tracked.suspended = suspended;
                self.scheduler.set_suspended(&name, suspended);
                if suspended {
                    info!("job {name} suspended");
                }
                changed = true;
            }
        }
        changed
    }

    fn upsert_job(&mut self, path: &Path, file: &jobfile::JobFile, project: &Prepared) -> Result<(), String> {
        let (blend, size) = (project.manifest, project.manifest_size);
        let record = JobRecord { blend, first: file.first, last: file.last };
        self.state.put_job(&file.name, &record).map_err(|e| e.to_string())?;
        let mut done = self.state.done_frames(&file.name).map_err(|e| e.to_string())?;
        // A frame the owner deleted from the render folder is rendered again.
        let present = frames_on_disk(&self.config.renderdir.join(&file.name));
        done.retain(|f| present.contains(f));
        let desc = JobDesc {
            name: file.name.clone(),
            blend,
            blend_size: size,
            first: file.first,
            last: file.last,
            priority: file.priority,
            order: arrival_order(path),
            needs: JobNeeds {
                saved_by: project.saved_by,
                denoiser: project.scene.denoising,
                opengl: matches!(
                    project.scene.engine.as_str(),
                    "BLENDER_EEVEE" | "BLENDER_EEVEE_NEXT" | "BLENDER_WORKBENCH"
                ),
            },
        };
        let (change, _recalls) = self.scheduler.upsert_job(desc, &done);
        self.blob_server.serve_job(&file.name, project.serve.clone());
        if change == JobChange::Restarted {
            self.forget_old_files(&file.name);
        }
        let what = match change {
            JobChange::Added => "accepted",
            JobChange::Updated => "updated",
            JobChange::Restarted => "restarted: the .blend or a file it uses changed",
            JobChange::Unchanged => return Ok(()),
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
        Ok(())
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

fn suspend_path(job_path: &Path) -> PathBuf {
    let mut s = job_path.as_os_str().to_owned();
    s.push(".suspend");
    PathBuf::from(s)
}

/// Jobs are served oldest job file first: the file's modification time in nanoseconds.
fn arrival_order(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(u64::MAX)
}
