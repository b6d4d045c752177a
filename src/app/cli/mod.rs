//! Command-line flags, each with a `TIMBRIDGE_*` environment fallback, and their translation
//! into a [`Config`]. Split along the flatten groups: the general flags here, each sink's in its
//! own file; the rules of a sink's configuration live with the sink.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::app::config::Config;
use crate::before::forward::ForwardConfig;
use crate::before::{BeforeConfig, BeforePolicy};
use crate::core::secret::Secret;
use crate::core::ConfigError;
use crate::http::tls::TlsFiles;
use crate::sink::SinkConfig;
use crate::tencent::callback::Token;
use crate::wire::apps::{App, Apps};

mod audit;
mod kafka;
mod nats;
mod ordered;
pub mod parse;
mod rest;
mod spool;

pub use audit::AuditArgs;
pub use kafka::{Compression, KafkaArgs};
pub use nats::NatsArgs;
pub use ordered::OrderedArgs;
use parse::{parse_cidr, parse_duration, parse_secret, parse_size};
pub use spool::{ForwardArgs, SpoolArgs};

#[derive(Debug, Parser)]
#[command(
    name = "timbridge",
    version,
    about = "Receives Tencent Cloud IM callbacks and republishes them to NATS JetStream or Kafka. A 200 means the callback is stored: in direct mode the broker acknowledged it; in spooled mode it is fsynced in the spool, which forwards it to the broker afterwards."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the callback endpoint and the admin endpoints until SIGTERM/SIGINT.
    Serve(Box<ServeArgs>),
    /// Look into a spool directory, or forward what it holds.
    #[command(subcommand)]
    Spool(SpoolCommand),
    /// Read the published stream back, find MsgSeq gaps per group and repair them from
    /// Tencent's history (backfill), or report them unrecoverable.
    Audit(Box<AuditArgs>),
}

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Segments, record counts, acknowledged position, oldest record's age and damage found;
    /// read-only. Exits 1 when a record is corrupt.
    Inspect {
        /// The spool directory (--spool-dir).
        dir: PathBuf,
    },
    /// Forwards everything a spool holds to the broker and exits when it is empty (for the
    /// volume of a pod that will not come back). Takes the spool's lock: stop its bridge first.
    /// Exits 1, saying how many, while any record is left unforwarded.
    // `drain`: the command's former name, kept (hidden) for the scripts and Jobs that use it.
    #[command(alias = "drain")]
    Forward(Box<ForwardAllArgs>),
    /// Lists the records the broker refused for good (DIR/dead-letters.log); `replay` sends
    /// them again once the cause is fixed.
    DeadLetters(Box<DeadLettersArgs>),
}

#[derive(Debug, Args)]
pub struct ForwardAllArgs {
    /// The spool directory.
    pub dir: PathBuf,

    #[command(flatten)]
    pub broker: BrokerArgs,

    #[command(flatten)]
    pub forward: ForwardArgs,
}

/// The broker a one-shot spool command sends to.
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Where the records go.
    #[arg(long, env = "TIMBRIDGE_SINK", value_enum, default_value = "nats")]
    pub sink: SinkKind,

    /// Longest wait for one acknowledgement before that record is retried.
    #[arg(long, env = "TIMBRIDGE_PUBLISH_TIMEOUT", default_value = "1500ms", value_parser = parse_duration)]
    pub publish_timeout: Duration,

    /// Log filter (RUST_LOG syntax).
    #[arg(long, env = "TIMBRIDGE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,
}

impl BrokerArgs {
    pub fn into_sink(self) -> Result<SinkConfig, ConfigError> {
        Ok(match self.sink {
            SinkKind::Stdout => SinkConfig::Stdout,
            SinkKind::Nats => SinkConfig::Nats(self.nats.into_config()?),
            SinkKind::Kafka => SinkConfig::Kafka(self.kafka.into_config(self.publish_timeout)?),
        })
    }
}

impl ForwardAllArgs {
    /// The sink and the spool configuration (its storage bounds do not matter: nothing is
    /// appended).
    pub fn into_config(self) -> Result<(SinkConfig, crate::spool::SpoolConfig), ConfigError> {
        let mut spool =
            crate::spool::SpoolConfig::forward_only(self.dir, self.broker.publish_timeout);
        self.forward.apply(&mut spool)?;
        Ok((self.broker.into_sink()?, spool))
    }
}

