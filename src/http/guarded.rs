//! The slow-loris guard: a TCP stream whose reads fail once a request head has taken longer
//! than the header deadline since its first byte.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Connection phases, shared by the IO wrapper and the service.
pub(super) const IDLE: u8 = 0;
const HEAD: u8 = 1;
pub(super) const BUSY: u8 = 2;

/// A TCP stream that fails its reads once a request head has taken longer than the deadline
/// since its first byte.
pub(super) struct GuardedIo {
    inner: TcpStream,
    phase: Arc<AtomicU8>,
    head_timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    armed: bool,
}

impl GuardedIo {
    pub(super) fn new(inner: TcpStream, phase: Arc<AtomicU8>, head_timeout: Duration) -> GuardedIo {
        GuardedIo {
            inner,
            phase,
            head_timeout,
            deadline: Box::pin(tokio::time::sleep(head_timeout)),
            armed: false,
        }
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.armed {
            if this.phase.load(Ordering::Relaxed) != HEAD {
                this.armed = false;
            } else if this.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not complete within the header read timeout",
                )));
            }
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && this
                .phase
                .compare_exchange(IDLE, HEAD, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // The first byte of a new request head: start its clock. Registering the timer
            // with this task makes a client that then goes silent wake us at the deadline.
            this.armed = true;
            let now = Instant::now();
            let deadline = now.checked_add(this.head_timeout).unwrap_or(now);
            this.deadline.as_mut().reset(deadline);
            let _ = this.deadline.as_mut().poll(cx);
        }
        result
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
