//! One granted frame on a volunteer: fetch the job's files (once, into the cache), render while renewing the lease,
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

use super::{
    blender::{RenderError, RenderRequest, RenderedFrame, Renderer},
    deliver::{Delivered, FrameFile, Handover},
    layouts::{Layout, Layouts},
    project,
};
use crate::{
    net::Client,
    protocol::{
        one_line, read_header, truncate_utf8, write_header, BlobHash, BlobReply, BlobRequest, ExtraOutput, FrameGrant,
        WorkRequest, WorkResponse, BLOB_PROTOCOL, MAX_ERROR_TEXT, MAX_LOGGED_TEXT,
    },
    store::blobs::{hash_file, hash_file_keeping, send_file, BlobError, BlobStore},
};

/// Blob exchanges are tried this often: an owner busy accepting other streams drops new ones (libp2p-stream keeps
/// no backlog), and a dropped stream is worth another try, not a lost frame.
const BLOB_ATTEMPTS: u32 = 6;

/// How long a volunteer waits for an owner's answers on blob streams before it tries the exchange again (opening a
/// stream is bounded by [`crate::net::OPEN_TIMEOUT`], work requests by the request timeout, and every read of a
/// blob's bytes by [`crate::store::blobs::STALL_TIMEOUT`]). An owner that stops answering so never holds a render
/// slot for longer than `BLOB_ATTEMPTS` times these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// For the owner's reply header to a blob request.
    pub reply: Duration,
    /// For the owner to store an uploaded frame (rename, fsync, commit) and say so.
    pub stored: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Self { reply: Duration::from_secs(30), stored: Duration::from_secs(120) }
    }
}

/// What an owner's refusal (or unexpected answer) says, for a log line: it comes from the network.
pub(super) fn refusal(reason: &str) -> String {
    one_line(reason, MAX_LOGGED_TEXT)
}

/// The owner's reply header, or a transport failure (tried again) if it does not come in time: an owner that
/// stops answering must not hold a render slot forever.
pub(super) async fn reply(stream: &mut libp2p::Stream, limit: Duration) -> Result<BlobReply, Exchange> {
    match tokio::time::timeout(limit, read_header(stream)).await {
        Ok(header) => Ok(header?),
        Err(_) => Err(Exchange::Transport(anyhow::anyhow!("the owner did not answer within {} s", limit.as_secs()))),
    }
}

/// Runs a blob exchange until it succeeds, fails for a reason other than the transport, or runs out of attempts.
pub(super) async fn with_retries<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
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
                tokio::time::sleep(retry_pause(tries)).await;
            }
            Err(Exchange::Transport(e) | Exchange::Final(e)) => return Err(e),
        }
    }
}

/// The pause after failed attempt `tries`: 1, 4, 16, 64, 256 ms, plus a pseudo-random 0-2 ms so that volunteers
/// dropped together do not retry together. The usual failure is a stream the owner dropped because another had
/// just arrived (libp2p-stream holds one waiting stream per protocol), which the owner's accept loop has taken a
/// millisecond later; 7-10 % of deliveries met it with 50 volunteers, and the fixed 50 ms pause that came before
/// delayed their slots' next grants and, at a job's start, their first renders. The pauses grow for an owner that is
/// really struggling (a lost connection is redialled meanwhile).
pub(super) fn retry_pause(tries: u32) -> Duration {
    let nanos = std::time::UNIX_EPOCH.elapsed().map(|d| d.subsec_nanos()).unwrap_or(0);
    let jitter = Duration::from_micros(u64::from(nanos % 2_000_000 / 1_000));
    Duration::from_millis(4u64.saturating_pow(tries.saturating_sub(1)).min(1_000)) + jitter
}

