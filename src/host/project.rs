//! A job's project: its .blend and every file the .blend needs, hashed and listed in a [`JobManifest`] whose own
//! hash is the job's version. Preparing one runs in its own task, never on the host's event loop: it may start the
//! owner's Blender (`super::trace`) and hash gigabytes.
//!
//! Work is remembered between preparations, so the host can prepare every job on every rescan: a file is hashed
//! again only when its size or modification time changed, and Blender traces the .blend again only when the .blend,
//! one of its libraries, a folder of sequence or cache files, or the presence of a missing file changed.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Component, Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use crate::{
    blendfile::{header::read_version, BlendVersion},
    protocol::{to_cbor, BlobHash, FileKind, JobManifest, ProjectFile, MAX_JOB_MANIFEST},
    store::blobs::hash_file,
};

use super::trace::{self, SceneNeeds, Trace};

/// A job's project, ready to serve.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Hash and size of the manifest blob: the job's version.
    pub manifest: BlobHash,
    pub manifest_size: u64,
    /// Every blob volunteers may fetch for this job: the manifest, the .blend and its files.
    pub serve: Vec<(BlobHash, PathBuf)>,
    /// For the job log: `carries 3 files, 1.2 MiB: 2 images, 1 library`.
    pub summary: String,
    /// Warnings for the job log: missing files, files that cannot be read, a tracer that could not run.
    pub warnings: Vec<String>,
    /// The Blender version that saved the .blend, from its header.
    pub saved_by: Option<BlendVersion>,
    pub scene: SceneNeeds,
}

/// Why a job's project cannot be prepared at all (its .blend is unusable); anything less is a warning.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("cannot read the .blend {}: {source}", path.display())]
    Blend { path: PathBuf, source: crate::store::blobs::BlobError },
    #[error("the path {} is not valid UTF-8; rename it", .0.display())]
    NotUtf8(PathBuf),
    #[error("the job's file list is {0} bytes, over the limit")]
    TooLarge(usize),
    #[error("cannot write the job's file list to {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// Size and modification time: what says a file may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: SystemTime,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp { size: meta.len(), mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH) })
}

struct CachedTrace {
    blend: BlobHash,
    trace: Arc<Trace>,
    /// What the trace depends on besides the .blend, with how each looked then (None: absent).
    inputs: Vec<(PathBuf, Option<Stamp>)>,
}

/// Prepares projects, remembering hashes and traces. Shared by the host's preparation tasks.
pub struct Preparer {
    blender: Option<PathBuf>,
    /// `deps.py`, written at start.
    script: PathBuf,
    /// Private folder for tracer output and manifests.
    dir: PathBuf,
    hashes: Mutex<HashMap<PathBuf, (Stamp, BlobHash)>>,
    traces: Mutex<HashMap<PathBuf, CachedTrace>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Preparer {
    /// `blender`: the owner's Blender, or None to send every .blend alone. `dir`: a private folder of the host's.
    pub fn new(blender: Option<PathBuf>, dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("manifests"))?;
        let script = dir.join("blenderdist_deps.py");
        std::fs::write(&script, crate::blender_scripts::DEPS_PY)?;
        Ok(Self { blender, script, dir: dir.to_path_buf(), hashes: Mutex::default(), traces: Mutex::default() })
    }

    /// Forgets the hashes and traces of files not in `keep` (the files the host's current jobs use), so the host's
    /// memory follows its jobs rather than every file it ever hashed. A job being prepared meanwhile only hashes
    /// again what it loses here.
    pub fn retain(&self, keep: &std::collections::HashSet<PathBuf>) {
        lock(&self.hashes).retain(|path, _| keep.contains(path));
        lock(&self.traces).retain(|blend, _| keep.contains(blend));
    }

    /// Hashes `path` unless it is unchanged since it was last hashed.
    async fn hash(&self, path: &Path) -> Result<(BlobHash, u64), crate::store::blobs::BlobError> {
        // A FIFO or device named like a texture would block the read forever: only regular files are read.
        if let Ok(meta) = std::fs::metadata(path) {
            if !meta.is_file() {
                let source = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
                return Err(crate::store::blobs::BlobError::Io { path: path.to_path_buf(), source });
            }
        }
        let before = stamp(path);
        if let Some(now) = before {
            if let Some((seen, hash)) = lock(&self.hashes).get(path) {
                if *seen == now {
                    return Ok((*hash, now.size));
                }
            }
        }
        let (hash, size) = hash_file(path).await?;
        // Recorded under the stamp from before hashing: a write during hashing changes the stamp, so the next
        // preparation hashes again rather than trusting a hash of half-old bytes.
        if let Some(before) = before.filter(|s| s.size == size) {
            lock(&self.hashes).insert(path.to_path_buf(), (before, hash));
        }
        Ok((hash, size))
    }

