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
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::core::deliver::Deliver;
use crate::ingest::{Handler, Rejection};

pub mod admin;
pub mod egress;
pub mod guarded;
pub mod metrics;
pub mod proxy;
pub mod source;
pub mod tls;

use guarded::{ConnState, GuardedIo};
use metrics::{ListenerMetrics, Refusal};
use source::{AllowList, TrustedProxies};
use tls::Tls;

/// Limits of the callback listener's connections, and who may open them.
#[derive(Clone)]
pub struct ConnectionLimits {
    /// The clients served (`--allow-source`); `None`: every client, and nothing checked.
    pub sources: Option<AllowList>,
    /// Whose PROXY header and `X-Forwarded-For` name the client (`--trusted-proxy`); `None`:
    /// the client is always the TCP peer.
    pub trusted_proxies: Option<TrustedProxies>,
    /// TLS in the process (`--tls-cert`); `None`: plain HTTP (behind an ingress that
    /// terminates TLS).
    pub tls: Option<Arc<Tls>>,
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

/// A connection's stream once opened through TLS or a PROXY header (a plain TCP connection
/// keeps its own type: the common path pays for no indirection).
trait Opened: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Opened for T {}

/// What every connection task of the listener shares.
struct Listener<D> {
    handler: Arc<Handler<D>>,
    limits: ConnectionLimits,
    metrics: ListenerMetrics,
    open: Arc<OpenConnections>,
    builder: http1::Builder,
}

/// Serves callbacks on `listener` until `shutdown` resolves, then stops accepting and waits (at
/// most `limits.drain_timeout`) for the requests in flight to be answered.
pub async fn serve<D: Deliver>(
    listener: TcpListener,
    handler: Arc<Handler<D>>,
    limits: ConnectionLimits,
    metrics: ListenerMetrics,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper runs this timer from the end of a response to the end of the next head: it is
        // the idle timeout; GuardedIo enforces the shorter head deadline.
        .header_read_timeout(limits.idle_timeout + limits.header_read_timeout)
        .max_buf_size(MAX_CONNECTION_BUFFER)
        .keep_alive(true);
    let reloads = limits
        .tls
        .clone()
        .map(|tls| tokio::spawn(tls.watch(metrics.clone())));
    let drain_timeout = limits.drain_timeout;
    let plain = limits.tls.is_none() && limits.trusted_proxies.is_none();
    let shared = Arc::new(Listener {
        handler: handler.clone(),
        limits,
        metrics,
        open: Arc::new(OpenConnections::default()),
        builder,
    });
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
                if shared.open.evict_oldest_idle() {
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
        let watcher = graceful.watcher();
        if plain {
            tokio::spawn(
                shared
                    .clone()
                    .serve_connection(stream, peer, permit, watcher),
            );
        } else {
            let shared = shared.clone();
            tokio::spawn(async move {
                match shared.open_connection(stream, peer).await {
                    Ok((io, client)) => shared.serve_connection(io, client, permit, watcher).await,
                    Err(Some(refusal)) => {
                        tracing::debug!(%peer, reason = refusal.label(), "connection refused");
                        shared.metrics.refused(refusal);
                    }
                    Err(None) => {}
                }
            });
        }
    }

    drop(listener);
    if let Some(reloads) = reloads {
        reloads.abort();
    }
    let inflight = handler.metrics().inflight_now();
    tracing::info!(
        inflight,
        timeout = ?drain_timeout,
        "callback listener closed; draining requests in flight"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!(drained = inflight, "all callback connections closed"),
        _ = tokio::time::sleep(drain_timeout) => {
            tracing::warn!(
                still_inflight = handler.metrics().inflight_now(),
                "drain timeout reached; cutting the remaining connections"
            );
        }
    }
}

impl<D: Deliver> Listener<D> {
    /// A trusted proxy's PROXY header, then the TLS handshake, within the header read timeout:
    /// the stream to serve and its client. `Err(None)`: the peer closed before sending
    /// anything (a TCP health check), not counted.
    async fn open_connection(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<(Box<dyn Opened>, SocketAddr), Option<Refusal>> {
        let opening = async {
            let (client, stream) = match &self.limits.trusted_proxies {
                Some(proxies) if proxies.trusts(peer.ip()) => {
                    let (header, rest) = proxy::read_header(&mut stream)
                        .await
                        .map_err(proxy_refusal)?;
                    let client = match header {
                        proxy::Header::Client(client) => client,
                        proxy::Header::Absent | proxy::Header::Local => peer,
                    };
                    (client, proxy::Rewind::new(rest, stream))
                }
                _ => (peer, proxy::Rewind::new(bytes::Bytes::new(), stream)),
            };
            let io: Box<dyn Opened> = match &self.limits.tls {
                Some(tls) => Box::new(tls.acceptor().accept(stream).await.map_err(|err| {
                    (err.kind() != std::io::ErrorKind::UnexpectedEof)
                        .then(|| tls::handshake_refusal(&err))
                })?),
                None => Box::new(stream),
            };
            Ok((io, client))
        };
        tokio::time::timeout(self.limits.header_read_timeout, opening)
            .await
            .unwrap_or(Err(Some(Refusal::Timeout)))
    }

    /// Serves one connection's requests until it ends. `client` is the TCP peer or whom a
    /// trusted proxy's PROXY header named.
    async fn serve_connection<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
        self: Arc<Self>,
        stream: S,
        client: SocketAddr,
        permit: OwnedSemaphorePermit,
        watcher: Watcher,
    ) {
        let (id, state) = self.open.add();
        let io = GuardedIo::new(stream, state.clone(), self.limits.header_read_timeout);
        // A client outside --allow-source gets its refusal as soon as its head is parsed;
        // behind a trusted proxy, each request says who its client is.
        let allowed = self.allows(client);
        let service = {
            let listener = self.clone();
            let state = state.clone();
            service_fn(move |request: http::Request<hyper::body::Incoming>| {
                // Called as soon as the head is parsed: the head deadline no longer applies.
                state.set_busy();
                let (client, allowed) = match &listener.limits.trusted_proxies {
                    None => (client, allowed),
                    Some(proxies) => {
                        let client = proxies.client(client, request.headers());
                        (client, listener.allows(client))
                    }
                };
                let listener = listener.clone();
                let state = state.clone();
                async move {
                    let handler = &listener.handler;
                    let response = if allowed {
                        handler.handle(request, client).await
                    } else {
                        handler.refuse(&Rejection::SourceNotAllowed(client.ip()), client)
                    };
                    state.set_idle(listener.open.now_ms());
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let connection = watcher.watch(self.builder.serve_connection(TokioIo::new(io), service));
        let gauge = self.handler.metrics().connection();
        if let Err(err) = connection.await {
            tracing::debug!(%client, error = %err, "connection ended with an error");
        }
        if state.head_too_large() {
            self.handler.refused_before_the_handler(
                &Rejection::HeadTooLarge(guarded::MAX_HEAD_BYTES),
                client,
            );
        }
        self.open.remove(id);
        drop(gauge);
        drop(permit);
    }

    fn allows(&self, client: SocketAddr) -> bool {
        self.limits
            .sources
            .as_ref()
            .is_none_or(|sources| sources.allows(client.ip()))
    }
}

/// A PROXY header that cannot be read is refused; a connection closed before its first byte
/// is not counted.
fn proxy_refusal(err: std::io::Error) -> Option<Refusal> {
    (err.kind() != std::io::ErrorKind::UnexpectedEof).then_some(Refusal::ProxyHeader)
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
