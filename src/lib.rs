//! timbridge: Tencent Cloud IM callbacks in, NATS JetStream (or stdout) out, and a 200 only
//! once the broker has the message.
//!
//! ```text
//!  Tencent IM ──POST /callback?SdkAppid=..&CallbackCommand=..──▶ server (hyper, one task per connection)
//!                                                                   │
//!            app::App::handle ◀─────────────────────────────────────┘
//!              1. path, method                                        → 404 / 405
//!              2. admission: a request slot (--max-inflight)          → 503
//!              3. callback::VerifiedQuery::verify: SdkAppid, Sign    → 400 / 403 / 401
//!              4. admission: broker acks not too slow                 → 503
//!              5. body read: memory budget, size, time                → 503 / 413 / 408
//!              6. VerifiedQuery::accept: JSON validation → Callback  → 400
//!              7. sink::Sink::publish, bounded by --publish-timeout  → 503 / 500
//!              8. broker ack ──▶ 200 {"ActionStatus":"OK",...}
//! ```
//!
//! Module map:
//! - [`cli`], [`config`]: flags (with `TIMBRIDGE_*` env fallbacks) → validated [`Config`].
//! - [`server`]: the callback listener; [`admin`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`app`]: the request path above; [`error`]: every rejection with its status and code.
//! - [`admission`]: the bounds on work in progress (requests, body bytes, slow broker acks).
//! - [`callback`]: Tencent's protocol (query, signature, body, reply), pure functions.
//! - [`partition`]: Kafka's murmur2 partitioner, shared by every sink.
//! - [`sink`]: stdout and NATS JetStream publishers.
//! - [`metrics`]: Prometheus metrics; [`shutdown`]: SIGTERM/SIGINT.
//!
//! [`Bridge`] ties them together; `main.rs` only parses flags, sets up logging and runs it.

pub mod admin;
pub mod admission;
pub mod app;
pub mod callback;
pub mod cli;
pub mod config;
pub mod error;
pub mod metrics;
pub mod partition;
pub mod server;
pub mod shutdown;
pub mod sink;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use app::App;
pub use config::{Config, SinkConfig};
pub use error::ConfigError;
use metrics::Metrics;
use sink::{KafkaSink, NatsSink, Sink, StdoutSink};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running bridge: both listeners bound and serving.
pub struct Bridge {
    app: Arc<App>,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    stop_server: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    server: JoinHandle<()>,
    admin: JoinHandle<()>,
    budget: ShutdownBudget,
}

/// How the shutdown timeout is spent: serving while not ready, draining, flushing.
#[derive(Debug, Clone, Copy)]
struct ShutdownBudget {
    delay: Duration,
    drain: Duration,
    flush: Duration,
}

impl ShutdownBudget {
    fn new(delay: Duration, total: Duration) -> ShutdownBudget {
        let after_delay = total.saturating_sub(delay);
        // The flush gets a quarter, at most 2 s: by then every answered message was acked
        // anyway; what is left are messages whose requests already got 503.
        let flush = (after_delay / 4).min(Duration::from_secs(2));
        ShutdownBudget {
            delay,
            drain: after_delay - flush,
            flush,
        }
    }
}

impl Bridge {
    /// Connects the configured sink (in the background for brokers), binds both listeners and
    /// starts serving.
    pub async fn start(config: Config) -> Result<Bridge, StartError> {
        let metrics = new_metrics()?;
        let sink = match &config.sink {
            SinkConfig::Stdout => Sink::Stdout(StdoutSink::new(config.partitions)),
            SinkConfig::Nats(nats) => {
                Sink::Nats(NatsSink::connect(nats, config.publish_timeout).await?)
            }
            SinkConfig::Kafka(kafka) => Sink::Kafka(KafkaSink::connect(
                kafka,
                config.publish_timeout,
                metrics.kafka_gauges(),
            )?),
        };
        Bridge::serve(config, sink, metrics).await
    }

    /// As [`Bridge::start`], with a sink built by the caller (tests capture stdout this way).
    pub async fn start_with_sink(config: Config, sink: Sink) -> Result<Bridge, StartError> {
        Bridge::serve(config, sink, new_metrics()?).await
    }

    async fn serve(config: Config, sink: Sink, metrics: Metrics) -> Result<Bridge, StartError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let listener = bind(config.listen).await?;
        let admin_listener = bind(config.admin_listen).await?;
        let addr = local_addr(&listener, config.listen);
        let admin_addr = local_addr(&admin_listener, config.admin_listen);

        let app = Arc::new(App::new(&config, sink, metrics));
        let budget = ShutdownBudget::new(config.shutdown_delay, config.shutdown_timeout);
        let limits = server::Limits {
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            drain_timeout: budget.drain,
        };
        let (stop_server, server_rx) = watch::channel(false);
        let (stop_admin, admin_rx) = watch::channel(false);
        let server = tokio::spawn(server::run(
            listener,
            app.clone(),
            limits,
            stopped(server_rx),
        ));
        let admin = tokio::spawn(admin::run(admin_listener, app.clone(), stopped(admin_rx)));
        tracing::info!(%addr, %admin_addr, path = %config.path, sink = app.sink().name(), "timbridge serving");
        Ok(Bridge {
            app,
            addr,
            admin_addr,
            stop_server,
            stop_admin,
            server,
            admin,
            budget,
        })
    }

    /// The callback listener's address (the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Stops gracefully, within the shutdown timeout: readiness false at once, still serving
    /// for the shutdown delay (while Kubernetes removes the pod from its endpoints), then no new
    /// connections, in-flight requests answered, the sink flushed.
    pub async fn shutdown(self) {
        let started = std::time::Instant::now();
        self.app.start_draining();
        tracing::info!(delay = ?self.budget.delay, "shutting down: readiness false, still serving for the shutdown delay");
        tokio::time::sleep(self.budget.delay).await;
        let _ = self.stop_server.send(true);
        if let Err(err) = self.server.await {
            tracing::error!(error = %err, "callback server task failed");
        }
        self.app.sink().close(self.budget.flush).await;
        let _ = self.stop_admin.send(true);
        let _ = self.admin.await;
        tracing::info!(took = ?started.elapsed(), "timbridge stopped");
    }
}

fn new_metrics() -> Result<Metrics, StartError> {
    // Fails only on a programming error (two metrics of one name).
    Metrics::new().map_err(|e| ConfigError::new("metrics", e.to_string()).into())
}

fn local_addr(listener: &TcpListener, configured: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(configured)
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    // An Err means the Bridge was dropped: stop as well.
    let _ = rx.wait_for(|stop| *stop).await;
}
