//! The composition root: builds the delivery, the handler and both listeners from a
//! [`Config`], and stops them in order.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::app::config::Config;
use crate::app::metrics::BridgeMetrics;
use crate::app::shutdown::{self, Budget, Task};
use crate::core::deliver::Deliver;
use crate::core::ConfigError;
use crate::delivery::Delivery;
use crate::http::metrics::ListenerMetrics;
use crate::http::source::AllowList;
use crate::http::tls::Tls;
use crate::http::{self, admin, ConnectionLimits};
use crate::ingest::Handler;
use crate::sink::Sink;
use crate::spool::forward_runtime::ForwardRuntime;
use crate::spool::{OpenError, Spool};
use crate::tencent::rest::{RestClient, SystemClock};
use crate::wire::Apps;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spool(#[from] OpenError),
}

/// A running bridge: both listeners bound and serving.
pub struct Bridge<D: Deliver = Delivery> {
    handler: Arc<Handler<D>>,
    /// Refreshes Tencent's egress list (`--allow-tencent-egress`); aborted at shutdown.
    egress: Option<tokio::task::JoinHandle<()>>,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    server: Task,
    admin: Task,
    budget: Budget,
}

impl Bridge<Delivery> {
    /// Connects the configured sink (in the background for brokers), opens the spool in
    /// spooled mode (recovering it in the background), binds both listeners and starts
    /// serving.
    pub async fn start(config: Config) -> Result<Bridge<Delivery>, StartError> {
        let metrics = new_metrics()?;
        let delivery = match &config.spool {
            None => Delivery::Direct(
                Sink::connect(&config.sink, config.publish_timeout, &metrics.kafka).await?,
            ),
            Some(spool) => {
                // The sink lives on the forwarder's runtime: only the forwarder publishes.
                let runtime =
                    ForwardRuntime::new(spool.forward_nice).map_err(|source| OpenError::Io {
                        dir: spool.dir.clone(),
                        source,
                    })?;
                let (sink_config, timeout, sink_metrics) = (
                    config.sink.clone(),
                    config.publish_timeout,
                    metrics.kafka.clone(),
                );
                let sink = runtime
                    .run(async move { Sink::connect(&sink_config, timeout, &sink_metrics).await })
                    .await?;
                Delivery::Spooled(Spool::open(
                    spool.clone(),
                    sink,
                    &metrics.spool,
                    Some(runtime),
                )?)
            }
        };
        Bridge::serve(config, delivery, metrics).await
    }

    /// Resolves when the bridge can no longer keep its promise (the spool's fsync failed): the
    /// process must exit non-zero. Never resolves in direct mode.
    pub async fn failed(&self) {
        match self.handler.delivery() {
            Delivery::Spooled(spool) => spool.fatal().cancelled_owned().await,
            Delivery::Direct(_) => std::future::pending().await,
        }
    }
}

impl<D: Deliver> Bridge<D> {
    /// As [`Bridge::start`], delivering to `delivery` (tests capture stdout or script outcomes
    /// this way).
    pub async fn start_with(config: Config, delivery: D) -> Result<Bridge<D>, StartError> {
        Bridge::serve(config, delivery, new_metrics()?).await
    }

