//! A stand-in renderer for scheduler, network and scale tests. It never proves that rendering works: the
//! end-to-end tests use real Blender for that.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::Duration,
};

use super::blender::{RenderError, RenderRequest, RenderedFrame, Renderer};

/// Writes a small deterministic file per frame and returns `delay` after it was called (its file work within that
/// time); frames in `fail` fail after `delay`.
#[derive(Debug, Default)]
pub struct FakeRenderer {
    pub delay: Duration,
    pub fail: HashSet<u32>,
    /// Every (blend content hash, frame) this renderer was asked for, in order.
    pub rendered: Mutex<Vec<(String, u32)>>,
    active: AtomicUsize,
    peak: AtomicUsize,
    /// Content hashes of the .blend files seen, by path and what identifies the file's version there (inode, size,
    /// modification time): a scale test's hundreds of fakes do not read and hash the .blend for every frame.
    hashes: Mutex<HashMap<PathBuf, (FileStamp, String)>>,
}

type FileStamp = (u64, u64, Option<std::time::SystemTime>);

impl FakeRenderer {
    pub fn new(delay: Duration) -> Self {
        Self { delay, ..Self::default() }
    }

    /// The bytes the fake writes for `frame` of the .blend whose content hash is `blend_name` (hex), so tests can
    /// check what arrived.
    /// It is a real 8×8 PNG (the host decodes every frame before accepting it), its pixels drawn from the sha256 of
    /// `fake frame N of BLEND`, so each frame of each .blend is different.
    pub fn content(blend_name: &str, frame: u32) -> Vec<u8> {
        use sha2::Digest as _;
        let mut seed = sha2::Sha256::digest(format!("fake frame {frame} of {blend_name}\n")).to_vec();
        let mut pixels = Vec::with_capacity(8 * 8 * 3);
        while pixels.len() < 8 * 8 * 3 {
            pixels.extend_from_slice(&seed);
            seed = sha2::Sha256::digest(&seed).to_vec();
        }
        pixels.truncate(8 * 8 * 3);
        let mut png = Vec::new();
        let encoder = image::codecs::png::PngEncoder::new(&mut png);
        // Encoding 192 bytes into memory cannot fail; an empty file would be refused by the host anyway.
        let _ = image::ImageEncoder::write_image(encoder, &pixels, 8, 8, image::ExtendedColorType::Rgb8);
        png
    }

    /// The content hash (hex) of the .blend at `path`, read and hashed once per version of the file.
    async fn blend_hash(&self, path: &Path) -> Result<String, RenderError> {
        use std::os::unix::fs::MetadataExt as _;
        let cannot = |e: std::io::Error| RenderError::new(format!("cannot read {}: {e}", path.display()));
        let meta = tokio::fs::metadata(path).await.map_err(cannot)?;
        let stamp = (meta.ino(), meta.len(), meta.modified().ok());
        let known =
            self.hashes.lock().ok().and_then(|h| h.get(path).filter(|(s, _)| *s == stamp).map(|(_, n)| n.clone()));
        if let Some(name) = known {
            return Ok(name);
        }
        let name = crate::protocol::BlobHash::of_bytes(&tokio::fs::read(path).await.map_err(cannot)?).to_hex();
        if let Ok(mut hashes) = self.hashes.lock() {
            hashes.insert(path.to_path_buf(), (stamp, name.clone()));
        }
        Ok(name)
    }

    /// The most frames this renderer was ever rendering at once.
    pub fn peak_concurrency(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Frames being rendered right now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn frames(&self) -> Vec<(String, u32)> {
        self.rendered.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Renderer for FakeRenderer {
    async fn render(&self, request: &RenderRequest) -> Result<RenderedFrame, RenderError> {
        // A render takes `delay` in all, its file work included, as a Blender frame's time includes writing its image.
        let done_at = tokio::time::Instant::now() + self.delay;
        // Named by the .blend's content hash, as the file is laid out under its owner's name on every version.
        let name = self.blend_hash(&request.blend).await?;
        if let Ok(mut v) = self.rendered.lock() {
            v.push((name.clone(), request.frame));
        }
        let now = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        // Counted down even when the render is cancelled (the future dropped), as Blender would be killed.
        struct Done<'a>(&'a AtomicUsize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _done = Done(&self.active);
        if self.fail.contains(&request.frame) {
            tokio::time::sleep_until(done_at).await;
            return Err(RenderError::new(format!("fake failure of frame {}", request.frame)));
        }
        let path = request.out_dir.join(format!("frame_{:04}.png", request.frame));
        tokio::fs::write(&path, Self::content(&name, request.frame))
            .await
            .map_err(|e| RenderError::new(format!("cannot write {}: {e}", path.display())))?;
        tokio::time::sleep_until(done_at).await;
        Ok(RenderedFrame { path, ext: "png".into(), outputs: Vec::new() })
    }
}