/// How a blob exchange failed: transport failures are retried, the rest are answers.
pub(super) enum Exchange {
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
    /// Where the jobs' files are laid out, and which layouts are in use.
    pub layouts: Arc<Layouts>,
    pub blobs: Arc<BlobStore>,
    pub renderer: Arc<R>,
    pub work_dir: PathBuf,
    pub fetching: tokio::sync::Mutex<()>,
    pub next_dir: std::sync::atomic::AtomicU64,
    /// Sent with every claim; the OpenGL probe fills in its part once it has run.
    pub caps: std::sync::Mutex<Option<crate::protocol::VolunteerCaps>>,
    /// Frames this volunteer delivered, for its progress lines.
    pub delivered: std::sync::atomic::AtomicU64,
    pub patience: Patience,
    /// What this volunteer shares with the job's other volunteers, and how it fetches from them.
    pub sharing: Arc<super::seed::Sharing>,
    /// Hosts that do not speak [`crate::protocol::DELIVER_PROTOCOL`]: frames go back to them the general way.
    pub general_path: std::sync::Mutex<std::collections::HashSet<PeerId>>,
}

impl<R: Renderer> Slot<R> {
    /// Renders one granted frame whose .blend was fetched (or failed to) into `out_dir`, a folder of its own.
    /// `Ok(None)`: recalled while rendering.
    pub async fn render_granted(
        &self,
        grant: &FrameGrant,
        project: anyhow::Result<Layout>,
        recalled: &CancellationToken,
        out_dir: &Path,
    ) -> Result<Option<RenderedFrame>, RenderError> {
        match project {
            Ok(layout) => self.render(grant, layout, recalled, out_dir).await,
            Err(e) => Err(RenderError::new(format!("could not fetch the job's files: {e:#}"))),
        }
    }

