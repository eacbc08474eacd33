//! The host's side of the blob protocol: serves .blend files by hash, and receives the frames it asked volunteers
//! to upload. A frame is streamed to a temp file beside RENDERDIR's job folders and verified against its hash
//! before the event loop moves it into place; a peer can only upload a blob the host asked it for.
//!
//! A job's files (its manifest, .blend and dependencies) go only to peers that hold a lease on a frame of that job:
//! the event loop answers an [`AccessQuestion`] for each fetch. Update manifests and builds are signed and public,
//! and go to anyone. Every stream is charged to its peer's budget, and junk headers, refused fetches and unasked
//! uploads count as strikes (see `net::budget`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use futures::AsyncWriteExt;
use libp2p::{PeerId, Stream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::check::{self, FrameProblem};
use crate::{
    net::{self, Client, PeerBudgets},
    protocol::{
        write_header, write_header_max, BlobHash, BlobReply, BlobRequest, SignedManifest, UpdateRequest, WorkRequest,
        WorkResponse, BLOB_PROTOCOL, DELIVER_PROTOCOL, MAX_MANIFEST, UPDATE_PROTOCOL,
    },
    store::blobs::{receive_verified_then, send_file, BlobError},
};

/// The refusal a peer without a lease gets when it asks for a job's file.
pub const NOT_GRANTED: &str = "this host serves a job's files only to volunteers it granted a frame of that job";

/// Asked of the host's event loop before a job's file is served: does `peer` hold a lease on a frame of one of
/// `jobs` (the jobs that list the file)?
pub struct AccessQuestion {
    pub peer: PeerId,
    pub jobs: Vec<String>,
    pub reply: oneshot::Sender<bool>,
}

/// Work requests that came on a stream rather than as request-response messages (a [`crate::protocol::Delivery`]'s
/// notice and claim), for the event loop to answer in order, as it answers the same requests from the network.
pub struct WorkAsk {
    pub peer: PeerId,
    pub requests: Vec<WorkRequest>,
    pub reply: oneshot::Sender<Vec<WorkResponse>>,
}

/// A frame the host agreed to receive.
#[derive(Debug, Clone)]
pub struct ExpectedUpload {
    pub job: String,
    pub frame: u32,
    pub ext: String,
    pub size: u64,
    /// The .blend the frame was rendered from; a frame of a job's older .blend is never stored.
    pub blend: BlobHash,
    /// The size in pixels the job renders, when the owner's Blender said; the frame's image must have it.
    pub want: Option<(u32, u32)>,
    /// A file a File Output node wrote for the frame, with its checked name under the job's render folder; `None`
    /// for the frame itself.
    pub output: Option<String>,
    /// A copy of a frame that is already stored, rendered by another volunteer for a spot check: it is compared
    /// with the stored frame, never stored.
    pub check: bool,
}

/// A verified frame waiting in the temp folder for the event loop to store it.
pub struct FrameArrived {
    pub peer: PeerId,
    pub upload: ExpectedUpload,
    pub temp: PathBuf,
    /// What the check of the frame's image, made as it was received, found wrong with it (File Output files and
    /// check copies are not checked so: they are stored as they come, or compared).
    pub problem: Option<FrameProblem>,
    /// Answered once the frame is stored (or refused), before the volunteer is told.
    pub reply: oneshot::Sender<Result<(), String>>,
}

#[derive(Clone)]
pub struct BlobServer {
    inner: Arc<Shared>,
}

struct Shared {
    temp_dir: PathBuf,
    /// Per job, the blobs it lets volunteers fetch.
    served: Mutex<HashMap<String, HashMap<BlobHash, PathBuf>>>,
    /// Several frames may render to identical bytes, so one (peer, hash) can be expected more than once.
    expected: Mutex<HashMap<(PeerId, BlobHash), Vec<ExpectedUpload>>>,
    arrivals: mpsc::Sender<FrameArrived>,
    counter: AtomicU64,
    manifest: Mutex<Option<SignedManifest>>,
    /// Builds named in the manifest: the only files served over the update protocol.
    builds: Mutex<HashMap<BlobHash, PathBuf>>,
    /// Uploads in progress per peer, bounded so one volunteer cannot fill the disk with parallel uploads.
    uploading: Mutex<HashMap<PeerId, usize>>,
    /// Where the event loop is asked who may fetch a job's files.
    access: mpsc::Sender<AccessQuestion>,
    /// Where the event loop is asked to answer deliveries' notices and claims.
    work: mpsc::Sender<WorkAsk>,
}

/// Uploads one volunteer may stream at once (its render slots rarely need more than one each).
const MAX_UPLOADS_PER_PEER: usize = 8;

/// One of a peer's upload places, given back when dropped.
struct UploadSlot<'a> {
    counts: &'a Mutex<HashMap<PeerId, usize>>,
    peer: PeerId,
}

