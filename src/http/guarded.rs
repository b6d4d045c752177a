//! The guard around each callback connection: its phase (idle, reading a head, busy), the head
//! deadline, the head size bound, and eviction of an idle connection when a newcomer needs its
//! slot.
//!
//! - A request head must be complete within the header timeout: for a connection's first
//!   request counted from accept (a silent connection holds its slot no longer than that), for
//!   later ones from the head's first byte (between requests the idle timeout applies).
//! - A head larger than [`MAX_HEAD_BYTES`] is answered 431 and the connection closed.
//! - An idle connection (no byte of a request pending) asked to make room reads as closed, and
//!   hyper ends it cleanly.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::ingest::Rejection;
use crate::tencent::callback::reply;

/// The largest request head (request line and headers) a connection may send.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Connection phases.
const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;

/// What the accept loop, the service and the IO wrapper share about one connection.
pub(super) struct ConnState {
    phase: AtomicU8,
    /// Requests handed to the service so far: a new value starts a new head's accounting.
    requests: AtomicU64,
    /// When the connection last became idle, in ms of the listener's clock.
    idle_since_ms: AtomicU64,
    evict: AtomicBool,
    waker: AtomicWaker,
    /// The head was over the bound and answered 431 here (hyper never saw it whole).
    head_too_large: AtomicBool,
}

impl ConnState {
    pub(super) fn new(now_ms: u64) -> ConnState {
        ConnState {
            phase: AtomicU8::new(IDLE),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(now_ms),
            evict: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            head_too_large: AtomicBool::new(false),
        }
    }

    /// The head was parsed and the request handed to the service.
    pub(super) fn set_busy(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.phase.store(BUSY, Ordering::Relaxed);
    }

    /// The answer is ready: the connection waits for its next request.
    pub(super) fn set_idle(&self, now_ms: u64) {
        self.idle_since_ms.store(now_ms, Ordering::Relaxed);
        self.phase.store(IDLE, Ordering::Relaxed);
    }

    /// Since when the connection has been idle, if it is (no byte of a request pending).
    pub(super) fn idle_since(&self) -> Option<u64> {
        (self.phase.load(Ordering::Relaxed) == IDLE && !self.evict.load(Ordering::Relaxed))
            .then(|| self.idle_since_ms.load(Ordering::Relaxed))
    }

    /// Asks an idle connection to close (it reads as ended at its next poll).
    pub(super) fn evict(&self) {
        self.evict.store(true, Ordering::Relaxed);
        self.waker.wake();
    }

    pub(super) fn head_too_large(&self) -> bool {
        self.head_too_large.load(Ordering::Relaxed)
    }
}

/// A connection's stream (TCP, or TLS and PROXY-protocol layers over it) that enforces the head
/// deadline and size of its connection.
pub(super) struct GuardedIo<S = TcpStream> {
    inner: S,
    state: Arc<ConnState>,
    head_timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    armed: bool,
    /// The current head's length so far, whether its end (an empty line) was seen, the last
    /// three bytes before this read (an end can straddle two reads), and which request it is.
    head_bytes: usize,
    head_done: bool,
    tail: [u8; 3],
    request: u64,
    /// The canned 431 answer still to be written, once the head was found too large.
    refusal: Option<Bytes>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> GuardedIo<S> {
    /// Starts the first head's deadline now: at accept (after the TLS handshake, with TLS).
    pub(super) fn new(inner: S, state: Arc<ConnState>, head_timeout: Duration) -> GuardedIo<S> {
        GuardedIo {
            inner,
            state,
            head_timeout,
            deadline: Box::pin(tokio::time::sleep(head_timeout)),
            armed: true,
            head_bytes: 0,
            head_done: false,
            tail: [0; 3],
            request: 0,
            refusal: None,
        }
    }

    /// Writes as much of the 431 answer as the socket takes now, then fails the read: hyper
    /// drops the connection. The answer is small, so it fits the socket's send buffer.
    fn refuse_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let answer = self.refusal.get_or_insert_with(|| {
            self.state.head_too_large.store(true, Ordering::Relaxed);
            head_too_large_answer()
        });
        while !answer.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, answer) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    let _ = answer.split_to(n);
                }
                _ => break,
            }
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request head larger than the limit",
        )))
    }
}

