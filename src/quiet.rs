//! A Unix stream the runtime wakes for reading only.
//!
//! tokio registers every `UnixStream` for both directions, edge-triggered.
//! On a Unix socket the kernel signals write space to the writer each time
//! the peer reads anything (`unix_write_space`), however empty the buffer
//! already was: every acknowledgement the broker reads wakes the worker that
//! sent it, and every revision a worker reads wakes the broker, for nothing
//! to write. With a revision fanned out to N workers that is N extra
//! wake-ups on each side, competing for the CPUs with the fan-out itself.
//!
//! [`QuietStream`] is registered for reading only. A write is tried at once
//! (these sockets have room for the small messages they carry); only once
//! the kernel says it would block is a duplicate of the descriptor
//! registered for writing, and kept: a connection that filled its socket
//! buffer once (a large document) is likely to again, and registering anew
//! each time would cost more system calls than the wake-ups it saves.
use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// See the module's documentation.
#[derive(Debug)]
pub struct QuietStream {
    read: AsyncFd<UnixStream>,
    /// The same socket, registered for write readiness since a write first
    /// had to wait for room.
    write: Option<AsyncFd<UnixStream>>,
}

impl QuietStream {
    /// Takes over a connected stream (made non-blocking here).
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self {
            read: register(stream, Interest::READABLE)?,
            write: None,
        })
    }

    /// Connects to `path`.
    pub async fn connect(path: impl AsRef<std::path::Path>) -> io::Result<Self> {
        let stream = tokio::net::UnixStream::connect(path).await?;
        Self::from_tokio(stream)
    }

    /// Takes over a tokio stream (its registration is dropped).
    pub fn from_tokio(stream: tokio::net::UnixStream) -> io::Result<Self> {
        Self::new(stream.into_std()?)
    }

    /// The underlying socket, for reading its options.
    pub fn get_ref(&self) -> &UnixStream {
        self.read.get_ref()
    }

    /// Writes with `write` at once, or when the socket has room again.
    fn poll_with(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&UnixStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.write.is_none() {
                match write(self.read.get_ref()) {
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        let dup = self.read.get_ref().try_clone()?;
                        self.write = Some(register(dup, Interest::WRITABLE)?);
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    done => return Poll::Ready(done),
                }
            }
            let Some(waiting) = &self.write else {
                continue;
            };
            let written = {
                let mut guard = ready!(waiting.poll_write_ready(cx))?;
                guard.try_io(|fd| write(fd.get_ref()))
            };
            match written {
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => {}
                Ok(done) => return Poll::Ready(done),
                Err(_would_block) => {}
            }
        }
    }
}

/// `stream`, registered with the runtime for `interest` only.
fn register(stream: UnixStream, interest: Interest) -> io::Result<AsyncFd<UnixStream>> {
    // SAFETY: a `UnixStream` owns its descriptor: it stays open, and
    // `as_raw_fd` returns it, for as long as the stream lives, which is as
    // long as the `AsyncFd` that owns it.
    unsafe { AsyncFd::register_with_interest(stream, interest) }.map_err(io::Error::from)
}

impl AsyncRead for QuietStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.read.poll_read_ready(cx))?;
            // Into the buffer's uninitialised room, as tokio's own streams
            // read: initialising it first would clear the whole read buffer
            // (8 KiB and more) for every few bytes read.
            // SAFETY: `read(2)` writes at most `unfilled.len()` bytes into
            // the memory it is given, and never reads it.
            let unfilled = unsafe { buf.unfilled_mut() };
            let room = unfilled.len();
            let n = unsafe {
                libc::read(
                    guard.get_inner().as_raw_fd(),
                    unfilled.as_mut_ptr().cast(),
                    room,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        continue;
                    }
                    io::ErrorKind::Interrupted => continue,
                    _ => return Poll::Ready(Err(err)),
                }
            };
            // A short read emptied the socket (as tokio assumes for its own
            // streams): wait for the next readiness rather than read again
            // only to be told it would block.
            if n > 0 && n < room {
                guard.clear_ready();
            }
            // SAFETY: `read(2)` initialised the first `n` bytes.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncWrite for QuietStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_with(cx, |mut fd| fd.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_with(cx, |mut fd| fd.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let done = self.read.get_ref().shutdown(std::net::Shutdown::Write);
        Poll::Ready(match done {
            Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// More than a socket buffer holds goes through (the writer waits for
    /// room, registered for it only then), and reads see every byte.
    #[tokio::test]
    async fn a_write_larger_than_the_socket_buffer_arrives_whole() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (QuietStream::new(a).unwrap(), QuietStream::new(b).unwrap());
        let sent: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.unwrap();
            a.shutdown().await.unwrap();
            a
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert!(
            got == expected,
            "{} bytes read of {}",
            got.len(),
            expected.len()
        );
        let mut a = writer.await.unwrap();
        // And back the other way, vectored.
        let parts = [IoSlice::new(b"ab"), IoSlice::new(b"cd")];
        let n = b.write_vectored(&parts).await.unwrap();
        let mut back = vec![0; n];
        a.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, &b"abcd"[..n]);
    }
}
