//! Which folder holds which version of a job's files, and which folders are in use.
//!
//! A job's versions usually differ in a texture or two. A layout is therefore kept per *scene*: the .blend, its
//! libraries and every other file that is not an image, under `CACHE/projects/<scene key>/`. A new version of the
//! same scene updates that folder's images in place, so the path of the main .blend stays the same and the idle
//! Blender already open on it renders the new version (the driver reloads images whose files changed) instead of a
//! new Blender loading the scene again. The version a folder holds is written in its `version` file, last: a folder
//! without one is incomplete and is built again.
//!
//! A folder is updated in place only while no frame uses it (from the moment its layout is handed out until the
//! render ends); otherwise the new version gets a folder of its own, `CACHE/projects/<version>/`, so a frame never
//! sees files change under it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use tracing::debug;

use super::project::{build_fresh, layout_of, link_or_copy, prune, read_manifest, under};
use crate::{
    protocol::{to_cbor, BlobHash, FileKind, JobManifest, ProjectFile},
    store::blobs::BlobStore,
};

/// The file in a layout folder that names the version it holds.
const VERSION_FILE: &str = "version";

/// A job's files laid out for Blender, held in use until dropped.
#[derive(Debug)]
pub struct Layout {
    /// The main .blend, at its owner's path under the layout's root.
    pub blend: PathBuf,
    /// Files Blender may find missing: the ones missing on the owner's machine too.
    pub allowed_missing: Vec<String>,
    pub(super) _in_use: Option<InUse>,
}

/// Marks a layout folder in use; dropped when the frame that uses it is rendered.
#[derive(Debug)]
pub struct InUse {
    users: Arc<Mutex<HashMap<PathBuf, usize>>>,
    dir: PathBuf,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut users = lock(&self.users);
        if let Some(n) = users.get_mut(&self.dir) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                users.remove(&self.dir);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The layouts of one volunteer's cache.
#[derive(Debug)]
pub struct Layouts {
    projects: PathBuf,
    users: Arc<Mutex<HashMap<PathBuf, usize>>>,
    /// Where each version seen was laid out, with its manifest, so the next frame of a job does not read and decode
    /// its manifest again. Checked against the folder's version file before use.
    known: Mutex<HashMap<BlobHash, (PathBuf, Arc<JobManifest>)>>,
}

/// Files Blender reads as image data-blocks, which the driver reloads when they change.
fn is_image(kind: FileKind) -> bool {
    matches!(kind, FileKind::Image | FileKind::Udim | FileKind::Sequence)
}

/// What must be equal for two versions to share a folder: every file but the images, by path and content.
fn scene_key(manifest: &JobManifest) -> BlobHash {
    let fixed: Vec<&ProjectFile> = manifest.all_files().filter(|f| !is_image(f.kind)).collect();
    BlobHash::of_bytes(&to_cbor(&fixed).unwrap_or_default())
}

fn version_of(dir: &Path) -> Option<BlobHash> {
    BlobHash::from_hex(std::fs::read_to_string(dir.join(VERSION_FILE)).ok()?.trim())
}

pub(super) fn write_version(dir: &Path, version: &BlobHash) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{VERSION_FILE}.tmp"));
    std::fs::write(&tmp, version.to_hex())
        .and_then(|_| std::fs::rename(&tmp, dir.join(VERSION_FILE)))
        .with_context(|| format!("cannot write {}", dir.join(VERSION_FILE).display()))
}

impl Layouts {
    pub fn new(cache: &Path) -> Self {
        Self { projects: cache.join("projects"), users: Arc::default(), known: Mutex::default() }
    }

    fn take(&self, dir: &Path, manifest: &JobManifest) -> Layout {
        *lock(&self.users).entry(dir.to_path_buf()).or_default() += 1;
        let in_use = Some(InUse { users: self.users.clone(), dir: dir.to_path_buf() });
        Layout { _in_use: in_use, ..layout_of(dir, manifest) }
    }

    /// The layout of `version` if some folder holds it, taken into use. Cheap: no lock but the users map.
    pub fn existing(&self, version: &BlobHash, blobs: &BlobStore) -> Option<Layout> {
        let known = lock(&self.known).get(version).cloned();
        if let Some((dir, manifest)) = known {
            if version_of(&dir) == Some(*version) {
                return Some(self.take(&dir, &manifest));
            }
        }
        if !blobs.contains(version) {
            return None;
        }
        let manifest = Arc::new(read_manifest(&blobs.path(version)).ok()?);
        let candidates = [self.projects.join(scene_key(&manifest).to_hex()), self.projects.join(version.to_hex())];
        let dir = candidates.into_iter().find(|dir| version_of(dir) == Some(*version))?;
        self.remember(version, &dir, manifest.clone());
        Some(self.take(&dir, &manifest))
    }

    /// Remembers where `version` is laid out; versions whose folder holds another one by now are forgotten.
    fn remember(&self, version: &BlobHash, dir: &Path, manifest: Arc<JobManifest>) {
        let mut known = lock(&self.known);
        known.retain(|v, (d, _)| version_of(d) == Some(*v));
        known.insert(*version, (dir.to_path_buf(), manifest));
    }

