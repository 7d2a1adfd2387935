//! One client connection: HTTP/1.1 by hyper, plus the timeouts and the shutdown rule that
//! hyper's single header timer cannot express.
//!
//! hyper starts its `header_read_timeout` whenever it waits for a request head, so it cannot
//! give an idle keep-alive connection (which a load balancer keeps for 60 s) more time than a
//! client that trickles a head byte by byte. Here a watcher tracks each connection:
//!
//! - a request is *in flight* from the moment hyper hands its head to the router until the
//!   response body is dropped (written, or abandoned);
//! - with nothing in flight, a connection must complete its next request head within
//!   `header_read_timeout` of its first byte, or of the accept on a new connection, and may
//!   stay silent for `keep_alive_timeout` between requests;
//! - at shutdown, connections with nothing in flight close at once (a half-sent request does
//!   not hold the drain), the others after their response (hyper's graceful shutdown).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::Router;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::Timeouts;

/// Why the watcher closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// A request head did not arrive in time.
    HeaderTimeout,
    /// Silent too long between requests.
    Idle,
    /// Shutdown, with no request in flight.
    Shutdown,
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    served: bool,
    idle_since: Instant,
    first_byte: Option<Instant>,
}

/// What the watcher knows of one connection.
#[derive(Debug)]
pub(crate) struct Activity {
    state: Mutex<State>,
    changed: Notify,
    /// Requests in flight on every connection (for the shutdown log).
    all_in_flight: Arc<AtomicUsize>,
}

impl Activity {
    pub(crate) fn new(all_in_flight: Arc<AtomicUsize>) -> Arc<Self> {
        Arc::new(Activity {
            state: Mutex::new(State { in_flight: 0, served: false, idle_since: Instant::now(), first_byte: None }),
            changed: Notify::new(),
            all_in_flight,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bytes_arrived(&self) {
        let mut st = self.lock();
        if st.in_flight == 0 && st.first_byte.is_none() {
            st.first_byte = Some(Instant::now());
            drop(st);
            self.changed.notify_waiters();
        }
    }

    fn begin_request(self: &Arc<Self>) -> InFlight {
        {
            let mut st = self.lock();
            st.in_flight += 1;
            st.served = true;
            st.first_byte = None;
        }
        self.all_in_flight.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
        InFlight { activity: self.clone() }
    }

    /// When the connection expires if nothing changes, and why; `None` while a request is in flight.
    fn deadline(&self, t: Timeouts) -> Option<(Instant, Closed)> {
        let st = self.lock();
        if st.in_flight > 0 {
            None
        } else if let Some(first) = st.first_byte {
            Some((first + t.header_read, Closed::HeaderTimeout))
        } else if !st.served {
            Some((st.idle_since + t.header_read, Closed::HeaderTimeout))
        } else {
            Some((st.idle_since + t.keep_alive, Closed::Idle))
        }
    }

    /// Resolves when the connection should be closed: a timeout with nothing in flight, or
    /// `stopping` with nothing in flight.
    pub(crate) async fn expired(&self, t: Timeouts, mut stopping: watch::Receiver<bool>) -> Closed {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let stop = *stopping.borrow_and_update();
            match self.deadline(t) {
                Some(_) if stop => return Closed::Shutdown,
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, _)) if !stop => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = &mut notified => {}
                        _ = stopping.changed() => {}
                    }
                }
                Some(_) => unreachable!("handled above"),
                None if stop => notified.await,
                None => {
                    tokio::select! {
                        _ = &mut notified => {}
                        // An error means the server is gone; the connection task ends with it.
                        _ = stopping.changed() => {}
                    }
                }
            }
        }
    }
}

/// One request in flight; ends when dropped (with the response body, or with the handler
/// future when the client goes away).
#[must_use = "the request counts as in flight only while this guard lives"]
struct InFlight {
    activity: Arc<Activity>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut st = self.activity.lock();
            st.in_flight = st.in_flight.saturating_sub(1);
            if st.in_flight == 0 {
                st.idle_since = Instant::now();
                st.first_byte = None;
            }
        }
        self.activity.all_in_flight.fetch_sub(1, Ordering::Relaxed);
        self.activity.changed.notify_waiters();
    }
}

/// A response body that keeps its request in flight until hyper has written (or dropped) it.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The router as a hyper service for one connection.
#[derive(Clone)]
struct ConnService {
    router: Router,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin_request();
        let router = self.router.clone();
        Box::pin(async move {
            let resp = router.oneshot(req.map(Body::new)).await?;
            Ok(resp.map(|inner| Body::new(TrackedBody { inner, _in_flight: in_flight })))
        })
    }
}

/// The socket, noting when bytes arrive while no request is in flight.
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Serves one connection until the client closes it, a timeout closes it, or shutdown does.
pub(crate) fn serve_connection(
    stream: TcpStream,
    router: Router,
    timeouts: Timeouts,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    stopping: watch::Receiver<bool>,
    all_in_flight: Arc<AtomicUsize>,
) -> impl Future<Output = ()> + Send + 'static {
    let _ = stream.set_nodelay(true);
    let activity = Activity::new(all_in_flight);
    let io = TokioIo::new(Watched { io: stream, activity: activity.clone() });
    let service = ConnService { router, activity: activity.clone() };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // hyper's own timer runs from the moment it waits for a head (also while idle); it is
        // only a backstop here, the watcher applies the two timeouts precisely.
        .header_read_timeout(timeouts.header_read + timeouts.keep_alive)
        .keep_alive(true)
        .serve_connection(io, service);
    let conn = graceful.watch(conn);
    async move {
        tokio::select! {
            r = conn => {
                if let Err(e) = r {
                    tracing::debug!("connection ended: {e}");
                }
            }
            why = activity.expired(timeouts, stopping) => {
                tracing::debug!(?why, "closing connection");
            }
        }
    }
}
