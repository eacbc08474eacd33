//! Bounds on every request, applied before any route: URL length, request body size (every route is a GET, so
//! none needs a body), and how many requests are in flight, counted until their response body is fully sent (a
//! frame download or an event stream holds its permit while it lasts). A request over the limit is answered
//! at once rather than queued, so a flood cannot pile up waiting tasks. Below them, [`BoundedListener`] caps the
//! open connections: the host's network shares the process's file descriptors.
//!
//! Every answer also gets headers that keep a browser from reading a frame file as anything but an image.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    body::{Body, HttpBody as _},
    extract::{Request, State},
    http::{header, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::StreamExt as _;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

use super::{error::DashboardError, Dashboard};

/// Longest request target (path and query) accepted.
pub const MAX_URI: usize = 4096;
/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;
/// Requests in flight at once.
pub const MAX_REQUESTS: usize = 64;
/// Connections open at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 256;
/// Event streams open at once, within [`MAX_REQUESTS`]: open pages must not starve the requests of frames.
pub const MAX_EVENT_STREAMS: usize = 16;

/// Content-Security-Policy of every answer: the page loads only its own script, style and images, and nothing
/// may frame it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(Clone)]
pub struct RequestLimits {
    requests: Arc<Semaphore>,
    /// Taken by the event-stream route, on top of the request's own permit.
    pub event_streams: Arc<Semaphore>,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            requests: Arc::new(Semaphore::new(MAX_REQUESTS)),
            event_streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
        }
    }
}

/// The middleware: refuses a request over a bound, else runs it holding a permit until its body is sent.
pub async fn bound_request(State(dashboard): State<Dashboard>, request: Request, next: Next) -> Response {
    let mut response = match check(&dashboard.limits, request, next).await {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    response
}

async fn check(limits: &RequestLimits, request: Request, next: Next) -> Result<Response, DashboardError> {
    let uri_len = request.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI {
        return Err(DashboardError::UriTooLong(MAX_URI));
    }
    let headers = request.headers();
    let declared = headers.get(header::CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()));
    let body_too_large = match declared {
        Some(Some(len)) => len > MAX_BODY as u64,
        // An unreadable length, or a body of unknown length (chunked).
        Some(None) => true,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    };
    if body_too_large {
        return Err(DashboardError::BodyTooLarge(MAX_BODY));
    }
    let permit = limits.requests.clone().try_acquire_owned().map_err(|_| DashboardError::Busy)?;
    let response = next.run(request).await;
    Ok(hold_until_sent(response, permit))
}

/// Keeps `permit` until the response's body has been sent (or the client went away).
fn hold_until_sent(response: Response, permit: OwnedSemaphorePermit) -> Response {
    let (mut parts, body) = response.into_parts();
    // The wrapped body no longer knows its length: keep it in the header, so the answer is not chunked.
    if let Some(len) = body.size_hint().exact() {
        parts.headers.entry(header::CONTENT_LENGTH).or_insert_with(|| HeaderValue::from(len));
    }
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// A TCP listener that accepts a connection only while fewer than [`MAX_CONNECTIONS`] are open.
pub struct BoundedListener {
    listener: TcpListener,
    connections: Arc<Semaphore>,
}

impl BoundedListener {
    pub fn new(listener: TcpListener) -> Self {
        Self { listener, connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)) }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed, so this waits for a slot and never fails.
        let permit = self.connections.clone().acquire_owned().await.ok();
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        (CountedStream { stream, _permit: permit }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// An accepted connection, holding its slot until it closes.
pub struct CountedStream {
    stream: TcpStream,
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsyncRead for CountedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