    /// Lays `version` out (all its blobs are in `blobs`) and takes it into use. Blocking: run it on a blocking thread,
    /// one at a time per volunteer.
    pub fn lay_out(&self, version: &BlobHash, manifest: &JobManifest, blobs: &BlobStore) -> anyhow::Result<Layout> {
        if let Some(layout) = self.existing(version, blobs) {
            return Ok(layout);
        }
        let scene = self.projects.join(scene_key(manifest).to_hex());
        // Reserve the scene's folder if nobody uses it; otherwise this version gets a folder of its own.
        let reserved = {
            let mut users = lock(&self.users);
            let free = !users.contains_key(&scene);
            if free {
                users.insert(scene.clone(), 1);
            }
            free
        };
        let (dir, in_use) = if reserved {
            let in_use = InUse { users: self.users.clone(), dir: scene.clone() };
            let previous = version_of(&scene).and_then(|v| Some((v, read_manifest(&blobs.path(&v)).ok()?)));
            match previous {
                Some((old, old_manifest)) => {
                    debug!(
                        "updating the images of {} from version {} to {}",
                        scene.display(),
                        old.short(),
                        version.short()
                    );
                    update_images(&scene, &old_manifest, manifest, blobs, version)?;
                }
                None => build_fresh(&self.projects, &scene, manifest, blobs, version)?,
            }
            (scene, in_use)
        } else {
            let own = self.projects.join(version.to_hex());
            build_fresh(&self.projects, &own, manifest, blobs, version)?;
            *lock(&self.users).entry(own.clone()).or_default() += 1;
            let in_use = InUse { users: self.users.clone(), dir: own.clone() };
            (own, in_use)
        };
        let busy: Vec<PathBuf> = lock(&self.users).keys().cloned().collect();
        prune(&self.projects, &busy);
        self.remember(version, &dir, Arc::new(manifest.clone()));
        Ok(Layout { _in_use: Some(in_use), ..layout_of(&dir, manifest) })
    }
}

/// Brings a scene's folder from `old` to `new` (which differ only in images): the version file goes first, so a
/// crash midway leaves a folder that is built again; changed and new images are replaced by rename, images the new
/// version no longer lists are removed, and the version file is written last.
fn update_images(
    dir: &Path,
    old: &JobManifest,
    new: &JobManifest,
    blobs: &BlobStore,
    version: &BlobHash,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(dir.join(VERSION_FILE));
    let root = dir.join("root");
    let was: HashMap<&str, BlobHash> =
        old.all_files().filter(|f| is_image(f.kind)).map(|f| (f.path.as_str(), f.hash)).collect();
    for file in new.all_files().filter(|f| is_image(f.kind)) {
        if was.get(file.path.as_str()) == Some(&file.hash) {
            continue;
        }
        let target = under(&root, &file.path).context("a path in the job manifest is unusable")?;
        let parent = target.parent().unwrap_or(&root);
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        let tmp = parent.join(format!(".{}.blenderdist-new", file.hash.short()));
        let _ = std::fs::remove_file(&tmp);
        link_or_copy(&blobs.path(&file.hash), &tmp)?;
        std::fs::rename(&tmp, &target).with_context(|| format!("cannot replace {}", target.display()))?;
    }
    let now: std::collections::HashSet<&str> = new.all_files().map(|f| f.path.as_str()).collect();
    for path in was.keys().filter(|p| !now.contains(*p)) {
        if let Some(target) = under(&root, path) {
            let _ = std::fs::remove_file(target);
        }
    }
    write_version(dir, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores `bytes` as a blob and returns (hash, size).
    async fn put(blobs: &BlobStore, bytes: &[u8]) -> (BlobHash, u64) {
        let hash = BlobHash::of_bytes(bytes);
        blobs.receive(&hash, bytes.len() as u64, &mut futures::io::Cursor::new(bytes.to_vec())).await.unwrap();
        (hash, bytes.len() as u64)
    }

    /// A version of a project whose texture holds `texture`; returns its manifest and version (manifest hash).
    async fn version(blobs: &BlobStore, texture: &[u8]) -> (JobManifest, BlobHash) {
        let file =
            |path: &str, (hash, size): (BlobHash, u64), kind| ProjectFile { path: path.into(), hash, size, kind };
        let manifest = JobManifest {
            blend: file("/p/shot.blend", put(blobs, b"BLENDER-v304 not parsed").await, FileKind::Blend),
            files: vec![file("/p/tex/wood.png", put(blobs, texture).await, FileKind::Image)],
            missing: vec![],
        };
        let (version, _) = put(blobs, &to_cbor(&manifest).unwrap()).await;
        (manifest, version)
    }

    #[tokio::test]
    async fn images_are_replaced_in_place_only_while_nobody_renders() {
        let cache = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(cache.path().join("blobs")).unwrap();
        let layouts = Layouts::new(cache.path());
        let texture = |layout: &Layout| std::fs::read(layout.blend.with_file_name("tex").join("wood.png")).unwrap();

        let (m1, v1) = version(&blobs, b"red").await;
        let first = layouts.lay_out(&v1, &m1, &blobs).unwrap();
        assert_eq!(texture(&first), b"red");
        // A frame of v1 still renders: v2 gets a folder of its own.
        let (m2, v2) = version(&blobs, b"green").await;
        let second = layouts.lay_out(&v2, &m2, &blobs).unwrap();
        assert_ne!(second.blend, first.blend);
        assert_eq!((texture(&first), texture(&second)), (b"red".to_vec(), b"green".to_vec()));
        drop((first, second));
        // Nobody renders now: v3 replaces the image in the scene's folder, and v1 is gone from it.
        let (m3, v3) = version(&blobs, b"blue").await;
        let third = layouts.lay_out(&v3, &m3, &blobs).unwrap();
        assert_eq!(texture(&third), b"blue");
        assert_eq!(third.blend, layouts.existing(&v3, &blobs).unwrap().blend);
        assert!(layouts.existing(&v1, &blobs).is_none());
        assert_eq!(version_of(third.blend.ancestors().nth(3).unwrap()), Some(v3));
    }
}