impl<'a> UploadSlot<'a> {
    fn take(counts: &'a Mutex<HashMap<PeerId, usize>>, peer: PeerId) -> Option<Self> {
        let mut map = lock(counts);
        let n = map.entry(peer).or_default();
        if *n >= MAX_UPLOADS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(Self { counts, peer })
    }
}

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        let mut map = lock(self.counts);
        if let Some(n) = map.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

impl BlobServer {
    /// `temp_dir` must be on the same file system as the render folder, so frames are renamed into place. Every
    /// fetch of a job's file waits for an answer on `access`, every delivery's notice and claim for one on `work`.
    pub fn new(
        temp_dir: PathBuf,
        arrivals: mpsc::Sender<FrameArrived>,
        access: mpsc::Sender<AccessQuestion>,
        work: mpsc::Sender<WorkAsk>,
    ) -> anyhow::Result<Self> {
        // Anything left there is a partial upload from before a crash.
        let _ = std::fs::remove_dir_all(&temp_dir);
        std::fs::create_dir_all(&temp_dir)
            .map_err(|e| anyhow::anyhow!("cannot create the temp folder {}: {e}", temp_dir.display()))?;
        Ok(Self {
            inner: Arc::new(Shared {
                temp_dir,
                served: Mutex::default(),
                expected: Mutex::default(),
                arrivals,
                counter: AtomicU64::new(0),
                uploading: Mutex::default(),
                manifest: Mutex::default(),
                builds: Mutex::default(),
                access,
                work,
            }),
        })
    }

    /// Serves exactly these blobs for `job` from now on (the manifest, the .blend and its files); an empty list
    /// stops serving the job's files. A blob shared by several jobs is served while any of them lists it.
    pub fn serve_job(&self, job: &str, blobs: Vec<(BlobHash, PathBuf)>) {
        let mut served = lock(&self.inner.served);
        if blobs.is_empty() {
            served.remove(job);
        } else {
            served.insert(job.to_string(), blobs.into_iter().collect());
        }
    }

    /// Serves the signed update manifest and the builds it names over [`UPDATE_PROTOCOL`].
    pub fn serve_updates(&self, manifest: SignedManifest, builds: Vec<(BlobHash, PathBuf)>) {
        *lock(&self.inner.manifest) = Some(manifest);
        lock(&self.inner.builds).extend(builds);
    }

    /// Every file served for some job now.
    pub fn served_paths(&self) -> std::collections::HashSet<PathBuf> {
        lock(&self.inner.served).values().flat_map(|blobs| blobs.values().cloned()).collect()
    }

    /// Invites `peer` to upload `hash` for a frame. A newer invitation for the same frame replaces the older one,
    /// so a peer cannot pile up invitations (and temp files) by announcing the same frame again and again.
    pub fn expect(&self, peer: PeerId, hash: BlobHash, upload: ExpectedUpload) {
        let mut expected = lock(&self.inner.expected);
        for ((p, _), list) in expected.iter_mut() {
            if *p == peer {
                list.retain(|u| (&u.job, u.frame, &u.output) != (&upload.job, upload.frame, &upload.output));
            }
        }
        expected.retain(|_, list| !list.is_empty());
        expected.entry((peer, hash)).or_default().push(upload);
    }

    /// Takes one expected upload of `hash` from `peer`, if any.
    fn take_expected(&self, peer: PeerId, hash: BlobHash) -> Option<ExpectedUpload> {
        let mut expected = lock(&self.inner.expected);
        let list = expected.get_mut(&(peer, hash))?;
        let upload = list.pop();
        if list.is_empty() {
            expected.remove(&(peer, hash));
        }
        upload
    }

    pub fn forget_peer(&self, peer: &PeerId) {
        lock(&self.inner.expected).retain(|(p, _), _| p != peer);
    }

