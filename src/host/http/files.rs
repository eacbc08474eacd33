//! The only way from a URL to a file: a job and a file name, each one plain path component, an image extension,
//! a job the snapshot knows, and a canonical path that stays inside RENDERDIR/JOB (a symlink out is refused).
//! Everything here that touches the disk runs on a blocking thread.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use axum::{
    body::{Body, Bytes},
    http::header,
    response::{IntoResponse, Response},
};
use tokio::io::AsyncReadExt as _;

use super::{error::DashboardError, Snapshot};
use crate::protocol::is_frame_extension;

/// Longest job or file name accepted (most file systems' limit on one component).
const MAX_NAME: usize = 255;
/// Frame files are sent in pieces of this size.
const CHUNK: usize = 64 * 1024;

/// A frame file that may be served.
#[derive(Debug, Clone)]
pub struct FrameFile {
    /// Canonical: no symlinks, inside the canonical RENDERDIR/JOB.
    pub path: PathBuf,
    /// Lowercased.
    pub ext: String,
    pub len: u64,
    pub modified: Option<SystemTime>,
}

/// Refuses a name that is not one plain path component: empty, too long, `.`-led (also `.` and `..`), or holding
/// a separator, a NUL or another control character.
pub fn check_name(what: &'static str, name: &str) -> Result<(), DashboardError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME {
        "it is too long"
    } else if name.starts_with('.') {
        "it starts with a dot"
    } else if name.contains(['/', '\\']) {
        "it holds a path separator"
    } else if name.chars().any(char::is_control) {
        "it holds a control character"
    } else {
        return Ok(());
    };
    Err(DashboardError::BadName { what, why })
}

/// The lowercased extension of a checked file name, when it is a frame's.
fn frame_extension(file: &str) -> Result<String, DashboardError> {
    let ext = Path::new(file).extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    if is_frame_extension(&ext) {
        Ok(ext)
    } else {
        Err(DashboardError::BadName { what: "file", why: "it is not an image file" })
    }
}

/// Refuses a job the snapshot does not list: only jobs of the farm have folders worth showing.
pub fn check_job(snapshot: &Snapshot, job: &str) -> Result<(), DashboardError> {
    check_name("job", job)?;
    if snapshot.status.jobs.iter().any(|j| j.name == job) {
        Ok(())
    } else {
        Err(DashboardError::NoSuchJob(job.to_string()))
    }
}

/// The canonical RENDERDIR/JOB, which must itself lie inside the canonical RENDERDIR. Blocking.
fn job_folder(renderdir: &Path, job: &str) -> Result<PathBuf, DashboardError> {
    let root = renderdir.canonicalize()?;
    let folder = root.join(job).canonicalize().map_err(|_| DashboardError::NoSuchFrame)?;
    if folder.parent() != Some(root.as_path()) || !folder.is_dir() {
        return Err(DashboardError::NoSuchFrame);
    }
    Ok(folder)
}

/// Finds RENDERDIR/JOB/FILE for a job already checked against the snapshot. Blocking.
pub fn resolve(renderdir: &Path, job: &str, file: &str) -> Result<FrameFile, DashboardError> {
    check_name("file", file)?;
    let ext = frame_extension(file)?;
    let folder = job_folder(renderdir, job)?;
    let path = folder.join(file).canonicalize().map_err(|_| DashboardError::NoSuchFrame)?;
    if path.parent() != Some(folder.as_path()) {
        tracing::debug!("dashboard: {job}/{file} leads outside its folder; refused");
        return Err(DashboardError::NoSuchFrame);
    }
    let meta = std::fs::metadata(&path).map_err(|_| DashboardError::NoSuchFrame)?;
    if !meta.is_file() {
        return Err(DashboardError::NoSuchFrame);
    }
    Ok(FrameFile { path, ext, len: meta.len(), modified: meta.modified().ok() })
}

