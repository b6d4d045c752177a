//! The validated configuration: plain data, no I/O. Built from the command line by
//! [`crate::cli`] (each sink's rules live with the sink: [`crate::sink::nats`],
//! [`crate::sink::kafka`]) and, for the apps, from `--config FILE` ([`file`]); tests build it
//! the same way.

pub mod apps;
pub mod file;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

use crate::before::BeforeConfig;
use crate::ingest::admission;
use crate::sink::{KafkaConfig, NatsConfig, Template};
use crate::tencent::callback::Policy;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The callback path, e.g. `/callback`.
    pub path: String,
    pub policy: Policy,
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
    /// Partitions of the partition key (the `{partition}` of NATS subjects, stdout lines).
    pub partitions: u32,
    /// Threads of the async runtime; `None`: one per core.
    pub worker_threads: Option<usize>,
    /// Spooled mode (`--spool-dir`); `None`: direct mode, 200 only after the broker's ack.
    pub spool: Option<crate::spool::SpoolConfig>,
}

// One per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum SinkConfig {
    Stdout,
    Nats(NatsConfig),
    Kafka(KafkaConfig),
}

impl SinkConfig {
    /// The template of the records' destination: the NATS subject, the Kafka topic, or (for
    /// stdout, which prints it) the NATS default.
    pub fn destination(&self) -> Template {
        match self {
            SinkConfig::Nats(nats) => nats.subject.clone(),
            SinkConfig::Kafka(kafka) => kafka.topic.clone(),
            SinkConfig::Stdout => Template::stdout(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            SinkConfig::Stdout => "stdout",
            SinkConfig::Nats(_) => "nats",
            SinkConfig::Kafka(_) => "kafka",
        }
    }

    /// Checks an app's own destination template (named by `key`) with the sink's rules.
    pub fn check_destination(&self, key: &str, template: &Template) -> Result<(), ConfigError> {
        match self {
            SinkConfig::Nats(nats) => nats.check_subject(key, template),
            SinkConfig::Kafka(kafka) => kafka.check_topic(key, template),
            SinkConfig::Stdout => Ok(()),
        }
    }
}

/// A configuration that cannot work; `main` prints it on one line and exits with 64.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct ConfigError {
    /// The flag, or the configuration file and the key path in it (`apps.yaml: apps[1].token`).
    pub flag: Cow<'static, str>,
    pub message: String,
}

impl ConfigError {
    pub fn new(flag: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        ConfigError {
            flag: flag.into(),
            message: message.into(),
        }
    }
}
