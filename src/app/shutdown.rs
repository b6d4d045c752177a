//! Stopping: waiting for SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C), and the ordered stop
//! that follows, all within `--shutdown-timeout`:
//!
//! 1. readiness false at once, still serving for `--shutdown-delay` (Kubernetes takes a moment
//!    to remove the pod from its endpoints);
//! 2. the callback listener closes and requests in flight are answered (the drain);
//! 3. the delivery flushes what it buffers;
//! 4. the admin listener closes last, so probes and scrapes see the whole stop.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::core::deliver::Deliver;
use crate::ingest::Handler;

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the bridge");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How the shutdown timeout is spent: serving while not ready, draining, flushing.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub delay: Duration,
    pub drain: Duration,
    pub flush: Duration,
}

impl Budget {
    /// `spooled`: the flush is the forwarder catching up with the spool, which gets half of
    /// what is left after the delay (the rest stays in the spool for the next start).
    pub fn new(delay: Duration, total: Duration, spooled: bool) -> Budget {
        let after_delay = total.saturating_sub(delay);
        // Direct mode: the flush gets a quarter, at most 2 s: by then every answered message
        // was acked anyway; what is left are messages whose requests already got 503.
        let flush = if spooled {
            after_delay / 2
        } else {
            (after_delay / 4).min(Duration::from_secs(2))
        };
        Budget {
            delay,
            drain: after_delay - flush,
            flush,
        }
    }
}

/// A listener task and the token that stops it.
pub struct Task {
    pub stop: CancellationToken,
    pub handle: JoinHandle<()>,
}

impl Task {
    async fn stop(self, what: &'static str) {
        self.stop.cancel();
        if let Err(err) = self.handle.await {
            tracing::error!(error = %err, "{what} task failed");
        }
    }
}

/// The ordered stop described above. The callback server drains within `budget.drain` by
/// itself (it was started with that bound).
pub async fn ordered<D: Deliver>(handler: &Handler<D>, budget: Budget, server: Task, admin: Task) {
    let started = Instant::now();
    handler.start_draining();
    tracing::info!(delay = ?budget.delay, "shutting down: readiness false, still serving for the shutdown delay");
    tokio::time::sleep(budget.delay).await;
    server.stop("callback server").await;
    handler.delivery().close(budget.flush).await;
    admin.stop("admin server").await;
    tracing::info!(took = ?started.elapsed(), "timbridge stopped");
}
