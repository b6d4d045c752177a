//! The callback listener: hyper 1.x over HTTP/1.1 with keep-alive (Tencent keeps connections
//! open), one task per connection, a bound on open connections, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::app::App;

/// Limits of the callback listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// How long in-flight requests get to finish once `shutdown` resolved.
    pub shutdown_timeout: Duration,
}

/// Serves callbacks on `listener` until `shutdown` resolves, then stops accepting and waits (at
/// most `limits.shutdown_timeout`) for the requests in flight to be answered.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
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
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app_for_service = app.clone();
        let service = service_fn(move |request| {
            let app = app_for_service.clone();
            async move { Ok::<_, Infallible>(app.handle(request, peer).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let open = app.metrics().connection();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            drop(open);
            drop(permit);
        });
    }

    drop(listener);
    tracing::info!("callback listener closed; waiting for requests in flight");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all callback connections closed"),
        _ = tokio::time::sleep(limits.shutdown_timeout) => {
            tracing::warn!(timeout = ?limits.shutdown_timeout, "shutdown timeout reached with connections still open");
        }
    }
}
