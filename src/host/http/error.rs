//! Why the dashboard refuses a request, as typed errors that become an HTTP status and a one-line plain-text
//! answer naming what is wrong.

use axum::{
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// A job or file name from the URL that could reach outside its folder, or is not a frame's name.
    #[error("bad {what} name: {why}")]
    BadName { what: &'static str, why: &'static str },
    #[error("bad frame number {0:?}: it must be a whole number")]
    BadFrameNumber(String),
    #[error("no such job: {0}")]
    NoSuchJob(String),
    #[error("no such frame")]
    NoSuchFrame,
    #[error("the dashboard cannot read .{0} images")]
    UnsupportedFormat(String),
    /// Checked before decoding: an image this big would take too much memory.
    #[error("the image is {width}×{height} pixels, more than the dashboard decodes ({limit})")]
    ImageTooLarge { width: u32, height: u32, limit: &'static str },
    #[error("the image cannot be decoded: {0}")]
    Decode(String),
    #[error("the request URL is longer than {0} bytes")]
    UriTooLong(usize),
    #[error("request bodies are limited to {0} bytes (every route is a GET)")]
    BodyTooLarge(usize),
    /// Too many requests in flight; the client should retry.
    #[error("the dashboard is busy, retry in a moment")]
    Busy,
    #[error("cannot read the render folder: {0}")]
    Io(#[from] std::io::Error),
}

impl DashboardError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadName { .. } | Self::BadFrameNumber(_) => StatusCode::BAD_REQUEST,
            Self::NoSuchJob(_) | Self::NoSuchFrame => StatusCode::NOT_FOUND,
            Self::UnsupportedFormat(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::ImageTooLarge { .. } | Self::Decode(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for DashboardError {
    fn into_response(self) -> Response {
        if let Self::Io(e) = &self {
            tracing::warn!("dashboard: {e}");
        }
        let retry = matches!(self, Self::Busy).then_some([(header::RETRY_AFTER, "1")]);
        (self.status(), retry, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{self}\n"))
            .into_response()
    }
}