    /// The trace of `blend`, from the cache when nothing it depends on changed.
    async fn trace(&self, blend: &Path, blend_hash: BlobHash, warnings: &mut Vec<String>) -> Arc<Trace> {
        let Some(program) = &self.blender else {
            warnings.push(
                "no Blender on the owner's machine to list the files the .blend uses: sending the .blend \
                 alone (pass host --blender PATH)"
                    .into(),
            );
            return Arc::default();
        };
        if let Some(cached) = lock(&self.traces).get(blend) {
            if cached.blend == blend_hash && cached.inputs.iter().all(|(p, s)| stamp(p) == *s) {
                return cached.trace.clone();
            }
        }
        match trace::trace(program, &self.script, blend, &self.dir).await {
            Ok(found) => {
                let found = Arc::new(found);
                let inputs = trace_inputs(&found).into_iter().map(|p| (p.clone(), stamp(&p))).collect();
                let cached = CachedTrace { blend: blend_hash, trace: found.clone(), inputs };
                lock(&self.traces).insert(blend.to_path_buf(), cached);
                found
            }
            Err(e) => {
                warnings.push(format!("{e}; sending the .blend alone"));
                Arc::default()
            }
        }
    }

    /// Prepares the project of the .blend at `blend`.
    pub async fn prepare(&self, blend: &Path) -> Result<Prepared, PrepareError> {
        let blend = normalize(blend);
        let blend_str = utf8(&blend)?;
        let (blend_hash, blend_size) =
            self.hash(&blend).await.map_err(|source| PrepareError::Blend { path: blend.clone(), source })?;
        let mut warnings = Vec::new();
        let header_path = blend.clone();
        let saved_by = match tokio::task::spawn_blocking(move || read_version(&header_path)).await {
            Ok(Ok(version)) => Some(version),
            Ok(Err(e)) => {
                warnings.push(e.to_string());
                None
            }
            Err(_) => None,
        };
        let traced =
            if saved_by.is_some() { self.trace(&blend, blend_hash, &mut warnings).await } else { Arc::default() };
        let mut files = BTreeMap::new();
        let mut missing: Vec<String> = Vec::new();
        for m in &traced.missing {
            let by = if m.used_by.is_empty() { String::new() } else { format!(" (used by {})", m.used_by) };
            warnings.push(format!(
                "{} is missing on the owner's machine too{by}: the farm renders without it, as Blender here would",
                m.path
            ));
            missing.push(m.path.clone());
        }
        for file in &traced.files {
            let path = PathBuf::from(&file.path);
            if path == blend || files.contains_key(&file.path) {
                continue;
            }
            match self.hash(&path).await {
                Ok((hash, size)) => {
                    let kind = file.kind;
                    files.insert(file.path.clone(), ProjectFile { path: file.path.clone(), hash, size, kind });
                }
                Err(e) => {
                    warnings
                        .push(format!("cannot read {} on the owner's machine ({e}): rendering without it", file.path));
                    missing.push(file.path.clone());
                }
            }
        }
        missing.sort();
        missing.dedup();
        let manifest = JobManifest {
            blend: ProjectFile { path: blend_str, hash: blend_hash, size: blend_size, kind: FileKind::Blend },
            files: files.into_values().collect(),
            missing,
        };
        let summary = summary(&manifest, traced.cache_folders.len());
        let (hash, size, path) = self.store_manifest(&manifest).await?;
        let mut serve = vec![(hash, path)];
        serve.extend(manifest.all_files().map(|f| (f.hash, PathBuf::from(&f.path))));
        Ok(Prepared {
            manifest: hash,
            manifest_size: size,
            serve,
            summary,
            warnings,
            saved_by,
            scene: traced.scenes.clone(),
        })
    }

    /// Writes the manifest where the blob server can serve it, named by its hash.
    async fn store_manifest(&self, manifest: &JobManifest) -> Result<(BlobHash, u64, PathBuf), PrepareError> {
        let bytes = to_cbor(manifest).map_err(|_| PrepareError::TooLarge(usize::MAX))?;
        if bytes.len() as u64 > MAX_JOB_MANIFEST {
            return Err(PrepareError::TooLarge(bytes.len()));
        }
        let hash = BlobHash::of_bytes(&bytes);
        let path = self.dir.join("manifests").join(hash.to_hex());
        if !path.is_file() {
            let tmp = self.dir.join("manifests").join(format!(".{}.tmp", hash.to_hex()));
            let write = tokio::fs::write(&tmp, &bytes).await.and(tokio::fs::rename(&tmp, &path).await);
            write.map_err(|source| PrepareError::Write { path: path.clone(), source })?;
        }
        Ok((hash, bytes.len() as u64, path))
    }
}

