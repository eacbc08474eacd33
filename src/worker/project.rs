//! A job's files on a volunteer. A grant names the job's manifest; the volunteer fetches it, fetches every blob it
//! lists that its cache lacks (so a changed texture is the only file that travels again), and lays the files out
//! under `CACHE/projects/<folder>/root/` (which folder: [`super::layouts`]) at the paths they have on the owner's machine: a file that is
//! `/home/artist/shot/tex/wood.png` there is `.../root/home/artist/shot/tex/wood.png` here. Relative paths inside the
//! .blend files (`//tex/wood.png`, `//../shared/x.png`) then resolve as they do for the owner; absolute paths inside
//! them are rewritten to point under `root/` ([`crate::blendfile::rewrite`]), into copies, never the cached blobs.
//!
//! Paths come from the network, so each is checked ([`JobManifest::validate`]) before it is joined under `root/`:
//! absolute, plain components only. Nothing is written outside the volunteer's cache, and files are hard links to
//! (or copies of) verified blobs, so a layout holds exactly the bytes the owner's files held.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use tracing::info;

use super::layouts::Layout;
use crate::{
    blendfile::rewrite::{absolute_paths, rewrite_paths},
    protocol::{from_cbor, project_path_components, BlobHash, JobManifest, MAX_JOB_MANIFEST},
    store::blobs::BlobStore,
};

/// Blobs fetched at once while laying out a project: enough to hide per-file round trips, few enough not to starve
/// the frames being uploaded meanwhile.
const PARALLEL_FETCHES: usize = 8;
/// Layouts kept in the cache; older ones are removed when a new one is made.
const KEEP_LAYOUTS: usize = 8;
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// Reads a manifest blob from the cache, refusing an oversized or malformed one.
pub(super) fn read_manifest(path: &Path) -> anyhow::Result<JobManifest> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read the job manifest {}", path.display()))?;
    let manifest: JobManifest =
        from_cbor(&bytes, MAX_JOB_MANIFEST as usize).context("the owner sent an unreadable job manifest")?;
    manifest.validate()?;
    Ok(manifest)
}

/// The layout in `dir` of `manifest`, not yet taken into use.
pub(super) fn layout_of(dir: &Path, manifest: &JobManifest) -> Layout {
    let root = dir.join("root");
    let blend = under(&root, &manifest.blend.path).unwrap_or_else(|| root.join("missing.blend"));
    let mut allowed_missing: Vec<String> = manifest.missing.clone();
    allowed_missing.extend(manifest.missing.iter().filter_map(|m| under(&root, m)).map(|p| p.display().to_string()));
    Layout { blend, allowed_missing, _in_use: None }
}

/// `root` joined with an owner's absolute path, if the path is usable.
pub(super) fn under(root: &Path, path: &str) -> Option<PathBuf> {
    let parts = project_path_components(path).ok()?;
    Some(parts.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

/// Fetches every blob of `manifest` that `blobs` lacks, through `fetch`.
pub async fn fetch_missing<F, Fut>(manifest: &JobManifest, blobs: &BlobStore, fetch: F) -> anyhow::Result<()>
where
    F: Fn(BlobHash, u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<PathBuf>>,
{
    let mut wanted: Vec<(BlobHash, u64, String)> = Vec::new();
    for file in manifest.all_files() {
        if !blobs.contains(&file.hash) && !wanted.iter().any(|(h, _, _)| *h == file.hash) {
            wanted.push((file.hash, file.size, file.path.clone()));
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let bytes: u64 = wanted.iter().map(|w| w.1).sum();
    info!("fetching {} of the job's files ({bytes} bytes)", wanted.len());
    futures::stream::iter(wanted)
        .map(|(hash, size, path)| {
            let fetched = fetch(hash, size);
            async move { fetched.await.with_context(|| format!("cannot fetch {path}")) }
        })
        .buffer_unordered(PARALLEL_FETCHES)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Builds `version`'s layout in a temp folder (version file included) and renames it to `dir`, replacing whatever
/// was there, so a layout folder with a version file is complete. Blocking.
pub(super) fn build_fresh(
    projects: &Path,
    dir: &Path,
    manifest: &JobManifest,
    blobs: &BlobStore,
    version: &BlobHash,
) -> anyhow::Result<()> {
    let tmp = projects.join(format!(".tmp-{}-{}", std::process::id(), NEXT_TMP.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&tmp);
    let built =
        build(&tmp, &dir.join("root"), manifest, blobs).and_then(|_| super::layouts::write_version(&tmp, version));
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(dir);
    // The tmp folder's root becomes the final one: rewritten paths point at the final location.
    std::fs::rename(&tmp, dir).with_context(|| format!("cannot create {}", dir.display())).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp);
    })
}

/// Builds the layout in `tmp`; absolute paths in .blend files are rewritten to point under `dest_root`, where the
/// layout's root will be once renamed into place.
fn build(tmp: &Path, dest_root: &Path, manifest: &JobManifest, blobs: &BlobStore) -> anyhow::Result<()> {
    let tmp_root = tmp.join("root");
    for file in manifest.all_files() {
        let target = under(&tmp_root, &file.path).context("a path in the job manifest is unusable")?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let source = blobs.path(&file.hash);
        // A .blend this reader cannot parse (not a .blend at all, a newer format) is laid out as it is: Blender
        // then says what is wrong with it, or lists the files it cannot find.
        let absolute = if file.kind.is_blend() { absolute_paths(&source).unwrap_or_default() } else { Vec::new() };
        if !absolute.is_empty() {
            let map = |p: &str| under(dest_root, p).map(|p| p.display().to_string());
            rewrite_paths(&source, &target, &map)
                .with_context(|| format!("cannot rewrite the paths in {}", file.path))?;
            continue;
        }
        link_or_copy(&source, &target)?;
    }
    Ok(())
}

pub(super) fn link_or_copy(source: &Path, target: &Path) -> anyhow::Result<()> {
    if std::fs::hard_link(source, target).is_ok() {
        return Ok(());
    }
    std::fs::copy(source, target)
        .map(|_| ())
        .with_context(|| format!("cannot copy {} to {}", source.display(), target.display()))
}

/// Removes all but the newest layouts, never one in `busy`.
pub(super) fn prune(projects: &Path, busy: &[PathBuf]) {
    let Ok(entries) = std::fs::read_dir(projects) else { return };
    let mut layouts: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    layouts.sort();
    let excess = layouts.len().saturating_sub(KEEP_LAYOUTS);
    for (_, path) in layouts.into_iter().take(excess) {
        if !busy.contains(&path) {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}
