//! The HTTP/1.1 server loop of every listener (the worker's, and the broker's
//! `--metrics-listen`): hyper's connection builder under the axum router, with
//! the bounds `axum::serve` does not offer.
//!
//! - At most `max_connections` connections are open at once; past that,
//!   accepting waits until one closes (new connections queue in the kernel's
//!   backlog instead of taking file descriptors).
//! - A request's head (request line and headers) must arrive within
//!   `header_timeout` of its first byte, however slowly it trickles in
//!   (slowloris); then the connection is closed.
//! - A keep-alive connection with no request for `idle_timeout` is closed.
//! - An accept error that concerns the listener (EMFILE, ENFILE, ENOBUFS,
//!   ENOMEM) is logged once a minute at most, not once per attempt, and
//!   accepting pauses briefly instead of spinning.
//! - On shutdown the listener closes, idle connections close, and requests
//!   in flight finish (the caller bounds how long that may take).
//!
//! hyper's own `header_read_timeout` is not used: its timer also runs while
//! a keep-alive connection waits for its next request, so it cannot tell a
//! slow head from an idle connection.
use crate::throttle::Throttle;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

/// How long accepting pauses after an error that concerns the listener.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// An accept error is logged at most once in this long.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// A request's head must arrive within this long of its first byte.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting, closes idle connections and returns once every request in
/// flight is answered.
pub async fn run(
    listener: TcpListener,
    app: Router,
    bounds: Bounds,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a sender; recv() ends when all are gone.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let accept_errors = Throttle::new(ACCEPT_LOG_EVERY);
    let open = Arc::new(Semaphore::new(bounds.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = open.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let stop = stop_rx.clone();
                let alive = alive_tx.clone();
                tokio::spawn(async move {
                    connection(stream, app, bounds, stop).await;
                    drop((alive, permit));
                });
            }
            // The peer gave up before it was accepted: nothing to report.
            Err(err) if is_connection_error(&err) => {}
            Err(err) => {
                match accept_errors.ready() {
                    Some(0) => tracing::error!(
                        "cannot accept connections: {err}; retrying every {ACCEPT_PAUSE:?} (logged at most once a minute)"
                    ),
                    Some(held) => tracing::error!(
                        "cannot accept connections: {err} ({} times since the last report); retrying every {ACCEPT_PAUSE:?}",
                        held + 1
                    ),
                    None => {}
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(ACCEPT_PAUSE) => {}
                }
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
}

fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    ) || matches!(err.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}

/// Where a connection is, for the watchdog.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for the first byte of a request: closed at the deadline.
    Idle { deadline: Instant },
    /// A request's head has begun: closed at the deadline.
    Head { deadline: Instant },
    /// A request is being answered: no deadline of ours.
    Busy,
}

struct Tracker {
    phase: Mutex<Phase>,
    bounds: Bounds,
    /// Wakes the watchdog when a head begins (its deadline is sooner).
    head_began: tokio::sync::Notify,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        // A poisoned lock only means a panic elsewhere; the phase is still a plain value.
        crate::lock(&self.phase)
    }

    fn idle(&self) {
        *self.lock() = Phase::Idle {
            deadline: Instant::now() + self.bounds.idle_timeout,
        };
    }

    /// Bytes arrived: the first byte of a request starts the head's clock.
    fn read(&self) {
        let mut phase = self.lock();
        if let Phase::Idle { .. } = *phase {
            *phase = Phase::Head {
                deadline: Instant::now() + self.bounds.header_timeout,
            };
            self.head_began.notify_one();
        }
    }

    /// Bytes left for the peer: an answer still being written is not idle.
    fn wrote(&self) {
        let mut phase = self.lock();
        if let Phase::Idle { .. } = *phase {
            *phase = Phase::Idle {
                deadline: Instant::now() + self.bounds.idle_timeout,
            };
        }
    }

    fn busy(&self) {
        *self.lock() = Phase::Busy;
    }

    /// When to look again, or `None` if the connection is past its deadline.
    fn next_check(&self) -> Option<Instant> {
        let now = Instant::now();
        match *self.lock() {
            Phase::Idle { deadline } | Phase::Head { deadline } if deadline <= now => None,
            Phase::Idle { deadline } | Phase::Head { deadline } => Some(deadline),
            Phase::Busy => Some(now + self.bounds.header_timeout.min(self.bounds.idle_timeout)),
        }
    }
}

async fn connection(
    stream: TcpStream,
    app: Router,
    bounds: Bounds,
    mut stop: watch::Receiver<bool>,
) {
    let tracker = Arc::new(Tracker {
        phase: Mutex::new(Phase::Busy),
        bounds,
        head_began: tokio::sync::Notify::new(),
    });
    tracker.idle();
    let io = TokioIo::new(Tracked {
        inner: stream,
        tracker: tracker.clone(),
    });
    let service_tracker = tracker.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let app = app.clone();
        let tracker = service_tracker.clone();
        tracker.busy();
        async move {
            let response = app.oneshot(request).await;
            tracker.idle();
            response
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let check = tracker.next_check();
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%err, "HTTP connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tracker.head_began.notified() => {}
            _ = sleep_until(check) => {
                if tracker.next_check().is_none() {
                    tracing::debug!("closing an HTTP connection past its header or idle bound");
                    return;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

pin_project_lite::pin_project! {
    /// The connection's socket, telling the tracker when bytes move.
    struct Tracked {
        #[pin]
        inner: TcpStream,
        tracker: Arc<Tracker>,
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.tracker.read();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.tracker.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.tracker.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
