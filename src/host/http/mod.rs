//! The dashboard (`host --http ADDR`): one read-only page with the farm's jobs, their frames, the latest finished
//! frames as thumbnails, the volunteers and the last errors, kept live by server-sent events; `/api/status` serves
//! the same JSON as `blenderdist status --json`.
//!
//! The host's loop publishes a [`Snapshot`] on a `tokio::sync::watch` channel; this module only reads it and
//! RENDERDIR, so nothing here can stall the loop or change the farm.
//!
//! Layout: this file holds the routes and [`serve`]; `api` the JSON and event-stream routes, `files` the path
//! checks and frame files, `thumbs` thumbnails and conversions, `limits` the bounds on every request and
//! connection, `error` the refusals. The page itself is `page.html`, `page.css` and `page.js`, embedded in the
//! binary (no build step).

mod api;
mod error;
mod files;
mod limits;
mod thumbs;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use axum::{
    extract::{Path, State},
    http::header,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::protocol::StatusReport;
use error::DashboardError;
use files::FrameFile;
use thumbs::{CacheKey, PictureCache, Rendition};

/// What the dashboard shows, as of one moment; published by the host's loop when something changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// The same report `status --json` prints.
    pub status: StatusReport,
    /// For each job (same order as `status.jobs`), the state of every frame from first to last.
    pub frames: Vec<FrameGrid>,
    /// The latest finished frames, newest first (at most 24).
    pub recent: Vec<FinishedFrame>,
    /// The latest errors, newest first (at most 20).
    pub errors: Vec<ErrorEntry>,
}

/// The frames of one job.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FrameGrid {
    pub job: String,
    pub first: u32,
    /// One letter per frame, `first` first: `p` pending, `r` rendering, `d` done, `f` failed (at least once, not
    /// done). Jobs of more than [`MAX_GRID`] frames are summarised: each letter then stands for a run of frames and is
    /// the "worst" state among them (f > r > p > d).
    pub states: String,
    /// Frames per letter (1 unless summarised).
    pub per_cell: u32,
}

/// Most cells in one job's grid.
pub const MAX_GRID: usize = 10_000;

/// A frame file in RENDERDIR.
#[derive(Debug, Clone, Serialize)]
pub struct FinishedFrame {
    pub job: String,
    pub frame: u32,
    /// The file's name inside RENDERDIR/JOB/ (e.g. `0012.png`).
    pub file: String,
    /// Who rendered it (name, or peer id when it gave none).
    pub by: String,
    /// Unix time in seconds when it was stored.
    pub at: u64,
}

/// One failure, as the job log recorded it.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorEntry {
    pub job: String,
    pub frame: Option<u32>,
    pub by: Option<String>,
    /// Unix time in seconds.
    pub at: u64,
    /// The error text (the tail of Blender's output for a failed render).
    pub text: String,
}

/// Binds `addr` and serves the dashboard from a task of its own until `snapshots`' sender is dropped (the host
/// stopped): then it stops accepting, open event streams end, and the task finishes once the last answer is sent.
/// Returns the address actually bound (for port 0).
pub async fn serve(
    addr: SocketAddr,
    renderdir: PathBuf,
    snapshots: watch::Receiver<Arc<Snapshot>>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve the dashboard on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let listener = limits::BoundedListener::new(listener);
    // The host dropping its sender is the signal to stop; open event streams end with it, so shutdown completes.
    let mut stopped = snapshots.clone();
    let shutdown = async move { while stopped.changed().await.is_ok() {} };
    let app = router(Dashboard::new(renderdir, snapshots));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::warn!("the dashboard stopped: {e}");
        }
    });
    Ok(bound)
}

/// What every request handler shares.
#[derive(Clone)]
struct Dashboard {
    renderdir: Arc<PathBuf>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    pictures: PictureCache,
    /// Permits to decode an image ([`thumbs::MAX_DECODES`]).
    decodes: Arc<Semaphore>,
    limits: limits::RequestLimits,
}

impl Dashboard {
    fn new(renderdir: PathBuf, snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        Self {
            renderdir: Arc::new(renderdir),
            snapshots,
            pictures: PictureCache::default(),
            decodes: Arc::new(Semaphore::new(thumbs::MAX_DECODES)),
            limits: limits::RequestLimits::default(),
        }
    }

    /// Finds a frame file the URL names, after every check in [`files`].
    async fn frame_file(&self, job: String, file: String) -> Result<FrameFile, DashboardError> {
        files::check_job(&self.snapshots.borrow(), &job)?;
        let renderdir = self.renderdir.clone();
        files::blocking(move || files::resolve(&renderdir, &job, &file)).await
    }

    /// A picture of a frame file, from the cache or decoded on a blocking thread.
    async fn picture(&self, file: FrameFile, rendition: Rendition) -> Result<Response, DashboardError> {
        let key = CacheKey::of(&file, rendition);
        let picture = match self.pictures.get(&key) {
            Some(picture) => picture,
            None => {
                let permit = self.decodes.clone().acquire_owned().await.map_err(|_| DashboardError::Busy)?;
                let picture = files::blocking(move || {
                    let _permit = permit;
                    thumbs::render(&file, rendition)
                })
                .await?;
                self.pictures.insert(key, picture.clone());
                picture
            }
        };
        let headers = [(header::CONTENT_TYPE, picture.content_type), (header::CACHE_CONTROL, "private, max-age=300")];
        Ok((headers, picture.bytes).into_response())
    }
}

fn router(dashboard: Dashboard) -> Router {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", include_str!("page.html"))))
        .route("/page.css", get(|| asset("text/css; charset=utf-8", include_str!("page.css"))))
        .route("/page.js", get(|| asset("text/javascript; charset=utf-8", include_str!("page.js"))))
        .route("/api/status", get(api::status))
        .route("/api/snapshot", get(api::snapshot))
        .route("/api/events", get(api::events))
        .route("/api/frame/{job}/{frame}", get(api::frame))
        .route("/frames/{job}/{file}", get(frame))
        .route("/view/{job}/{file}", get(view))
        .route("/thumbs/{job}/{file}", get(thumb))
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::from_fn_with_state(dashboard.clone(), limits::bound_request))
        .with_state(dashboard)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// The frame file as it is (for download, or for the browser when it can show it).
async fn frame(
    State(dashboard): State<Dashboard>,
    Path((job, file)): Path<(String, String)>,
) -> Result<Response, DashboardError> {
    files::send_file(&dashboard.frame_file(job, file).await?).await
}

/// The frame at full size in a form browsers show: the file itself, or a PNG of an EXR, TIFF, TGA or HDR.
async fn view(
    State(dashboard): State<Dashboard>,
    Path((job, file)): Path<(String, String)>,
) -> Result<Response, DashboardError> {
    let file = dashboard.frame_file(job, file).await?;
    if files::browser_shows(&file.ext) {
        files::send_file(&file).await
    } else {
        dashboard.picture(file, Rendition::FullPng).await
    }
}

/// A thumbnail of at most [`thumbs::THUMB_SIZE`] pixels a side.
async fn thumb(
    State(dashboard): State<Dashboard>,
    Path((job, file)): Path<(String, String)>,
) -> Result<Response, DashboardError> {
    let file = dashboard.frame_file(job, file).await?;
    dashboard.picture(file, Rendition::Thumbnail).await
}
