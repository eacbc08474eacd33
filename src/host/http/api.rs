//! The page's data: the status report (the same JSON as `status --json`), the whole snapshot, a live stream of
//! snapshots (server-sent events), and which file holds a frame.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::{Path, State},
    http::header,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
};
use serde::Serialize;

use super::{error::DashboardError, files, Dashboard};

/// A comment line on idle event streams this often, so proxies and browsers keep them open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub async fn status(State(dashboard): State<Dashboard>) -> Response {
    let snapshot = dashboard.snapshots.borrow().clone();
    json(&snapshot.status)
}

pub async fn snapshot(State(dashboard): State<Dashboard>) -> Response {
    let snapshot = dashboard.snapshots.borrow().clone();
    json(&*snapshot)
}

/// The current snapshot as one event, then one on every change, until the host stops.
pub async fn events(State(dashboard): State<Dashboard>) -> Result<Response, DashboardError> {
    let permit = dashboard.limits.event_streams.clone().try_acquire_owned().map_err(|_| DashboardError::Busy)?;
    let mut snapshots = dashboard.snapshots.clone();
    // The first `changed()` then returns at once, with the snapshot of the moment.
    snapshots.mark_changed();
    let stream = futures::stream::unfold((snapshots, permit), |(mut snapshots, permit)| async move {
        // An error means the host dropped its sender: the stream ends.
        snapshots.changed().await.ok()?;
        let snapshot = snapshots.borrow_and_update().clone();
        // serde_json escapes every control character, so the text holds no line break Event::data would refuse.
        let event = match serde_json::to_string(&*snapshot) {
            Ok(text) => Event::default().data(text),
            Err(e) => Event::default().comment(format!("cannot encode the snapshot: {e}")),
        };
        Some((Ok::<_, Infallible>(event), (snapshots, permit)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response())
}

/// A frame's file name in RENDERDIR/JOB.
#[derive(Serialize)]
struct FrameFileName {
    job: String,
    frame: u32,
    file: String,
}

/// Which file holds frame FRAME of JOB: the page asks when a frame is not among the snapshot's recent ones.
pub async fn frame(
    State(dashboard): State<Dashboard>,
    Path((job, frame)): Path<(String, String)>,
) -> Result<Response, DashboardError> {
    files::check_job(&dashboard.snapshots.borrow(), &job)?;
    let number = frame.parse::<u32>().map_err(|_| DashboardError::BadFrameNumber(frame))?;
    let renderdir = dashboard.renderdir.clone();
    let lookup = job.clone();
    let file = files::blocking(move || files::find_frame(&renderdir, &lookup, number)).await?;
    Ok(json(&FrameFileName { job, frame: number, file }))
}

fn json(value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
        }
        Err(e) => DashboardError::Io(std::io::Error::other(e)).into_response(),
    }
}
