//! The owner's side of self-update: it knows its own binary (path and sha256), builds and signs the manifest of
//! the builds it serves (its own, and any in `--release-dir` named by target triple), and notices when its own
//! program file is replaced, so it can relaunch on the new build.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;

use super::manifest::TARGET;
use crate::{
    protocol::{BlobHash, PlatformBinary, UpdateManifest, PROTOCOL_VERSION},
    store::blobs::hash_file,
};

/// The running program's file.
#[derive(Debug, Clone)]
pub struct OwnBinary {
    pub path: PathBuf,
    pub hash: BlobHash,
    pub size: u64,
}

impl OwnBinary {
    /// Finds and hashes the running program's file.
    pub async fn locate() -> anyhow::Result<Self> {
        let path = std::env::current_exe().context("cannot find this program's file")?;
        // A program replaced while running shows as "NAME (deleted)"; the file to watch is NAME.
        let path = match path.to_str().and_then(|p| p.strip_suffix(" (deleted)")) {
            Some(live) => PathBuf::from(live),
            None => path,
        };
        let (hash, size) = hash_file(&path).await.with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self { path, hash, size })
    }
}

/// The builds an owner serves: (target, hash, size, file).
pub async fn builds(own: &OwnBinary, release_dir: Option<&Path>) -> anyhow::Result<Vec<(PlatformBinary, PathBuf)>> {
    let mut out = Vec::new();
    if let Some(dir) = release_dir {
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot read the release folder {}", dir.display()))?;
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if !path.is_file() || name.starts_with('.') {
                continue;
            }
            let target = name.strip_suffix(".exe").unwrap_or(name).to_string();
            let (hash, size) = hash_file(&path).await?;
            out.push((PlatformBinary { target, hash, size }, path));
        }
    }
    // The release folder's build for our own platform wins; otherwise we serve ourselves.
    if !out.iter().any(|(b, _)| b.target == TARGET) {
        out.push((PlatformBinary { target: TARGET.into(), hash: own.hash, size: own.size }, own.path.clone()));
    }
    out.sort_by(|a, b| a.0.target.cmp(&b.0.target));
    Ok(out)
}

pub fn manifest(own: &OwnBinary, builds: &[(PlatformBinary, PathBuf)]) -> UpdateManifest {
    let issued_at = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    UpdateManifest {
        protocol_version: PROTOCOL_VERSION,
        version: env!("CARGO_PKG_VERSION").into(),
        build: own.hash,
        issued_at,
        binaries: builds.iter().map(|(b, _)| b.clone()).collect(),
    }
}

/// Notices when a file is replaced or rewritten, once it has stopped changing (a copy in progress is not a build).
pub struct FileWatch {
    path: PathBuf,
    seen: Option<Stamp>,
    pending: Option<Stamp>,
}

#[derive(Debug, Clone, PartialEq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp { len: m.len(), modified: m.modified().ok(), inode: m.ino() })
}

impl FileWatch {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), seen: stamp(path), pending: None }
    }

    /// Call periodically; true once after the file changed and then stayed the same for one more call.
    pub fn poll(&mut self) -> bool {
        let now = stamp(&self.path);
        if now == self.seen {
            self.pending = None;
            return false;
        }
        if now.is_some() && now == self.pending {
            self.seen = now;
            self.pending = None;
            return true;
        }
        self.pending = now;
        false
    }
}

/// Watches the owner's program file; when a new build lands there and passes its self-check, asks the host to
/// stop (`stop`) and hands the file to relaunch on (`relaunch`).
pub async fn watch_own_binary(
    own: OwnBinary,
    relaunch: tokio::sync::oneshot::Sender<PathBuf>,
    stop: tokio::sync::oneshot::Sender<()>,
) {
    let mut watch = FileWatch::new(&own.path);
    let mut refused = None;
    let mut every = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        every.tick().await;
        if !watch.poll() {
            continue;
        }
        let Ok((hash, _)) = hash_file(&own.path).await else { continue };
        if hash == own.hash || refused == Some(hash) {
            continue;
        }
        match super::self_check(&own.path).await {
            Ok(()) => {
                tracing::info!("{} holds a new build ({}); relaunching on it", own.path.display(), hash.short());
                let _ = relaunch.send(own.path.clone());
                let _ = stop.send(());
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "{} changed but the new build failed its self-check ({e}); carrying on",
                    own.path.display()
                );
                refused = Some(hash);
            }
        }
    }
}