/// Files and folders whose change means the .blend may need other files now: libraries (they reference files of
/// their own), folders of numbered files (a sequence or cache may gain files), and missing files (one may appear).
fn trace_inputs(trace: &Trace) -> Vec<PathBuf> {
    let mut inputs: Vec<PathBuf> = Vec::new();
    for file in &trace.files {
        let path = PathBuf::from(&file.path);
        match file.kind {
            FileKind::Library => inputs.push(path),
            FileKind::Sequence | FileKind::Udim | FileKind::Cache | FileKind::Volume => {
                inputs.extend(path.parent().map(Path::to_path_buf));
            }
            _ => {}
        }
    }
    inputs.extend(trace.missing.iter().map(|m| PathBuf::from(&m.path)));
    inputs.extend(trace.cache_folders.iter().map(PathBuf::from));
    inputs.sort();
    inputs.dedup();
    inputs
}

/// An absolute path without `.` or `..` components, as Blender itself resolves relative paths.
fn normalize(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn utf8(path: &Path) -> Result<String, PrepareError> {
    path.to_str().map(str::to_owned).ok_or_else(|| PrepareError::NotUtf8(path.to_path_buf()))
}

/// `carries 37 files, 1.2 GiB: 31 images, 2 libraries, 1 cache folder`, or that the .blend travels alone.
fn summary(manifest: &JobManifest, cache_folders: usize) -> String {
    if manifest.files.is_empty() {
        return format!("carries the .blend alone ({})", human_size(manifest.blend.size));
    }
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for file in &manifest.files {
        *kinds.entry(kind_name(file.kind)).or_default() += 1;
    }
    let total: u64 = manifest.all_files().map(|f| f.size).sum();
    let mut parts: Vec<String> = kinds.into_iter().map(|(kind, n)| format!("{n} {}", plural(kind, n))).collect();
    if cache_folders > 0 {
        parts.push(format!("{cache_folders} {}", plural("cache folder", cache_folders)));
    }
    let n = manifest.files.len();
    format!("carries {n} {} besides the .blend, {} in all: {}", plural("file", n), human_size(total), parts.join(", "))
}

fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Blend | FileKind::Library => "library",
        FileKind::Image => "image",
        FileKind::Udim => "UDIM tile",
        FileKind::Sequence => "sequence file",
        FileKind::Movie => "movie",
        FileKind::Cache => "cache file",
        FileKind::Sound => "sound",
        FileKind::Font => "font",
        FileKind::Ies => "IES file",
        FileKind::Volume => "volume",
        FileKind::Alembic => "Alembic/USD cache",
        FileKind::Script => "script",
        FileKind::Other => "other file",
    }
}

fn plural(word: &str, n: usize) -> String {
    match (n, word) {
        (1, _) => word.to_string(),
        (_, "library") => "libraries".to_string(),
        _ => format!("{word}s"),
    }
}

pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, kind: FileKind, size: u64) -> ProjectFile {
        ProjectFile { path: path.into(), hash: BlobHash::of_bytes(path.as_bytes()), size, kind }
    }

    #[test]
    fn summary_counts_kinds() {
        let manifest = JobManifest {
            blend: file("/p/a.blend", FileKind::Blend, 1 << 20),
            files: vec![
                file("/p/t1.png", FileKind::Image, 1 << 20),
                file("/p/t2.png", FileKind::Image, 1 << 20),
                file("/p/lib.blend", FileKind::Library, 1 << 20),
            ],
            missing: vec![],
        };
        assert_eq!(
            summary(&manifest, 1),
            "carries 3 files besides the .blend, 4.0 MiB in all: 2 images, 1 library, 1 cache folder"
        );
        let alone = JobManifest { files: vec![], ..manifest };
        assert_eq!(summary(&alone, 0), "carries the .blend alone (1.0 MiB)");
    }

    /// A FIFO named like a texture would block a read forever; it is refused at once instead.
    #[tokio::test]
    async fn a_fifo_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.png");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            return;
        }
        let preparer = Preparer::new(None, &dir.path().join("state")).unwrap();
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), preparer.hash(&fifo)).await;
        let err = read.expect("hashing a FIFO blocked").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn normalize_resolves_dots() {
        assert_eq!(normalize(Path::new("/a/b/../c/./d.blend")), PathBuf::from("/a/c/d.blend"));
    }
}