#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    /// The spool directory.
    pub dir: PathBuf,

    #[command(subcommand)]
    pub action: Option<DeadLettersAction>,
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersAction {
    /// Sends every dead letter to the broker once, in order, and keeps in the file only those
    /// refused again or not tried (the broker failed). Takes the spool's lock: stop its bridge
    /// first. Exits 1 when any is kept.
    Replay(Box<BrokerArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// JSON lines on standard output (no broker needed).
    Stdout,
    /// NATS JetStream.
    Nats,
    /// Kafka (idempotent producer, acks=all).
    Kafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the callback listener.
    #[arg(long, env = "TIMBRIDGE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the admin listener (/metrics, /healthz, /readyz).
    #[arg(long, env = "TIMBRIDGE_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,

    /// Path of the callback URL configured in Tencent's console.
    #[arg(long, env = "TIMBRIDGE_PATH", default_value = "/callback")]
    pub path: String,

    /// The apps served, each with its own token, destination and REST credentials (YAML or
    /// TOML, see the README); instead of --sdkappid and --token.
    #[arg(
        long,
        env = "TIMBRIDGE_CONFIG",
        conflicts_with_all = ["sdkappids", "allow_any_sdkappid", "token", "token_file", "allow_unsigned"]
    )]
    pub config: Option<PathBuf>,

    /// An SdkAppid this bridge serves (repeat the flag, or comma-separate in the env variable).
    #[arg(long = "sdkappid", env = "TIMBRIDGE_SDKAPPID", value_delimiter = ',')]
    pub sdkappids: Vec<u64>,

    /// Accept callbacks of any SdkAppid (development only).
    #[arg(
        long,
        env = "TIMBRIDGE_ALLOW_ANY_SDKAPPID",
        conflicts_with = "sdkappids"
    )]
    pub allow_any_sdkappid: bool,

    /// Callback authentication token from Tencent's console; when set, Sign and RequestTime are required.
    #[arg(long, env = "TIMBRIDGE_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub token: Option<Secret>,

    /// Read the token from this file (trailing newline ignored).
    #[arg(long, env = "TIMBRIDGE_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,

    /// Serve only peers in these ranges (CIDR, or an address for one host; repeat the flag or
    /// comma-separate in the env variable), e.g. Tencent's callback egress ranges. Others get
    /// 403 before their request is read. Not given: every peer.
    #[arg(
        long = "allow-source",
        env = "TIMBRIDGE_ALLOW_SOURCE",
        value_delimiter = ',',
        value_name = "CIDR",
        value_parser = parse_cidr
    )]
    pub allow_sources: Vec<ipnet::IpNet>,

    /// Take the client's address from these proxies' PROXY protocol header (v1 or v2, when a
    /// connection starts with one) or X-Forwarded-For (its rightmost address that is not a
    /// trusted proxy); from anyone else both are ignored. The client's address is what
    /// --allow-source checks and what the logs show.
    #[arg(
        long = "trusted-proxy",
        env = "TIMBRIDGE_TRUSTED_PROXY",
        value_delimiter = ',',
        value_name = "CIDR",
        value_parser = parse_cidr
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Serve also Tencent's callback egress addresses, learnt from Tencent's GetIPList with the
    /// REST credentials of the first --config app that has them, and refreshed every
    /// --egress-refresh (a failed refresh keeps the last list). Does not start without them.
    #[arg(long, env = "TIMBRIDGE_ALLOW_TENCENT_EGRESS", requires = "config")]
    pub allow_tencent_egress: bool,

    /// GetIPList's nettype lists that --allow-tencent-egress serves: 5 the Chinese mainland and
    /// Hong Kong, 6 the rest of the world.
    #[arg(long, env = "TIMBRIDGE_EGRESS_NETTYPE", value_delimiter = ',', default_value = "5,6", value_parser = clap::value_parser!(u8).range(5..=6))]
    pub egress_nettype: Vec<u8>,

    /// How often --allow-tencent-egress asks Tencent for the list again.
    #[arg(long, env = "TIMBRIDGE_EGRESS_REFRESH", default_value = "1h", value_parser = parse_duration)]
    pub egress_refresh: Duration,

    #[command(flatten)]
    pub rest_endpoint: rest::RestEndpointArgs,

    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key. Not given:
    /// plain HTTP, for use behind an ingress that terminates TLS.
    #[arg(
        long,
        env = "TIMBRIDGE_TLS_CERT",
        requires = "tls_key",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The certificate's private key (PEM).
    #[arg(
        long,
        env = "TIMBRIDGE_TLS_KEY",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,

    /// Require a client certificate chained to this CA (PEM; Tencent's mutual-authentication
    /// CA from the console). Handshakes without one fail.
    #[arg(
        long,
        env = "TIMBRIDGE_TLS_CLIENT_CA",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// How often the TLS files are checked for a change (a renewed certificate is then served
    /// to new connections; open ones keep theirs).
    #[arg(long, env = "TIMBRIDGE_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,

    /// Serve the --sdkappid apps without a token: their callbacks are not signed, so anyone who
    /// can reach the endpoint can publish. Only while the console's callback authentication is
    /// off.
    #[arg(long, env = "TIMBRIDGE_ALLOW_UNSIGNED", conflicts_with_all = ["token", "token_file"])]
    pub allow_unsigned: bool,

    /// How far RequestTime may be from this server's clock (at most 5m: the window in which a
    /// seen signed URL can be replayed).
    #[arg(long, env = "TIMBRIDGE_MAX_CLOCK_SKEW", default_value = "60s", value_parser = parse_duration)]
    pub max_clock_skew: Duration,

    /// Delivered signed callbacks remembered (each until its RequestTime leaves the skew
    /// window, ~50 bytes each): the same signed request again is answered 200 and not published
    /// again. 0 turns it off. Past the bound the oldest is forgotten early (counted).
    #[arg(long, env = "TIMBRIDGE_REPLAY_CACHE_ENTRIES", default_value = "100000")]
    pub replay_cache_entries: usize,

    /// Where callbacks are published.
    #[arg(long, env = "TIMBRIDGE_SINK", value_enum, default_value = "stdout")]
    pub sink: SinkKind,

    /// Longest wait for the broker's acknowledgement before answering 503 (Tencent gives up after 2s).
    #[arg(long, env = "TIMBRIDGE_PUBLISH_TIMEOUT", default_value = "1500ms", value_parser = parse_duration)]
    pub publish_timeout: Duration,

    /// Largest accepted body, enforced while reading (413 above it).
    #[arg(long, env = "TIMBRIDGE_MAX_BODY_BYTES", default_value = "256KiB", value_parser = parse_size)]
    pub max_body_bytes: usize,

    /// Time a request's body may take to arrive (408 after it).
    #[arg(long, env = "TIMBRIDGE_BODY_READ_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,

    /// Most callbacks processed at once; past it new ones get 503 at once (about 1.5 s of peak
    /// traffic: at 2,500 callbacks/s, ~4,000).
    #[arg(long, env = "TIMBRIDGE_MAX_INFLIGHT", default_value_t = 4096)]
    pub max_inflight: usize,

    /// Most request-body bytes held in memory at once (declared Content-Length, or
    /// --max-body-bytes for chunked bodies); past it new callbacks get 503 at once.
    #[arg(long, env = "TIMBRIDGE_MAX_INFLIGHT_BYTES", default_value = "64MiB", value_parser = parse_size)]
    pub max_inflight_bytes: usize,

    /// Body bytes one client address may hold at once (its share of --max-inflight-bytes), so
    /// that one peer's slow uploads cannot take the budget from the others; past it, 503.
    /// Default: a quarter of --max-inflight-bytes, and at least --max-body-bytes.
    #[arg(long, env = "TIMBRIDGE_MAX_PEER_INFLIGHT_BYTES", value_parser = parse_size)]
    pub max_peer_inflight_bytes: Option<usize>,

    /// When a publish has waited longer than this for the broker's ack, new callbacks get 503 at
    /// once and /readyz turns 503 until the broker answers again; 0s disables.
    #[arg(long, env = "TIMBRIDGE_MAX_ACK_LATENCY", default_value = "1s", value_parser = parse_duration)]
    pub max_ack_latency: Duration,

    /// Most client connections open at once; at the limit the connection idle the longest is
    /// closed to admit a newcomer (with none idle, newcomers wait in the listen backlog).
    #[arg(long, env = "TIMBRIDGE_MAX_CONNECTIONS", default_value_t = 2048)]
    pub max_connections: usize,

    /// Time a request's head may take: from accept for a connection's first request, from its
    /// first byte for later ones (cuts off slow-loris and silent clients).
    #[arg(long, env = "TIMBRIDGE_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// A keep-alive connection with no request in progress is closed after this long.
    #[arg(long, env = "TIMBRIDGE_IDLE_TIMEOUT", default_value = "90s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// After SIGTERM, keep serving this long with /readyz false (Kubernetes takes a moment to
    /// stop routing to the pod), then stop accepting.
    #[arg(long, env = "TIMBRIDGE_SHUTDOWN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// From SIGTERM to exit, all included: the delay, the drain of in-flight requests and the
    /// producer flush. Keep it below the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "TIMBRIDGE_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Before-callbacks (whose answer allows or denies a user's action): allow answers OK at
    /// once and publishes in the background; publish treats them like any callback (a FAIL
    /// may deny the action); skip answers OK and publishes nothing.
    #[arg(
        long,
        env = "TIMBRIDGE_BEFORE_CALLBACKS",
        value_enum,
        default_value = "allow"
    )]
    pub before_callbacks: BeforePolicy,

    /// With --before-callbacks allow or forward: background publishes waiting or in flight at
    /// once; past it the event is dropped and counted (the user's action is still allowed).
    #[arg(long, env = "TIMBRIDGE_BEFORE_CALLBACK_QUEUE", default_value_t = 1024)]
    pub before_callback_queue: usize,

    /// With --before-callbacks forward: the app's moderation service (http(s)://host:port/path),
    /// sent each before-callback with Tencent's query (without Sign and RequestTime) and body.
    #[arg(long, env = "TIMBRIDGE_BEFORE_CALLBACK_URL")]
    pub before_callback_url: Option<String>,

    /// With an https:// --before-callback-url: CA certificates (PEM) the service's certificate
    /// may also chain to, besides the system's roots (a private CA).
    #[arg(long, env = "TIMBRIDGE_BEFORE_CALLBACK_CA", value_name = "FILE")]
    pub before_callback_ca: Option<PathBuf>,

    /// With --before-callbacks forward: how long the service may take; then the bridge
    /// answers allow (Tencent's own default on a timeout).
    #[arg(long, env = "TIMBRIDGE_BEFORE_CALLBACK_TIMEOUT", default_value = "1500ms", value_parser = parse_duration)]
    pub before_callback_timeout: Duration,

    /// Number of partitions of the GroupId key: the {partition} of NATS subjects.
    #[arg(long, env = "TIMBRIDGE_PARTITIONS", default_value_t = 16)]
    pub partitions: u32,

    /// Threads of the async runtime (default: one per CPU core).
    #[arg(long, env = "TIMBRIDGE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// Log line format (logs go to stderr).
    #[arg(long, env = "TIMBRIDGE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter, e.g. info, or debug to log every published callback (RUST_LOG syntax).
    #[arg(long, env = "TIMBRIDGE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub spool: SpoolArgs,
}

