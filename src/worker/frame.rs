//! One granted frame on a volunteer: fetch the .blend (once, into the cache), render it while renewing the lease,
//! then return the result: a notice, the blob pushed over a stream, and the owner's acknowledgement.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::AsyncWriteExt;
use libp2p::PeerId;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::blender::{RenderError, RenderRequest, RenderedFrame, Renderer};
use crate::{
    net::Client,
    protocol::{
        read_header, truncate_utf8, write_header, BlobHash, BlobReply, BlobRequest, FrameGrant, WorkRequest,
        WorkResponse, BLOB_PROTOCOL, MAX_ERROR_TEXT,
    },
    store::blobs::{hash_file, send_file, BlobStore},
};

/// Blob exchanges are tried this often: an owner busy accepting other streams drops new ones (libp2p-stream keeps
/// no backlog), and a dropped stream is worth another try, not a lost frame.
const BLOB_ATTEMPTS: u32 = 6;

/// Runs a blob exchange until it succeeds, fails for a reason other than the transport, or runs out of attempts.
async fn with_retries<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Exchange>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(Exchange::Transport(e)) if tries < BLOB_ATTEMPTS => {
                debug!("{what}: attempt {tries} failed ({e}); trying again");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(tries))).await;
            }
            Err(Exchange::Transport(e) | Exchange::Final(e)) => return Err(e),
        }
    }
}

