//! The validated configuration: plain data, no I/O. Built from the command line by
//! [`crate::app::cli`] (each sink's rules live with the sink: [`crate::sink::nats`],
//! [`crate::sink::kafka`]) and, for the apps, from `--config FILE` ([`file`]); tests build it
//! the same way.

pub mod file;

use std::net::SocketAddr;
use std::time::Duration;

use crate::before::BeforeConfig;
use crate::ingest::{self, admission};
use crate::sink::SinkConfig;
use crate::tencent::callback::Policy;
use crate::wire::apps::Apps;
use crate::wire::RecordBuilder;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The callback path, e.g. `/callback`.
    pub path: String,
    /// The apps served, each with its token, destination and REST credentials.
    pub apps: Apps,
    /// How far a signed callback's `RequestTime` may be from this server's clock.
    pub max_clock_skew: Duration,
    /// The peers the callback listener serves (`--allow-source`); `None`: every peer.
    pub allow_sources: Option<crate::http::source::AllowList>,
    /// Tencent's callback egress list served besides `allow_sources` (`--allow-tencent-egress`).
    pub egress: Option<crate::http::egress::EgressConfig>,
    /// Whose word on the client's address is taken (`--trusted-proxy`); `None`: nobody's.
    pub trusted_proxies: Option<crate::http::source::TrustedProxies>,
    /// HTTPS on the callback listener (`--tls-cert`); `None`: plain HTTP.
    pub tls: Option<crate::http::tls::TlsFiles>,
    pub sink: SinkConfig,
    /// The bound on waiting for the broker's acknowledgement.
    pub publish_timeout: Duration,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub admission: admission::Limits,
    pub max_connections: usize,
    /// From the first byte of a request head to its end.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this long.
    pub idle_timeout: Duration,
    /// After SIGTERM, how long to keep serving (not ready) before closing the listener.
    pub shutdown_delay: Duration,
    /// From SIGTERM to exit, all included.
    pub shutdown_timeout: Duration,
    /// What before-callbacks get.
    pub before: BeforeConfig,
    /// Delivered signed callbacks remembered to answer a replay without publishing it again.
    pub replay_cache_entries: usize,
    /// Partitions of the partition key (the `{partition}` of NATS subjects, stdout lines).
    pub partitions: u32,
    /// Threads of the async runtime; `None`: one per core.
    pub worker_threads: Option<usize>,
    /// Spooled mode (`--spool-dir`); `None`: direct mode, 200 only after the broker's ack.
    pub spool: Option<crate::spool::SpoolConfig>,
}

impl Config {
    /// The request path's share of the configuration.
    pub fn ingest(&self) -> ingest::Settings {
        let apps = self.apps.listed();
        ingest::Settings {
            path: self.path.clone(),
            policy: Policy {
                signers: self.apps.signers(),
                max_clock_skew: self.max_clock_skew,
            },
            records: RecordBuilder::new(self.sink.destination(), self.partitions).with_apps(apps),
            app_ids: apps.iter().map(|app| app.sdkappid).collect(),
            max_body_bytes: self.max_body_bytes,
            body_read_timeout: self.body_read_timeout,
            publish_timeout: self.publish_timeout,
            admission: self.admission,
            before: self.before.clone(),
            replay_cache_entries: self.replay_cache_entries,
        }
    }
}
