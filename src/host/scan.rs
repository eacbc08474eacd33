//! Reading JOBDIR, off the host's event loop: every `*.job` file parsed, with whether it is suspended and when it
//! arrived. [`scan`] blocks (it lists the folder, reads each job file and checks its .blend), so the host runs it on
//! a blocking thread and applies the result when it comes back.

use std::{
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

use super::jobfile;

/// What JOBDIR held at one moment.
pub struct DirScan {
    pub jobs: Vec<ScannedJob>,
    /// The folder could not be listed: nothing is known, so nothing changes.
    pub error: Option<String>,
}

pub struct ScannedJob {
    /// The job's name, or the file name shown when it is not a usable name.
    pub name: Result<String, String>,
    pub file: Result<jobfile::JobFile, String>,
    /// `NAME.job.suspend` exists.
    pub suspended: bool,
    /// Jobs are served oldest job file first: the file's modification time in nanoseconds.
    pub order: u64,
}

/// Reads JOBDIR. Blocking.
pub fn scan(jobdir: &Path) -> DirScan {
    let paths = match jobfile::scan_job_dir(jobdir) {
        Ok(paths) => paths,
        Err(e) => return DirScan { jobs: Vec::new(), error: Some(format!("{}: {e}", jobdir.display())) },
    };
    let jobs = paths
        .into_iter()
        .map(|path| {
            let name = jobfile::job_name(&path)
                .ok_or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            let file = match &name {
                Ok(_) => jobfile::load_job_file(&path, jobdir).map_err(|e| e.to_string()),
                Err(_) => Err("bad name".to_string()),
            };
            let suspended = suspend_path(&path).exists();
            let order = arrival_order(&path);
            ScannedJob { name, file, suspended, order }
        })
        .collect();
    DirScan { jobs, error: None }
}

fn suspend_path(job_path: &Path) -> PathBuf {
    let mut s = job_path.as_os_str().to_owned();
    s.push(".suspend");
    PathBuf::from(s)
}

fn arrival_order(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(u64::MAX)
}