impl ServeArgs {
    /// Validates the flags. Reads the token file: the one piece of I/O of configuration.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        self.check_bounds()?;
        let max_peer_inflight_bytes = self.max_peer_inflight_bytes();
        let before = self.before_config()?;
        let sink = match self.sink {
            SinkKind::Stdout => SinkConfig::Stdout,
            SinkKind::Nats => SinkConfig::Nats(self.nats.into_config()?),
            SinkKind::Kafka => SinkConfig::Kafka(self.kafka.into_config(self.publish_timeout)?),
        };
        let spool = self.spool.into_config(
            self.max_inflight + self.before_callback_queue,
            self.publish_timeout,
        )?;
        // A body the spool's frame cannot hold would be answered 200 and never read back.
        if spool.is_some() && self.max_body_bytes > crate::spool::frame::MAX_BODY_BYTES {
            return Err(ConfigError::new(
                "--max-body-bytes",
                format!(
                    "must be at most {} in spooled mode (a spool frame holds {} bytes with the \
                     record's headers)",
                    crate::spool::frame::MAX_BODY_BYTES,
                    crate::spool::frame::MAX_FRAME_BYTES
                ),
            ));
        }
        let apps = match &self.config {
            Some(file) => Apps::Listed(crate::app::config::file::read_apps(file, &sink)?),
            None => apps_from_flags(
                self.allow_any_sdkappid,
                self.sdkappids,
                self.token,
                self.token_file,
                self.allow_unsigned,
            )?,
        };
        let egress = if self.allow_tencent_egress {
            let endpoint = self.rest_endpoint.into_endpoint()?;
            let app = apps
                .listed()
                .iter()
                .find(|app| app.rest.is_some())
                .ok_or_else(|| {
                    ConfigError::new(
                        "--allow-tencent-egress",
                        "no --config app has `rest:` credentials to ask Tencent for its egress list",
                    )
                })?;
            Some(crate::http::egress::EgressConfig {
                sdkappid: app.sdkappid,
                credentials: app.rest.clone().expect("found with credentials"),
                rest: crate::tencent::rest::RestConfig {
                    endpoint,
                    ..Default::default()
                },
                nettypes: self.egress_nettype,
                every: self.egress_refresh,
            })
        } else {
            None
        };
        if self.max_clock_skew > MAX_CLOCK_SKEW_CEILING {
            return Err(ConfigError::new(
                "--max-clock-skew",
                format!(
                    "must be at most {}s: a signed URL seen once can be replayed within it",
                    MAX_CLOCK_SKEW_CEILING.as_secs()
                ),
            ));
        }
        Ok(Config {
            listen: self.listen,
            admin_listen: self.admin_listen,
            path: self.path,
            apps,
            max_clock_skew: self.max_clock_skew,
            allow_sources: crate::http::source::AllowList::new(self.allow_sources),
            trusted_proxies: crate::http::source::TrustedProxies::new(self.trusted_proxies),
            egress,
            tls: self.tls_cert.zip(self.tls_key).map(|(cert, key)| TlsFiles {
                cert,
                key,
                client_ca: self.tls_client_ca,
                reload_interval: self.tls_reload_interval,
            }),
            sink,
            publish_timeout: self.publish_timeout,
            max_body_bytes: self.max_body_bytes,
            body_read_timeout: self.body_read_timeout,
            admission: crate::ingest::admission::Limits {
                max_inflight: self.max_inflight,
                max_inflight_bytes: self.max_inflight_bytes,
                max_peer_inflight_bytes,
                max_ack_latency: Some(self.max_ack_latency).filter(|d| !d.is_zero()),
                publish_timeout: self.publish_timeout,
            },
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            shutdown_delay: self.shutdown_delay,
            shutdown_timeout: self.shutdown_timeout,
            before,
            replay_cache_entries: self.replay_cache_entries,
            partitions: self.partitions,
            worker_threads: self.worker_threads,
            spool,
        })
    }

    fn max_peer_inflight_bytes(&self) -> usize {
        self.max_peer_inflight_bytes
            .unwrap_or((self.max_inflight_bytes / 4).max(self.max_body_bytes))
    }

    /// Every bound is more than zero, at most an hour for a wait, and consistent with the
    /// others.
    fn check_bounds(&self) -> Result<(), ConfigError> {
        if !self.path.starts_with('/') {
            return Err(ConfigError::new("--path", "must start with '/'"));
        }
        if self.publish_timeout.is_zero() {
            return Err(ConfigError::new("--publish-timeout", "must be more than 0"));
        }
        if self.publish_timeout >= Duration::from_secs(2) {
            tracing::warn!(
                "--publish-timeout is 2s or more: Tencent stops waiting after 2s, so late answers are lost"
            );
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::new("--max-body-bytes", "must be more than 0"));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new("--max-connections", "must be more than 0"));
        }
        if self.max_inflight == 0 {
            return Err(ConfigError::new("--max-inflight", "must be more than 0"));
        }
        if self.max_peer_inflight_bytes() < self.max_body_bytes
            || self.max_peer_inflight_bytes() > self.max_inflight_bytes
        {
            return Err(ConfigError::new(
                "--max-peer-inflight-bytes",
                "must be at least --max-body-bytes and at most --max-inflight-bytes",
            ));
        }
        if self.max_inflight_bytes < self.max_body_bytes {
            return Err(ConfigError::new(
                "--max-inflight-bytes",
                "must be at least --max-body-bytes, or no large callback could ever be admitted",
            ));
        }
        if self.tls_reload_interval.is_zero() {
            return Err(ConfigError::new(
                "--tls-reload-interval",
                "must be more than 0",
            ));
        }
        if self.header_read_timeout.is_zero()
            || self.idle_timeout.is_zero()
            || self.body_read_timeout.is_zero()
        {
            return Err(ConfigError::new(
                "--header-read-timeout",
                "header, body and idle timeouts must be more than 0",
            ));
        }
        // Sane ceilings: every wait is bounded, and a typo like `90h` should not make it
        // effectively unbounded (or overflow a deadline).
        const HOUR: Duration = Duration::from_secs(3600);
        for (flag, value) in [
            ("--publish-timeout", self.publish_timeout),
            ("--header-read-timeout", self.header_read_timeout),
            ("--body-read-timeout", self.body_read_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--max-ack-latency", self.max_ack_latency),
            ("--shutdown-timeout", self.shutdown_timeout),
            ("--tls-reload-interval", self.tls_reload_interval),
            ("--egress-refresh", self.egress_refresh),
        ] {
            if value > HOUR {
                return Err(ConfigError::new(flag, "must be at most 1h"));
            }
        }
        if self.shutdown_delay >= self.shutdown_timeout {
            return Err(ConfigError::new(
                "--shutdown-delay",
                "must be shorter than --shutdown-timeout (which includes it)",
            ));
        }
        if self.worker_threads == Some(0) {
            return Err(ConfigError::new("--worker-threads", "must be more than 0"));
        }
        if self.partitions == 0 {
            return Err(ConfigError::new("--partitions", "must be more than 0"));
        }
        Ok(())
    }

    /// What before-callbacks get: the policy, the background queue, the moderation service.
    fn before_config(&self) -> Result<BeforeConfig, ConfigError> {
        if self.before_callback_queue == 0 {
            return Err(ConfigError::new(
                "--before-callback-queue",
                "must be more than 0",
            ));
        }
        let forward = match (self.before_callbacks, &self.before_callback_url) {
            (BeforePolicy::Forward, Some(url)) => {
                let forward = ForwardConfig::parse(url, self.before_callback_timeout)?;
                Some(match &self.before_callback_ca {
                    Some(ca) => forward.with_ca(ca)?,
                    None => forward,
                })
            }
            (BeforePolicy::Forward, None) => {
                return Err(ConfigError::new(
                    "--before-callback-url",
                    "is required with --before-callbacks forward",
                ))
            }
            (_, Some(_)) => {
                return Err(ConfigError::new(
                    "--before-callback-url",
                    "is only used with --before-callbacks forward",
                ))
            }
            (_, None) => None,
        };
        Ok(BeforeConfig {
            policy: self.before_callbacks,
            queue: self.before_callback_queue,
            forward,
        })
    }
}