/// The name of the file in RENDERDIR/JOB holding `frame` (its stem is the number, e.g. `0012.png`), for a job
/// already checked against the snapshot. With several (a PNG and an EXR), the first by name. Blocking.
pub fn find_frame(renderdir: &Path, job: &str, frame: u32) -> Result<String, DashboardError> {
    let folder = job_folder(renderdir, job)?;
    let mut found: Option<String> = None;
    for entry in std::fs::read_dir(&folder)? {
        let Ok(name) = entry?.file_name().into_string() else { continue };
        let path = Path::new(&name);
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let is_frame = check_name("file", &name).is_ok()
            && frame_extension(&name).is_ok()
            && stem.bytes().all(|b| b.is_ascii_digit())
            && stem.parse::<u32>().ok() == Some(frame);
        if is_frame && found.as_ref().is_none_or(|f| name < *f) {
            found = Some(name);
        }
    }
    found.ok_or(DashboardError::NoSuchFrame)
}

/// Runs a blocking file-system check off the async runtime.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, DashboardError> + Send + 'static,
) -> Result<T, DashboardError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| DashboardError::Io(std::io::Error::other(e)))?
}

/// The MIME type of a frame file, by its (lowercased) extension.
pub fn content_type(ext: &str) -> &'static str {
    match ext {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "exr" => "image/x-exr",
        "hdr" => "image/vnd.radiance",
        _ => "application/octet-stream",
    }
}

/// Whether browsers show this kind of file in an `<img>` as it is.
pub fn browser_shows(ext: &str) -> bool {
    matches!(ext, "png" | "jpg" | "jpeg" | "webp" | "bmp")
}

/// Streams a resolved frame file, read in pieces on tokio's blocking pool (as tokio::fs does).
pub async fn send_file(frame: &FrameFile) -> Result<Response, DashboardError> {
    let file = tokio::fs::File::open(&frame.path).await.map_err(|_| DashboardError::NoSuchFrame)?;
    let chunks = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let headers = [
        (header::CONTENT_TYPE, content_type(&frame.ext).to_string()),
        (header::CONTENT_LENGTH, frame.len.to_string()),
        (header::CACHE_CONTROL, "no-cache".to_string()),
    ];
    Ok((headers, Body::from_stream(chunks)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_plain_component() {
        for good in ["0001.png", "spring anim", "shot_010-v2", "ünïcode.exr"] {
            assert!(check_name("file", good).is_ok(), "{good:?}");
        }
        let long = "a".repeat(MAX_NAME + 1);
        for bad in ["", ".", "..", ".hidden.png", "../x.png", "a/b.png", "a\\b.png", "a\0.png", "a\n.png", &long] {
            assert!(check_name("file", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_image_extensions() {
        assert_eq!(frame_extension("0001.PNG").ok().as_deref(), Some("png"));
        assert!(frame_extension("0001.exr").is_ok());
        for bad in ["notes.txt", "0001", "0001.png.sh", "job.blend"] {
            assert!(frame_extension(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn finds_a_frame_by_number_and_stays_inside() {
        let root = tempfile::tempdir().unwrap();
        let renders = root.path().join("renders");
        std::fs::create_dir_all(renders.join("shot")).unwrap();
        for name in ["0012.png", "0012.exr", "0120.png", "notes.txt", ".0013.png"] {
            std::fs::write(renders.join("shot").join(name), b"x").unwrap();
        }
        std::fs::write(root.path().join("outside.png"), b"secret").unwrap();
        std::os::unix::fs::symlink(root.path().join("outside.png"), renders.join("shot/0002.png")).unwrap();
        std::os::unix::fs::symlink(root.path(), renders.join("up")).unwrap();

        assert_eq!(find_frame(&renders, "shot", 12).unwrap(), "0012.exr");
        assert_eq!(find_frame(&renders, "shot", 120).unwrap(), "0120.png");
        assert!(matches!(find_frame(&renders, "shot", 13), Err(DashboardError::NoSuchFrame)));
        assert_eq!(resolve(&renders, "shot", "0012.png").unwrap().len, 1);
        assert!(matches!(resolve(&renders, "shot", "0002.png"), Err(DashboardError::NoSuchFrame)));
        assert!(matches!(resolve(&renders, "up", "outside.png"), Err(DashboardError::NoSuchFrame)));
        assert!(matches!(resolve(&renders, "shot", "notes.txt"), Err(DashboardError::BadName { .. })));
    }
}