    /// Hands a render's outcome back to `host` (the frame itself, or the failure with Blender's words), then removes
    /// the frame's folder. With `handover`, a delivered frame also claims the slot's next frame from `host`.
    pub async fn report(
        &self,
        host: PeerId,
        grant: &FrameGrant,
        outcome: Result<Option<RenderedFrame>, RenderError>,
        out_dir: &Path,
        handover: Option<Handover>,
    ) {
        let FrameGrant { job, frame, .. } = grant;
        let result = match outcome {
            Ok(Some(rendered)) => self.deliver(host, grant, rendered, handover).await,
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

    /// What to tell owners this volunteer can do.
    pub fn current_caps(&self) -> Option<crate::protocol::VolunteerCaps> {
        self.caps.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A new, unique folder for one granted frame. Never job-named: a job name comes from the network and must not
    /// choose a path; numbered, so two grants of the same frame never share a folder.
    pub fn new_frame_dir(&self, grant: &FrameGrant) -> PathBuf {
        let n = self.next_dir.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.work_dir.join(format!("{n}-{}-{}", grant.blend.short(), grant.frame))
    }

    /// The job's files laid out for Blender: from the cache when this version of the job was laid out before,
    /// otherwise the manifest and every file the cache lacks are fetched from `host` and verified first.
    pub async fn fetch_project(&self, host: PeerId, grant: &FrameGrant) -> anyhow::Result<Layout> {
        if let Some(layout) = self.layouts.existing(&grant.blend, &self.blobs) {
            self.sharing.remember_job(&self.blobs, grant.blend, host).await;
            return Ok(layout);
        }
        // One layout at a time per volunteer: slots asking for the same job wait for the first to finish.
        let _fetching = self.fetching.lock().await;
        if let Some(layout) = self.layouts.existing(&grant.blend, &self.blobs) {
            self.sharing.remember_job(&self.blobs, grant.blend, host).await;
            return Ok(layout);
        }
        let manifest_path = self.fetch_blob(host, grant.blend, grant.blend_size).await?;
        let manifest = project::read_manifest(&manifest_path)?;
        self.sharing.seeds.add_job(grant.blend, host, &manifest);
        info!("fetching the files of {} (version {}) from {host}", grant.job, grant.blend.short());
        let swarm = self.sharing.fetcher(&self.client, &self.blobs, host, grant.blend).await;
        project::fetch_missing(&manifest, &self.blobs, |hash, size| self.fetch_file(&swarm, host, hash, size)).await?;
        self.sharing.after_fetch(&self.blobs, grant.blend, &manifest).await;
        let (layouts, blobs, version) = (self.layouts.clone(), self.blobs.clone(), grant.blend);
        tokio::task::spawn_blocking(move || layouts.lay_out(&version, &manifest, &blobs))
            .await
            .map_err(|e| anyhow::anyhow!("laying out the job's files stopped: {e}"))?
    }

    /// A job's file: a large one in chunks from the job's volunteers and the owner, falling back to a whole fetch
    /// from the owner (an owner without the chunk protocol, or a chunked fetch that failed).
    async fn fetch_file(
        &self,
        swarm: &super::swarm::SwarmFetch<'_>,
        host: PeerId,
        hash: BlobHash,
        size: u64,
    ) -> anyhow::Result<PathBuf> {
        if size <= crate::protocol::CHUNK_SIZE || self.blobs.contains(&hash) {
            return self.fetch_blob(host, hash, size).await;
        }
        match swarm.fetch(hash, size).await {
            Ok(path) => Ok(path),
            Err(e) => {
                warn!("could not fetch blob {} in chunks ({e:#}); fetching it whole from {host}", hash.short());
                self.fetch_blob(host, hash, size).await
            }
        }
    }

    /// A blob from the cache, fetched from `host` and verified first if it is not there yet.
    async fn fetch_blob(&self, host: PeerId, hash: BlobHash, expected: u64) -> anyhow::Result<PathBuf> {
        if self.blobs.contains(&hash) {
            return Ok(self.blobs.path(&hash));
        }
        debug!("fetching blob {} ({expected} bytes) from {host}", hash.short());
        with_retries("fetching a blob", || async {
            let mut stream = self.client.open_stream(host, BLOB_PROTOCOL).await?;
            write_header(&mut stream, &BlobRequest::Get { hash }).await?;
            match reply(&mut stream, self.patience.reply).await? {
                BlobReply::Found { size } if size == expected => {
                    match self.blobs.receive(&hash, size, &mut stream).await {
                        Ok(path) => Ok(path),
                        // The owner sent other bytes than it named: asking again would get the same bytes.
                        Err(e @ BlobError::HashMismatch { .. }) => Err(Exchange::Final(e.into())),
                        Err(e) => Err(Exchange::Transport(e.into())),
                    }
                }
                BlobReply::Found { size } => {
                    Err(Exchange::Final(anyhow::anyhow!("the host offers {size} bytes for a {expected}-byte blob")))
                }
                BlobReply::Refused { reason } => Err(Exchange::Final(anyhow::anyhow!(
                    "the host refused blob {}: {}",
                    hash.short(),
                    refusal(&reason)
                ))),
                other => Err(Exchange::Final(anyhow::anyhow!("the host answered {}", refusal(&format!("{other:?}"))))),
            }
        })
        .await
    }

    /// Renders until done or until `recalled` fires. `Ok(None)`: the host recalled the frame, so rendering stopped
    /// (dropping the render future kills Blender).
    async fn render(
        &self,
        grant: &FrameGrant,
        layout: Layout,
        recalled: &CancellationToken,
        out_dir: &Path,
    ) -> Result<Option<RenderedFrame>, RenderError> {
        let out_dir = out_dir.to_path_buf();
        tokio::fs::create_dir_all(&out_dir)
            .await
            .map_err(|e| RenderError::new(format!("cannot create {}: {e}", out_dir.display())))?;
        // The layout stays in use (its files unchanged) until this render ends.
        let Layout { blend, allowed_missing, _in_use } = layout;
        let request = RenderRequest { blend, frame: grant.frame, out_dir, allowed_missing };
        tokio::select! {
            result = self.renderer.render(&request) => result.map(Some),
            _ = recalled.cancelled() => Ok(None),
        }
    }

    /// Announces the frame (and the files File Output nodes wrote for it), pushes them if the host wants them, the
    /// frame last, and waits until the host has stored each. A frame alone goes in one exchange when the host speaks
    /// [`crate::protocol::DELIVER_PROTOCOL`] (`deliver.rs`), claiming the slot's next frame on the way.
    async fn deliver(
        &self,
        host: PeerId,
        grant: &FrameGrant,
        rendered: RenderedFrame,
        handover: Option<Handover>,
    ) -> Result<(), String> {
        let (blob, size, kept) = hash_file_keeping(&rendered.path).await.map_err(|e| e.to_string())?;
        if rendered.outputs.is_empty() && !self.general_path.lock().unwrap_or_else(|e| e.into_inner()).contains(&host) {
            let file = FrameFile { path: &rendered.path, ext: &rendered.ext, kept: kept.as_deref() };
            match self.deliver_in_one(host, grant, file, (blob, size), handover).await.map_err(|e| format!("{e:#}"))? {
                Delivered::Stored => {
                    self.delivered_one(grant);
                    return Ok(());
                }
                Delivered::Discarded => {
                    debug!("host no longer wants frame {} of {}", grant.frame, grant.job);
                    return Ok(());
                }
                Delivered::Unsupported => {
                    debug!("host {host} takes frames the general way (an older build)");
                    self.general_path.lock().unwrap_or_else(|e| e.into_inner()).insert(host);
                }
            }
        }
        let mut outputs = Vec::with_capacity(rendered.outputs.len());
        for (path, name) in &rendered.outputs {
            let (blob, size) = hash_file(path).await.map_err(|e| e.to_string())?;
            outputs.push(ExtraOutput { name: name.clone(), blob, size });
        }
        let notice = WorkRequest::Rendered {
            job: grant.job.clone(),
            frame: grant.frame,
            blend: grant.blend,
            blob,
            size,
            ext: rendered.ext.clone(),
            outputs: outputs.clone(),
        };
        match self.client.request(host, notice).await.map_err(|e| e.to_string())? {
            WorkResponse::Upload => {
                for ((path, _), output) in rendered.outputs.iter().zip(&outputs) {
                    self.upload(host, output.blob, output.size, path).await.map_err(|e| format!("{e:#}"))?;
                }
                self.upload(host, blob, size, &rendered.path).await.map_err(|e| format!("{e:#}"))
            }
            WorkResponse::Discard => {
                debug!("host no longer wants frame {} of {}", grant.frame, grant.job);
                Ok(())
            }
            WorkResponse::Refused { reason } => Err(format!("the host refused the frame: {}", refusal(&reason))),
            other => Err(format!("host answered {}", refusal(&format!("{other:?}")))),
        }?;
        self.delivered_one(grant);
        Ok(())
    }

    fn delivered_one(&self, grant: &FrameGrant) {
        self.delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        info!("frame {} of {} delivered", grant.frame, grant.job);
    }

    async fn upload(&self, host: PeerId, blob: BlobHash, size: u64, path: &Path) -> anyhow::Result<()> {
        with_retries("uploading the frame", || async {
            let mut stream = self.client.open_stream(host, BLOB_PROTOCOL).await?;
            write_header(&mut stream, &BlobRequest::Put { hash: blob, size }).await?;
            send_file(path, &mut stream).await?;
            stream.flush().await?;
            match reply(&mut stream, self.patience.stored).await? {
                BlobReply::Stored => Ok(()),
                BlobReply::Refused { reason } => {
                    Err(Exchange::Final(anyhow::anyhow!("the host refused the frame: {}", refusal(&reason))))
                }
                other => Err(Exchange::Final(anyhow::anyhow!("the host answered {}", refusal(&format!("{other:?}"))))),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_dropped_stream_is_tried_again_within_milliseconds_and_a_failing_owner_less_and_less_often() {
        let ms = Duration::from_millis;
        // (failed attempt, shortest pause, longest pause): the jitter adds under 2 ms.
        let table =
            [(1, ms(1), ms(3)), (2, ms(4), ms(6)), (3, ms(16), ms(18)), (5, ms(256), ms(258)), (9, ms(1000), ms(1002))];
        for (tries, least, most) in table {
            for _ in 0..20 {
                let pause = super::retry_pause(tries);
                assert!(pause >= least && pause < most, "attempt {tries}: {pause:?}");
            }
        }
    }
}