    async fn serve(
        config: Config,
        delivery: D,
        metrics: BridgeMetrics,
    ) -> Result<Bridge<D>, StartError> {
        let listener = bind(config.listen)?;
        let admin_listener = bind(config.admin_listen)?;
        let addr = local_addr(&listener, config.listen);
        let admin_addr = local_addr(&admin_listener, config.admin_listen);

        warn_unsigned(&config.apps);
        let tls = match &config.tls {
            Some(files) => {
                Some(Arc::new(Tls::load(files.clone()).map_err(|err| {
                    ConfigError::new("--tls-cert", err.to_string())
                })?))
            }
            None => None,
        };
        let (sources, egress) = learn_egress(&config, &metrics.listener).await?;
        let handler = Arc::new(Handler::new(config.ingest(), delivery, metrics.ingest));
        let budget = Budget::new(
            config.shutdown_delay,
            config.shutdown_timeout,
            config.spool.is_some(),
        );
        let limits = ConnectionLimits {
            sources,
            trusted_proxies: config.trusted_proxies.clone(),
            tls,
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            drain_timeout: budget.drain,
        };
        let server_stop = CancellationToken::new();
        let server = Task {
            handle: tokio::spawn(http::serve(
                listener,
                handler.clone(),
                limits,
                metrics.listener,
                server_stop.clone().cancelled_owned(),
            )),
            stop: server_stop,
        };
        let admin_stop = CancellationToken::new();
        let admin = Task {
            handle: tokio::spawn(admin::serve(
                admin_listener,
                handler.clone(),
                admin_stop.clone().cancelled_owned(),
            )),
            stop: admin_stop,
        };
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(%addr, %admin_addr, scheme, path = %config.path, sink = handler.delivery().name(), "timbridge serving");
        Ok(Bridge {
            handler,
            egress,
            addr,
            admin_addr,
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

    pub fn handler(&self) -> &Arc<Handler<D>> {
        &self.handler
    }

    /// Stops gracefully, in the order [`shutdown`] describes, within the shutdown timeout.
    pub async fn shutdown(self) {
        if let Some(egress) = &self.egress {
            egress.abort();
        }
        shutdown::ordered(&self.handler, self.budget, self.server, self.admin).await;
    }
}

/// The listen backlog: deep enough for a burst of reconnecting clients (Tencent reconnecting
/// after a restart) to wait in the kernel instead of retrying their SYNs; the kernel caps it at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    };
    socket
        .and_then(|socket| {
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(LISTEN_BACKLOG)
        })
        .map_err(|source| StartError::Bind { addr, source })
}

/// The allow-list: `--allow-source`, and with `--allow-tencent-egress` Tencent's egress list,
/// asked for now (no start without it) and then refreshed by the task returned.
async fn learn_egress(
    config: &Config,
    metrics: &ListenerMetrics,
) -> Result<(Option<AllowList>, Option<tokio::task::JoinHandle<()>>), StartError> {
    let fixed = || config.allow_sources.clone();
    let Some(egress) = &config.egress else {
        metrics.allowed_ranges(fixed().map_or(0, |list| list.len()));
        return Ok((fixed(), None));
    };
    let failed = |why: String| StartError::from(ConfigError::new("--allow-tencent-egress", why));
    let client = RestClient::new(
        egress.sdkappid,
        &egress.credentials,
        &egress.rest,
        Arc::new(SystemClock),
    )
    .map_err(|err| failed(err.to_string()))?;
    let learnt = http::egress::fetch(&client, &egress.nettypes)
        .await
        .map_err(failed)?;
    let fixed_nets = config
        .allow_sources
        .as_ref()
        .map(|list| list.fixed().to_vec())
        .unwrap_or_default();
    let list = AllowList::with_learnt(fixed_nets, learnt)
        .ok_or_else(|| failed("no range learnt".into()))?;
    metrics.allowed_ranges(list.len());
    tracing::info!(
        ranges = list.len(),
        "serving Tencent's callback egress addresses only"
    );
    let task = tokio::spawn(http::egress::refresh(
        list.clone(),
        client,
        egress.nettypes.clone(),
        egress.every,
        metrics.clone(),
    ));
    Ok((Some(list), Some(task)))
}

fn new_metrics() -> Result<BridgeMetrics, StartError> {
    // Fails only on a programming error (two metrics of one name).
    BridgeMetrics::new().map_err(|e| ConfigError::new("metrics", e.to_string()).into())
}

fn local_addr(listener: &TcpListener, configured: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(configured)
}

/// Says at start-up which callbacks are served without Tencent's signature: anyone who can
/// reach the endpoint can publish those.
fn warn_unsigned(apps: &Apps) {
    match apps {
        Apps::Any { token: None } => tracing::warn!(
            "callbacks of any SdkAppid are accepted unsigned (--allow-any-sdkappid without a \
             token): anyone who can reach the endpoint can publish; for development only"
        ),
        Apps::Any { token: Some(_) } => tracing::warn!(
            "callbacks of any SdkAppid are accepted (--allow-any-sdkappid); for development only"
        ),
        Apps::Listed(listed) => {
            for app in listed.iter().filter(|app| app.token.is_none()) {
                tracing::warn!(
                    sdkappid = app.sdkappid,
                    "this app's callbacks are served unsigned: anyone who can reach the endpoint \
                     can publish as it; turn on callback authentication in Tencent's console \
                     and give its token"
                );
            }
        }
    }
}