/// The ceiling of `--max-clock-skew`.
pub const MAX_CLOCK_SKEW_CEILING: Duration = Duration::from_secs(300);

/// The one-app (or one-token) case: every `--sdkappid` with the same token. Without one, the
/// apps are served only with `--allow-unsigned` (`--allow-any-sdkappid` is for development and
/// says so).
fn apps_from_flags(
    allow_any: bool,
    sdkappids: Vec<u64>,
    token: Option<Secret>,
    token_file: Option<PathBuf>,
    allow_unsigned: bool,
) -> Result<Apps, ConfigError> {
    let token = match (token, token_file) {
        (Some(token), _) => Some(token.expose().to_owned()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::new("--token-file", format!("{}: {e}", path.display())))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
        (None, None) => None,
    };
    if token.as_deref() == Some("") {
        return Err(ConfigError::new("--token", "is empty"));
    }
    let token = token.map(Token::new);
    if token.is_none() && !allow_any && !sdkappids.is_empty() && !allow_unsigned {
        return Err(ConfigError::new(
            "--sdkappid",
            "has no token: give --token or --token-file (or --allow-unsigned while the \
             console's callback authentication is off)",
        ));
    }
    match (allow_any, sdkappids.is_empty()) {
        (true, _) => Ok(Apps::Any { token }),
        (false, false) => Ok(Apps::Listed(
            sdkappids
                .into_iter()
                .map(|id| App::new(id, token.clone()))
                .collect(),
        )),
        (false, true) => Err(ConfigError::new(
            "--sdkappid",
            "give the SdkAppid(s) to serve (or --config FILE, or --allow-any-sdkappid)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["timbridge", "serve"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Serve(serve) = cli.command else {
            panic!("serve")
        };
        serve.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = serve(&["--sdkappid", "1400000000", "--allow-unsigned"]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.admin_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(c.path, "/callback");
        assert_eq!(c.publish_timeout, Duration::from_millis(1500));
        assert_eq!(c.max_body_bytes, 256 * 1024);
        assert_eq!(c.partitions, 16);
        assert!(matches!(c.sink, SinkConfig::Stdout));
        assert_eq!(c.apps, Apps::Listed(vec![App::new(1400000000, None)]));
    }

    #[test]
    fn errors_name_the_flag() {
        let any = "--allow-any-sdkappid";
        let cases: &[(&[&str], &str)] = &[
            (&[], "--sdkappid"),
            // An app without a token is served only when the operator says so.
            (&["--sdkappid", "1"], "--sdkappid: has no token"),
            (&[any, "--max-clock-skew", "6m"], "--max-clock-skew"),
            (&[any, "--publish-timeout", "soon"], "--publish-timeout"),
            (
                &[any, "--sink", "nats", "--nats-subject", "tim.{x}"],
                "--nats-subject",
            ),
            (
                &[any, "--sink", "nats", "--nats-subject", "other.{command}"],
                "--nats-stream-subjects",
            ),
            (
                &[any, "--sink", "kafka", "--kafka-option", "acks=1"],
                "--kafka-option",
            ),
            (
                &[any, "--sink", "kafka", "--kafka-topic", "t.{partition}"],
                "--kafka-topic",
            ),
            (
                &[any, "--sink", "kafka", "--kafka-option", "novalue"],
                "--kafka-option",
            ),
            (&[any, "--idle-timeout", "90h"], "--idle-timeout"),
            (
                &[any, "--before-callbacks", "forward"],
                "--before-callback-url",
            ),
            (
                &[any, "--before-callback-url", "http://moderation/tim"],
                "only used with --before-callbacks forward",
            ),
            (&[any, "--path", "callback"], "--path"),
        ];
        for (args, expected) in cases {
            let err = serve(args).unwrap_err();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn kafka_flags_become_producer_settings() {
        let c = serve(&[
            "--allow-any-sdkappid",
            "--sink",
            "kafka",
            "--kafka-brokers",
            "k1:9092,k2:9092",
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-option",
            "socket.keepalive.enable=true",
        ])
        .unwrap();
        let SinkConfig::Kafka(k) = c.sink else {
            panic!("kafka sink")
        };
        assert_eq!(k.brokers, "k1:9092,k2:9092");
        assert_eq!(k.compression, "lz4");
        assert_eq!(k.linger, Duration::from_millis(1));
        assert_eq!(
            k.topic.render("Group.CallbackAfterSendMsg", 0, 1),
            "tim.Group.CallbackAfterSendMsg"
        );
        assert!(k
            .options
            .contains(&("security.protocol".into(), "sasl_ssl".into())));
        assert!(k
            .options
            .contains(&("sasl.mechanism".into(), "SCRAM-SHA-512".into())));
        assert!(k
            .options
            .contains(&("socket.keepalive.enable".into(), "true".into())));
    }

    #[test]
    fn no_secret_shows_in_the_debug_form_of_a_config() {
        let secrets = [
            "tok-3c1b",
            "nats-tok-9f2e",
            "nats-pw-77aa",
            "sasl-pw-51d0",
            "key-pw-0b3c",
        ];
        let nats = serve(&[
            "--allow-any-sdkappid",
            "--token",
            secrets[0],
            "--sink",
            "nats",
            "--nats-token",
            secrets[1],
            "--nats-user",
            "bridge",
            "--nats-password",
            secrets[2],
        ])
        .unwrap();
        let kafka = serve(&[
            "--allow-any-sdkappid",
            "--token",
            secrets[0],
            "--sink",
            "kafka",
            "--kafka-sasl-username",
            "bridge",
            "--kafka-sasl-password",
            secrets[3],
            "--kafka-option",
            &format!("ssl.key.password={}", secrets[4]),
            "--kafka-option",
            "socket.keepalive.enable=true",
        ])
        .unwrap();
        let printed = format!("{nats:?}\n{kafka:?}\n{nats:#?}\n{kafka:#?}");
        for secret in secrets {
            assert!(!printed.contains(secret), "{secret} printed in {printed}");
        }
        // What is not secret still shows, so the form stays useful.
        assert!(printed.contains("socket.keepalive.enable"));
        assert!(printed.contains("sasl.username"));
        assert!(printed.contains("Secret(***)"));
    }

    /// The README's flags table lists exactly the flags of `serve`, with their defaults.
    #[test]
    fn the_readme_flags_table_matches_the_flags() {
        use clap::CommandFactory;
        let section = crate::core::readme::section("## Flags");
        let mut documented = std::collections::BTreeMap::new();
        for line in section.lines().filter(|l| l.starts_with("| `--")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let default = cells[2].trim_matches('`').to_owned();
            for flag in cells[1].split(", ") {
                let name = flag
                    .trim_matches('`')
                    .trim_start_matches("--")
                    .split([' ', '`'])
                    .next()
                    .unwrap()
                    .to_owned();
                documented.insert(name, default.clone());
            }
        }
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve");
        let mut actual = std::collections::BTreeMap::new();
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" || long == "version" {
                continue;
            }
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            actual.insert(long.to_owned(), defaults.join(","));
        }
        let names =
            |m: &std::collections::BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            names(&documented),
            names(&actual),
            "README (left) vs flags (right)"
        );
        for (flag, default) in &actual {
            let doc = &documented[flag];
            if default.is_empty() {
                assert!(
                    ["—", "off", "one per core"].contains(&doc.as_str()),
                    "--{flag} has no default but the README says {doc:?}"
                );
            } else if default != "false" {
                assert_eq!(doc, default, "default of --{flag}");
            }
        }
    }

    #[test]
    fn a_config_file_lists_the_apps_the_flags_would() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apps.yaml");
        std::fs::write(
            &path,
            "apps:\n  - {sdkappid: 1, token: one}\n  - {sdkappid: 2, token: one}\n",
        )
        .unwrap();
        let file = serve(&["--config", path.to_str().unwrap()]).unwrap();
        let flags = serve(&["--sdkappid", "1", "--sdkappid", "2", "--token", "one"]).unwrap();
        assert_eq!(file.apps, flags.apps);
        assert_eq!(file.apps.listed().len(), 2);
        for clash in [
            &["--sdkappid", "1"][..],
            &["--token", "t"],
            &["--allow-any-sdkappid"],
            &["--allow-unsigned"],
        ] {
            let mut args = vec!["--config", path.to_str().unwrap()];
            args.extend_from_slice(clash);
            let err = serve(&args).unwrap_err();
            assert!(err.contains("cannot be used with"), "{clash:?}: {err}");
        }
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "xxxxyyyy\n").unwrap();
        let c = serve(&[
            "--allow-any-sdkappid",
            "--token-file",
            path.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(
            c.apps,
            Apps::Any {
                token: Some(Token::new("xxxxyyyy".into()))
            }
        );
    }

    /// `spool forward` was `spool drain`: the old name still parses to the same command.
    #[test]
    fn spool_drain_is_an_alias_of_spool_forward() {
        for name in ["forward", "drain"] {
            let argv = ["timbridge", "spool", name, "/var/lib/timbridge/spool"];
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Spool(SpoolCommand::Forward(args)) = cli.command else {
                panic!("spool {name} is not spool forward")
            };
            assert_eq!(args.dir, PathBuf::from("/var/lib/timbridge/spool"));
        }
    }

    /// A body larger than a spool frame holds would be answered 200 and be unreadable: refused
    /// at start-up (an earlier build started with any size).
    #[test]
    fn a_body_limit_the_spool_cannot_hold_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().to_str().unwrap();
        let base = ["--allow-any-sdkappid", "--spool-dir", spool];
        let too_big = (crate::spool::frame::MAX_BODY_BYTES + 1).to_string();
        let inflight = (2 * crate::spool::frame::MAX_FRAME_BYTES).to_string();
        let limits = [
            "--max-body-bytes",
            &too_big,
            "--max-inflight-bytes",
            &inflight,
        ];
        let err = serve(&[&base[..], &limits[..]].concat()).unwrap_err();
        assert!(err.contains("--max-body-bytes"), "{err}");
        // Without a spool, or at the limit, it starts.
        serve(&[&base[..1], &limits[..]].concat()).unwrap();
        let fits = crate::spool::frame::MAX_BODY_BYTES.to_string();
        serve(
            &[
                &base[..],
                &["--max-body-bytes", &fits, "--max-inflight-bytes", &inflight],
            ]
            .concat(),
        )
        .unwrap();
    }
}