    /// Accepts blob, update and (with `deliveries`) delivery streams until the network stops. Each stream is charged
    /// to its peer's budget; one over it is dropped unanswered (and the peer banned by the network).
    pub fn spawn(&self, client: &Client, deliveries: bool) -> anyhow::Result<()> {
        let server = self.clone();
        net::serve_streams(client, BLOB_PROTOCOL, "blob", move |budgets, peer, stream| {
            let server = server.clone();
            async move { server.handle(&budgets, peer, stream).await }
        })?;
        let server = self.clone();
        net::serve_streams(client, UPDATE_PROTOCOL, "update", move |budgets, peer, stream| {
            let server = server.clone();
            async move { server.handle_update(&budgets, peer, stream).await }
        })?;
        if !deliveries {
            return Ok(());
        }
        let server = self.clone();
        net::serve_streams(client, DELIVER_PROTOCOL, "delivery", move |budgets, peer, stream| {
            let server = server.clone();
            async move { server.handle_delivery(&budgets, peer, stream).await }
        })?;
        Ok(())
    }

    async fn handle_update(&self, budgets: &PeerBudgets, peer: PeerId, mut stream: Stream) -> anyhow::Result<()> {
        let request: UpdateRequest = budgets.first_header(peer, &mut stream, crate::protocol::MAX_BLOB_HEADER).await?;
        match request {
            UpdateRequest::Manifest => {
                let manifest = lock(&self.inner.manifest).clone();
                write_header_max(&mut stream, &manifest, MAX_MANIFEST as u32).await?;
                stream.close().await?;
                Ok(())
            }
            UpdateRequest::Build { hash } => {
                let path = lock(&self.inner.builds).get(&hash).cloned();
                if path.is_none() {
                    budgets.strike(peer);
                }
                self.send_file_as(peer, hash, path, stream).await
            }
        }
    }

    async fn handle(&self, budgets: &PeerBudgets, peer: PeerId, mut stream: Stream) -> anyhow::Result<()> {
        let request: BlobRequest = budgets.first_header(peer, &mut stream, crate::protocol::MAX_BLOB_HEADER).await?;
        let reply = match request {
            BlobRequest::Get { hash } => return self.send_blob(budgets, peer, hash, stream).await,
            BlobRequest::Put { hash, size } => self.receive_frame(peer, hash, size, &mut stream).await,
        };
        if matches!(reply, BlobReply::Refused { .. }) {
            budgets.strike(peer);
        }
        write_header(&mut stream, &reply).await?;
        stream.close().await?;
        Ok(())
    }

    /// Serves a job's file to a peer holding a lease on a frame of a job that lists it; refuses it to others.
    async fn send_blob(
        &self,
        budgets: &PeerBudgets,
        peer: PeerId,
        hash: BlobHash,
        mut stream: Stream,
    ) -> anyhow::Result<()> {
        let (path, jobs) = self.locate(&hash);
        if path.is_some() && !self.may_fetch(peer, jobs).await {
            budgets.strike(peer);
            debug!(%peer, "refused blob {}: the peer holds no lease on a job that lists it", hash.short());
            write_header(&mut stream, &BlobReply::Refused { reason: NOT_GRANTED.into() }).await?;
            stream.close().await?;
            return Ok(());
        }
        if path.is_none() {
            budgets.strike(peer);
        }
        self.send_file_as(peer, hash, path, stream).await
    }

    /// Where a served blob is, and the jobs that list it (none: not served).
    pub(super) fn locate(&self, hash: &BlobHash) -> (Option<PathBuf>, Vec<String>) {
        let served = lock(&self.inner.served);
        let jobs: Vec<String> =
            served.iter().filter(|(_, blobs)| blobs.contains_key(hash)).map(|(j, _)| j.clone()).collect();
        let path = jobs.first().and_then(|job| served.get(job)).and_then(|blobs| blobs.get(hash)).cloned();
        (path, jobs)
    }

