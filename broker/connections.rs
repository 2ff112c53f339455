//! Accepting connections: at most `--max-connections` at once, the peer's
//! credentials read once, and only connections that open with the HTTP/2
//! preface within `--handshake-timeout` are handed to the gRPC server.
//! Anything else is closed: silence, random bytes, or an HTTP/1.1 request
//! (which is told in one line what this socket is).
use crate::peer::Peer;
use argsbroker::quiet::QuietStream;
use argsbroker::throttle::Throttle;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// What every HTTP/2 client sends first (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// File descriptors kept for everything but connections (the args file,
/// history, the watcher, the runtime).
const FD_RESERVE: u64 = 64;

/// How long to pause after a failed accept (EMFILE would fail at once again).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often the socket file is checked for having been deleted.
const SOCKET_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Checks that the socket file is still at its path; returns a new listener
/// when it had to be bound again (someone deleted the file).
pub type Rebind = Box<dyn FnMut() -> Option<std::os::unix::net::UnixListener> + Send>;

/// At most one warning of a kind this often, however hard a flood pushes.
const WARN_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

/// Raises the soft limit on open files to the hard limit, and lowers
/// `max_connections` if the limit still cannot hold that many.
pub fn fit_to_fd_limit(max_connections: usize) -> usize {
    let Some(limit) = argsbroker::sys::raise_open_file_limit() else {
        return max_connections;
    };
    let room = limit.saturating_sub(FD_RESERVE);
    if (max_connections as u64) <= room {
        return max_connections;
    }
    let fitted = room.max(1) as usize;
    tracing::warn!(
        "--max-connections {max_connections} is more than the open-file limit allows ({}); serving at most {fitted} connections",
        limit
    );
    fitted
}

/// Accepts connections on `listener` in a task of its own; the stream yields
/// those that spoke HTTP/2 in time. The task ends when the stream is dropped.
pub fn incoming(
    listener: UnixListener,
    limits: Limits,
    rebind: Option<Rebind>,
) -> (ReceiverStream<io::Result<Connection>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(accept_loop(listener, limits, rebind, tx));
    (ReceiverStream::new(rx), task)
}

async fn accept_loop(
    mut listener: UnixListener,
    limits: Limits,
    mut rebind: Option<Rebind>,
    tx: mpsc::Sender<io::Result<Connection>>,
) {
    let mut socket_check = tokio::time::interval(SOCKET_CHECK_EVERY);
    socket_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (full, failing) = (Throttle::new(WARN_EVERY), Throttle::new(WARN_EVERY));
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if full.ready().is_some() {
                    tracing::warn!(
                        "{} connections are open (--max-connections): new ones wait until one closes",
                        limits.max_connections
                    );
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    if failing.ready().is_some() {
                        tracing::warn!(%err, "cannot accept a connection");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = socket_check.tick(), if rebind.is_some() => {
                let new = rebind.as_mut().and_then(|check| check());
                if let Some(new) = new.and_then(|l| UnixListener::from_std(l).ok()) {
                    listener = new;
                }
                continue;
            }
            _ = tx.closed() => return,
        };
        let peer = match Peer::of(&stream) {
            Ok(peer) => peer,
            Err(err) => {
                tracing::warn!(%err, "cannot read a connection's peer credentials; closing it");
                continue;
            }
        };
        tracing::debug!(pid = ?peer.pid, uid = peer.uid, gid = peer.gid, groups = ?peer.groups, "connection");
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(limits.handshake_timeout, handshake(stream)).await {
                Ok(Ok((stream, replay))) => {
                    // Woken for reading only (see `QuietStream`).
                    let stream = match QuietStream::from_tokio(stream) {
                        Ok(stream) => stream,
                        Err(err) => {
                            tracing::debug!(pid = ?peer.pid, %err, "cannot take over a connection; closing it");
                            return;
                        }
                    };
                    let connection = Connection {
                        stream,
                        replay,
                        replayed: 0,
                        peer,
                        _permit: permit,
                    };
                    let _ = tx.send(Ok(connection)).await;
                }
                Ok(Err(why)) => {
                    tracing::debug!(pid = ?peer.pid, uid = peer.uid, "closed a connection: {why}")
                }
                Err(_) => tracing::debug!(
                    pid = ?peer.pid,
                    uid = peer.uid,
                    "closed a connection that sent no HTTP/2 preface within {:?}",
                    limits.handshake_timeout
                ),
            }
        });
    }
}

/// Why a connection was closed before it reached the gRPC server.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("it closed before speaking")]
    Closed,
    #[error("it sent an HTTP/1.1 request; answered 505")]
    Http1,
    #[error("it did not open with the HTTP/2 preface")]
    NotHttp2,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Reads until the bytes are the HTTP/2 preface (returned, with whatever
/// came after it, to be replayed to the server) or cannot become it.
async fn handshake(mut stream: UnixStream) -> Result<(UnixStream, Vec<u8>), Refused> {
    let mut seen = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    loop {
        let room = 64 - seen.len();
        let n = stream.read(&mut buf[..room]).await?;
        if n == 0 {
            return Err(Refused::Closed);
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.starts_with(PREFACE) {
            return Ok((stream, seen));
        }
        if PREFACE.starts_with(&seen) {
            continue;
        }
        match http1_method(&seen) {
            Some(true) => {
                let reply = async {
                    stream.write_all(http1_reply().as_bytes()).await?;
                    stream.shutdown().await
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), reply).await;
                return Err(Refused::Http1);
            }
            None if seen.len() < 64 => continue,
            _ => return Err(Refused::NotHttp2),
        }
    }
}

/// Whether `seen` starts like an HTTP/1 request line (`GET `, `POST `...):
/// `None` while it is only capital letters, too short to tell.
fn http1_method(seen: &[u8]) -> Option<bool> {
    let letters = seen.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if letters == seen.len() {
        return (letters > 8).then_some(false);
    }
    Some((3..=8).contains(&letters) && seen[letters] == b' ')
}

/// The one answer an HTTP/1 client gets; nothing of its request is echoed.
const HTTP1_REPLY: &str = "This is argsbroker's socket: it speaks gRPC (HTTP/2) only. \
Use `broker get --socket PATH`, a gRPC client, or a worker (which serves the args over HTTP/1.1).\n";

fn http1_reply() -> String {
    format!(
        "HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{HTTP1_REPLY}",
        HTTP1_REPLY.len()
    )
}

/// An accepted connection that spoke HTTP/2: its stream with the bytes
/// already read put back in front, the peer, and its place in the limit.
pub struct Connection {
    stream: QuietStream,
    replay: Vec<u8>,
    replayed: usize,
    peer: Peer,
    _permit: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replayed < this.replay.len() {
            let rest = &this.replay[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            if this.replayed == this.replay.len() {
                this.replay = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_http1_from_noise() {
        assert_eq!(http1_method(b"G"), None);
        assert_eq!(http1_method(b"GET"), None);
        assert_eq!(http1_method(b"GET / HTTP/1.1\r\n"), Some(true));
        assert_eq!(http1_method(b"OPTIONS * HTTP/1.1"), Some(true));
        assert_eq!(http1_method(b"GE\x00"), Some(false));
        assert_eq!(http1_method(b"ABCDEFGHIJ"), Some(false));
        assert_eq!(http1_method(b"\x16\x03\x01"), Some(false));
    }

    #[test]
    fn the_http1_reply_has_the_right_length() {
        let reply = http1_reply();
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );
    }
}
