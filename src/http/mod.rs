//! HTTP: the callback listener (here), the slow-loris guard ([`guarded`]) and the admin
//! listener ([`admin`]).
//!
//! The callback listener: hyper 1.x over HTTP/1.1 with keep-alive (Tencent keeps connections
//! open), one task per connection, a bound on open connections, deadlines for slow clients, and
//! graceful shutdown.
//!
//! Slow and idle clients are bounded at four points: a request head must arrive within
//! `header_read_timeout` (of accept for a connection's first request, of its first byte for
//! later ones) and be at most 64 KiB (both enforced by [`GuardedIo`]); the body within the
//! body-read timeout (in [`crate::ingest`]); a connection with no request in progress is closed
//! after `idle_timeout` (hyper's header-read timer, which runs from the end of the previous
//! response); and at the connection limit the connection idle the longest is closed to admit a
//! newcomer. Idle and header deadlines are separate so that keep-alive connections can stay
//! open long (closing them races with the client's next request) while a slow-loris head is cut
//! short.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::core::deliver::Deliver;
use crate::ingest::{Handler, Rejection};

pub mod admin;
pub mod guarded;
pub mod source;

use guarded::{ConnState, GuardedIo};
use source::AllowList;

/// Limits of the callback listener's connections, and who may open them.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// The peers served (`--allow-source`); `None`: every peer, and nothing checked.
    pub sources: Option<AllowList>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long in-flight requests get to finish once `shutdown` resolved.
    pub drain_timeout: Duration,
}

/// Largest read buffer of a connection: a head plus a body chunk (hyper's default is ~400 KiB;
/// this keeps the memory of many slow connections small). Heads are bounded separately, at
/// [`guarded::MAX_HEAD_BYTES`].
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
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let open = Arc::new(OpenConnections::default());
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
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener, "callback") => match accepted {
                Some(accepted) => accepted,
                None => continue,
            },
        };
        // At the connection limit, an idle connection makes room for the newcomer (a silent
        // one is the cheapest to lose: it has sent nothing); with none idle, the newcomer waits
        // and the rest wait in the kernel's backlog.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if open.evict_oldest_idle() {
                    handler.metrics().connection_evicted();
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                }
            }
        };
        let _ = stream.set_nodelay(true);
        // A peer outside --allow-source gets its refusal as soon as its head is parsed.
        let allowed = limits
            .sources
            .as_ref()
            .is_none_or(|sources| sources.allows(peer.ip()));
        let (id, state) = open.add();
        let io = GuardedIo::new(stream, state.clone(), limits.header_read_timeout);
        let service = {
            let handler = handler.clone();
            let state = state.clone();
            let open = open.clone();
            service_fn(move |request| {
                // Called as soon as the head is parsed: the head deadline no longer applies.
                state.set_busy();
                let handler = handler.clone();
                let state = state.clone();
                let open = open.clone();
                async move {
                    let response = if allowed {
                        handler.handle(request, peer).await
                    } else {
                        handler.refuse(&Rejection::SourceNotAllowed(peer.ip()), peer)
                    };
                    state.set_idle(open.now_ms());
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        let gauge = handler.metrics().connection();
        let handler = handler.clone();
        let open = open.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            if state.head_too_large() {
                handler.refused_before_the_handler(
                    &Rejection::HeadTooLarge(guarded::MAX_HEAD_BYTES),
                    peer,
                );
            }
            open.remove(id);
            drop(gauge);
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

/// The open connections, for finding an idle one to close when a newcomer needs a slot.
/// Touched at accept, close and eviction only, never per request.
struct OpenConnections {
    origin: std::time::Instant,
    next_id: AtomicU64,
    states: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Default for OpenConnections {
    fn default() -> Self {
        OpenConnections {
            origin: std::time::Instant::now(),
            next_id: AtomicU64::new(0),
            states: Mutex::new(HashMap::new()),
        }
    }
}

impl OpenConnections {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn add(&self) -> (u64, Arc<ConnState>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::new(self.now_ms()));
        self.lock().insert(id, state.clone());
        (id, state)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Asks the connection idle the longest to close; false when none is idle.
    fn evict_oldest_idle(&self) -> bool {
        let states = self.lock();
        let oldest = states
            .values()
            .filter_map(|s| s.idle_since().map(|since| (since, s)))
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, state)) => {
                state.evict();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// A failing accept (a listener shut down for reading says EINVAL at once, as one out of
    /// descriptors says EMFILE) is reported as `None` only after a pause: the admin and
    /// callback loops built on it cannot spin.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    #[allow(unsafe_code)]
    async fn a_failing_accept_backs_off() {
        use std::os::fd::AsRawFd;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // SAFETY: a plain syscall on a descriptor the listener owns and keeps open.
        assert_eq!(
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) },
            0
        );
        let started = Instant::now();
        assert!(super::accept(&listener, "test").await.is_none());
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
