//! HTTP: the callback listener (here), the slow-loris guard ([`guarded`]) and the admin
//! listener ([`admin`]).
//!
//! The callback listener: hyper 1.x over HTTP/1.1 with keep-alive (Tencent keeps connections
//! open), one task per connection, a bound on open connections, deadlines for slow clients, and
//! graceful shutdown.
//!
//! Slow clients are bounded at three points: the request head must arrive within
//! `header_read_timeout` of its first byte (enforced by [`GuardedIo`]), the body within the
//! body-read timeout (in [`crate::ingest`]), and a connection with no request in progress is closed
//! after `idle_timeout` (hyper's header-read timer, which runs from the end of the previous
//! response). Idle and header deadlines are separate so that keep-alive connections can stay
//! open long (closing them races with the client's next request) while a slow-loris head is cut
//! short.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::deliver::Deliver;
use crate::ingest::Handler;

pub mod admin;
mod guarded;

use guarded::{GuardedIo, BUSY, IDLE};

/// Limits of the callback listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long in-flight requests get to finish once `shutdown` resolved.
    pub drain_timeout: Duration,
}

/// Largest read buffer of a connection: headers plus a body chunk (hyper's default is ~400 KiB;
/// this keeps the memory of many slow connections small).
const MAX_CONNECTION_BUFFER: usize = 64 * 1024;

/// Serves callbacks on `listener` until `shutdown` resolves, then stops accepting and waits (at
/// most `limits.drain_timeout`) for the requests in flight to be answered.
pub async fn serve<D: Deliver>(
    listener: TcpListener,
    handler: Arc<Handler<D>>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper runs this timer from the end of a response to the end of the next head: it is
        // the idle timeout; GuardedIo enforces the shorter head deadline.
        .header_read_timeout(limits.idle_timeout + limits.header_read_timeout)
        .max_buf_size(MAX_CONNECTION_BUFFER)
        .keep_alive(true);
    tokio::pin!(shutdown);

    loop {
        // At the connection limit, stop accepting: new connections wait in the kernel's backlog
        // instead of costing memory here.
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener, "callback") => match accepted {
                Some(accepted) => accepted,
                None => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let phase = Arc::new(AtomicU8::new(IDLE));
        let io = GuardedIo::new(stream, phase.clone(), limits.header_read_timeout);
        let handler_for_service = handler.clone();
        let service = service_fn(move |request| {
            // Called as soon as the head is parsed: the head deadline no longer applies.
            phase.store(BUSY, Ordering::Relaxed);
            let handler = handler_for_service.clone();
            let phase = phase.clone();
            async move {
                let response = handler.handle(request, peer).await;
                phase.store(IDLE, Ordering::Relaxed);
                Ok::<_, Infallible>(response)
            }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        let open = handler.metrics().connection();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            drop(open);
            drop(permit);
        });
    }

    drop(listener);
    let inflight = handler.metrics().inflight_now();
    tracing::info!(
        inflight,
        timeout = ?limits.drain_timeout,
        "callback listener closed; draining requests in flight"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!(drained = inflight, "all callback connections closed"),
        _ = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!(
                still_inflight = handler.metrics().inflight_now(),
                "drain timeout reached; cutting the remaining connections"
            );
        }
    }
}

/// Accepts one connection; on an error (typically EMFILE) logs it and backs off briefly
/// instead of spinning, returning `None`. Shared with the admin listener.
pub(crate) async fn accept(
    listener: &TcpListener,
    which: &'static str,
) -> Option<(TcpStream, std::net::SocketAddr)> {
    match listener.accept().await {
        Ok(accepted) => Some(accepted),
        Err(err) => {
            tracing::warn!(listener = which, error = %err, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}