/// How a blob exchange failed: transport failures are retried, the rest are answers.
enum Exchange {
    Transport(anyhow::Error),
    Final(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Exchange {
    fn from(e: E) -> Self {
        Exchange::Transport(e.into())
    }
}

/// What every render slot of a volunteer shares.
pub(super) struct Slot<R> {
    pub client: Client,
    pub blobs: Arc<BlobStore>,
    pub renderer: Arc<R>,
    pub work_dir: PathBuf,
    pub fetching: tokio::sync::Mutex<()>,
    pub next_dir: std::sync::atomic::AtomicU64,
}

impl<R: Renderer> Slot<R> {
    /// Renders one granted frame whose .blend was fetched (or failed to) into `out_dir`, a folder of its own.
    /// `Ok(None)`: recalled while rendering.
    pub async fn render_granted(
        &self,
        grant: &FrameGrant,
        blend: anyhow::Result<PathBuf>,
        recalled: &CancellationToken,
        out_dir: &Path,
    ) -> Result<Option<RenderedFrame>, RenderError> {
        match blend {
            Ok(blend) => self.render(grant, blend, recalled, out_dir).await,
            Err(e) => Err(RenderError::new(format!("could not fetch the .blend: {e:#}"))),
        }
    }

    /// Hands a render's outcome back to `host` (the frame itself, or the failure with Blender's words), then removes
    /// the frame's folder.
    pub async fn report(
        &self,
        host: PeerId,
        grant: &FrameGrant,
        outcome: Result<Option<RenderedFrame>, RenderError>,
        out_dir: &Path,
    ) {
        let FrameGrant { job, frame, .. } = grant;
        let result = match outcome {
            Ok(Some(rendered)) => self.deliver(host, grant, rendered).await,
            // The host recalled the frame while it rendered.
            Ok(None) => Ok(()),
            Err(e) => {
                warn!("frame {frame} of {job} failed: {e}");
                let mut error = e.to_string();
                truncate_utf8(&mut error, MAX_ERROR_TEXT);
                let request = WorkRequest::Failed { job: job.clone(), frame: *frame, blend: grant.blend, error };
                self.client.request(host, request).await.map(|_| ()).map_err(|e| e.to_string())
            }
        };
        if let Err(e) = result {
            warn!("could not return frame {frame} of {job} to {host}: {e}");
        }
        let _ = tokio::fs::remove_dir_all(out_dir).await;
    }

    /// A new, unique folder for one granted frame. Never job-named: a job name comes from the network and must not
    /// choose a path; numbered, so two grants of the same frame never share a folder.
    pub fn new_frame_dir(&self, grant: &FrameGrant) -> PathBuf {
        let n = self.next_dir.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.work_dir.join(format!("{n}-{}-{}", grant.blend.short(), grant.frame))
    }

    /// The .blend from the cache, fetched from `host` and verified first if it is not there yet.
    pub async fn fetch_blend(&self, host: PeerId, grant: &FrameGrant) -> anyhow::Result<PathBuf> {
        // One fetch at a time per volunteer: slots asking for the same .blend wait for the first to finish.
        let _fetching = self.fetching.lock().await;
        if self.blobs.contains(&grant.blend) {
            return Ok(self.blobs.path(&grant.blend));
        }
        info!("fetching .blend {} ({} bytes) from {host}", grant.blend.short(), grant.blend_size);
        with_retries("fetching the .blend", || async {
            let mut stream = self.client.streams().open_stream(host, BLOB_PROTOCOL).await?;
            write_header(&mut stream, &BlobRequest::Get { hash: grant.blend }).await?;
            match read_header(&mut stream).await? {
                BlobReply::Found { size } if size == grant.blend_size => {
                    Ok(self.blobs.receive(&grant.blend, size, &mut stream).await?)
                }
                BlobReply::Found { size } => Err(Exchange::Final(anyhow::anyhow!(
                    "the host offers {size} bytes for a {}-byte blob",
                    grant.blend_size
                ))),
                other => Err(Exchange::Final(anyhow::anyhow!("the host answered {other:?}"))),
            }
        })
        .await
    }

    /// Renders until done or until `recalled` fires. `Ok(None)`: the host recalled the frame, so rendering stopped
    /// (dropping the render future kills Blender).
    async fn render(
        &self,
        grant: &FrameGrant,
        blend: PathBuf,
        recalled: &CancellationToken,
        out_dir: &Path,
    ) -> Result<Option<RenderedFrame>, RenderError> {
        let out_dir = out_dir.to_path_buf();
        tokio::fs::create_dir_all(&out_dir)
            .await
            .map_err(|e| RenderError::new(format!("cannot create {}: {e}", out_dir.display())))?;
        let request = RenderRequest { blend, frame: grant.frame, out_dir };
        tokio::select! {
            result = self.renderer.render(&request) => result.map(Some),
            _ = recalled.cancelled() => Ok(None),
        }
    }

    /// Announces the frame, pushes it if the host wants it, and waits until the host has stored it.
    async fn deliver(&self, host: PeerId, grant: &FrameGrant, rendered: RenderedFrame) -> Result<(), String> {
        let (blob, size) = hash_file(&rendered.path).await.map_err(|e| e.to_string())?;
        let notice = WorkRequest::Rendered {
            job: grant.job.clone(),
            frame: grant.frame,
            blend: grant.blend,
            blob,
            size,
            ext: rendered.ext.clone(),
        };
        match self.client.request(host, notice).await.map_err(|e| e.to_string())? {
            WorkResponse::Upload => self.upload(host, blob, size, &rendered).await.map_err(|e| format!("{e:#}")),
            WorkResponse::Discard => {
                debug!("host no longer wants frame {} of {}", grant.frame, grant.job);
                Ok(())
            }
            other => Err(format!("host answered {other:?}")),
        }?;
        info!("frame {} of {} delivered", grant.frame, grant.job);
        Ok(())
    }

    async fn upload(&self, host: PeerId, blob: BlobHash, size: u64, rendered: &RenderedFrame) -> anyhow::Result<()> {
        with_retries("uploading the frame", || async {
            let mut stream = self.client.streams().open_stream(host, BLOB_PROTOCOL).await?;
            write_header(&mut stream, &BlobRequest::Put { hash: blob, size }).await?;
            send_file(&rendered.path, &mut stream).await?;
            stream.flush().await?;
            match read_header(&mut stream).await? {
                BlobReply::Stored => Ok(()),
                BlobReply::Refused { reason } => {
                    Err(Exchange::Final(anyhow::anyhow!("the host refused the frame: {reason}")))
                }
                other => Err(Exchange::Final(anyhow::anyhow!("the host answered {other:?}"))),
            }
        })
        .await
    }
}