    /// Asks the event loop whether `peer` holds a lease on a frame of one of `jobs`; no answer means no.
    pub(super) async fn may_fetch(&self, peer: PeerId, jobs: Vec<String>) -> bool {
        let (reply, answer) = oneshot::channel();
        if self.inner.access.send(AccessQuestion { peer, jobs, reply }).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// Has the event loop answer `requests` from `peer`, in order; `None` when the host is shutting down.
    pub(super) async fn ask_loop(&self, peer: PeerId, requests: Vec<WorkRequest>) -> Option<Vec<WorkResponse>> {
        let (reply, answer) = oneshot::channel();
        self.inner.work.send(WorkAsk { peer, requests, reply }).await.ok()?;
        answer.await.ok()
    }

    /// Answers `Found` and streams the file, or `Missing`.
    async fn send_file_as(
        &self,
        peer: PeerId,
        hash: BlobHash,
        path: Option<PathBuf>,
        mut stream: Stream,
    ) -> anyhow::Result<()> {
        let Some(path) = path else {
            write_header(&mut stream, &BlobReply::Missing).await?;
            return Ok(());
        };
        let size = tokio::fs::metadata(&path).await?.len();
        write_header(&mut stream, &BlobReply::Found { size }).await?;
        let sent = send_file(&path, &mut stream).await?;
        stream.close().await?;
        debug!("sent {} ({sent} bytes, blob {}) to {peer}", path.display(), hash.short());
        Ok(())
    }

    /// Receives an upload the host asked for (the bytes of a `Put`, or of a delivery answered `Upload`) into the temp
    /// folder, verified, and waits until the event loop has stored it.
    pub(super) async fn receive_frame(
        &self,
        peer: PeerId,
        hash: BlobHash,
        size: u64,
        stream: &mut Stream,
    ) -> BlobReply {
        let Some(_slot) = UploadSlot::take(&self.inner.uploading, peer) else {
            return BlobReply::Refused {
                reason: format!("at most {MAX_UPLOADS_PER_PEER} uploads at once per volunteer"),
            };
        };
        let Some(upload) = self.take_expected(peer, hash) else {
            // Debug only: a peer sending many must not fill the log (it is banned for the strikes instead).
            debug!("{peer} tried to upload blob {} that the host did not ask for", hash.short());
            return BlobReply::Refused { reason: "this host did not ask for that blob".into() };
        };
        if size != upload.size {
            return BlobReply::Refused { reason: format!("announced {} bytes, now {size}", upload.size) };
        }
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let temp = self.inner.temp_dir.join(format!("{}-{n}.part", hash.short()));
        // A frame's image is checked in the same trip to a blocking thread as its last write, from memory when it
        // came in one batch (see `check::check_frame_bytes`).
        let (ext, want, frame_itself) = (upload.ext.clone(), upload.want, upload.output.is_none() && !upload.check);
        let check = move |path: &Path, whole: Option<&[u8]>| {
            if !frame_itself {
                return None;
            }
            // A decoder that panics on a volunteer's bytes refuses the frame like any undecodable one (the frame is
            // rendered elsewhere and the sender charged), rather than failing the upload as if the transport had.
            let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match whole {
                Some(bytes) => check::check_frame_bytes(bytes, &ext, want),
                None => check::check_frame(path, &ext, want),
            }));
            match checked {
                Ok(checked) => checked.err(),
                Err(_) => Some(FrameProblem::Unreadable("its decoder failed".into())),
            }
        };
        let problem = match receive_verified_then(stream, size, &hash, &temp, check).await {
            Ok(problem) => problem,
            Err(e) => {
                warn!("frame {} of {} from {peer} refused: {e}", upload.frame, upload.job);
                if matches!(e, BlobError::Recv { .. } | BlobError::SizeMismatch { .. }) {
                    // The transport failed, not the content: the volunteer may try the upload again.
                    self.expect(peer, hash, upload);
                }
                return BlobReply::Refused { reason: e.to_string() };
            }
        };
        let (reply, answer) = oneshot::channel();
        let arrival = FrameArrived { peer, upload, temp: temp.clone(), problem, reply };
        if self.inner.arrivals.send(arrival).await.is_err() {
            let _ = std::fs::remove_file(&temp);
            return BlobReply::Refused { reason: "the host is shutting down".into() };
        }
        match answer.await {
            Ok(Ok(())) => BlobReply::Stored,
            Ok(Err(reason)) => BlobReply::Refused { reason },
            Err(_) => BlobReply::Refused { reason: "the host is shutting down".into() },
        }
    }
}

impl super::Host {
    /// Answers an [`AccessQuestion`] from the scheduler's current leases.
    pub(super) fn answer_access(&self, question: AccessQuestion) {
        let AccessQuestion { peer, jobs, reply } = question;
        let granted = self.scheduler.leases_of(&peer).iter().any(|(job, _)| jobs.contains(job))
            || self.verifier.jobs_leased_to(&peer).iter().any(|job| jobs.iter().any(|j| j == job));
        let _ = reply.send(granted);
    }
}

/// A poisoned lock only means another task panicked mid-update of a plain map; its data is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