/// Where the head ends in `data` (the byte after its empty line), given the three bytes read
/// before it; `None` when it does not end here.
fn head_end(tail: [u8; 3], data: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', data).find_map(|i| {
        // The three bytes before this '\n', from `data` or from the previous read.
        let before = |back: usize| -> u8 {
            if i >= back {
                data[i - back]
            } else {
                tail[3 - (back - i)]
            }
        };
        (before(1) == b'\r' && before(2) == b'\n' && before(3) == b'\r').then_some(i + 1)
    })
}

/// `HTTP/1.1 431` with a Tencent-format FAIL body and `Connection: close`.
fn head_too_large_answer() -> Bytes {
    let rejection = Rejection::HeadTooLarge(MAX_HEAD_BYTES);
    let body = reply::fail(rejection.error_code(), &rejection.to_string());
    let head = format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut answer = head.into_bytes();
    answer.extend_from_slice(&body);
    Bytes::from(answer)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refusal.is_some() {
            return this.refuse_head(cx);
        }
        let request = this.state.requests.load(Ordering::Relaxed);
        if request != this.request {
            // A request was handed over since the last read: a new head begins.
            this.request = request;
            this.head_bytes = 0;
            this.head_done = false;
            this.tail = [0; 3];
            this.armed = false;
        }
        let phase = this.state.phase.load(Ordering::Relaxed);
        if phase == BUSY {
            this.armed = false;
        } else {
            if phase == IDLE && this.state.evict.load(Ordering::Relaxed) {
                // End of stream while idle: hyper closes the connection cleanly.
                return Poll::Ready(Ok(()));
            }
            if this.armed && this.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not complete within the header read timeout",
                )));
            }
            this.state.waker.register(cx.waker());
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if matches!(result, Poll::Ready(Ok(()))) && read > 0 && phase != BUSY {
            if !this.head_done {
                let data = &buf.filled()[before..];
                match head_end(this.tail, data) {
                    Some(end) => {
                        this.head_bytes += end;
                        this.head_done = true;
                    }
                    None => {
                        this.head_bytes += read;
                        let keep = data.len().min(3);
                        let mut tail = [0u8; 6];
                        tail[..3].copy_from_slice(&this.tail);
                        tail[3..3 + keep].copy_from_slice(&data[data.len() - keep..]);
                        this.tail.copy_from_slice(&tail[keep..keep + 3]);
                    }
                }
                if this.head_bytes > MAX_HEAD_BYTES {
                    // Not handed to hyper: the refusal is all this connection gets.
                    buf.set_filled(before);
                    return this.refuse_head(cx);
                }
            }
            if this
                .state
                .phase
                .compare_exchange(IDLE, HEAD, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
                && !this.armed
            {
                // The first byte of a later request's head: start its clock. Registering the
                // timer with this task makes a client that then goes silent wake us at the
                // deadline.
                this.armed = true;
                let now = Instant::now();
                let deadline = now.checked_add(this.head_timeout).unwrap_or(now);
                this.deadline.as_mut().reset(deadline);
                let _ = this.deadline.as_mut().poll(cx);
            }
        }
        result
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_head_is_found_within_and_across_reads() {
        assert_eq!(
            head_end([0; 3], b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"),
            Some(27)
        );
        assert_eq!(head_end([0; 3], b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        // Split after "\r\n\r": the '\n' completes it.
        assert_eq!(head_end(*b"\r\n\r", b"\nbody"), Some(1));
        assert_eq!(head_end(*b"x\r\n", b"\r\nbody"), Some(2));
        assert_eq!(head_end(*b"xx\r", b"\n\r\nbody"), Some(3));
        assert_eq!(head_end(*b"abc", b"\n\r\n"), None);
    }
}
