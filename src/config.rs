//! The validated configuration: plain data, no I/O. Built from the command line by
//! [`crate::cli`]; tests build it the same way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::admission;
use crate::callback::Policy;
use crate::sink::Template;

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
    /// Partitions of the partition key (the `{partition}` of NATS subjects, stdout lines).
    pub partitions: u32,
    /// Threads of the async runtime; `None`: one per core.
    pub worker_threads: Option<usize>,
}

// One per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum SinkConfig {
    Stdout,
    Nats(NatsConfig),
    Kafka(KafkaConfig),
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    /// Topic template; `{partition}` is refused (Kafka's partitioner picks the partition).
    pub topic: Template,
    pub linger: Duration,
    pub compression: String,
    /// Messages librdkafka may hold (queued and in flight); past it a publish fails at once.
    pub queue_max_messages: usize,
    /// Pass-through librdkafka settings, already checked against the bridge's guarantees.
    pub options: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub url: String,
    pub stream: String,
    pub stream_subjects: Vec<String>,
    pub stream_replicas: usize,
    pub duplicate_window: Duration,
    pub subject: Template,
    pub partitions: u32,
    pub creds_file: Option<PathBuf>,
    pub token: Option<String>,
    pub user_password: Option<(String, String)>,
    pub tls_ca: Option<PathBuf>,
    pub tls_client_cert: Option<(PathBuf, PathBuf)>,
    pub tls_required: bool,
    pub connect_timeout: Duration,
    /// Publishes awaiting their PubAck at once; past it a publish fails at once (503).
    pub max_pending_acks: usize,
    /// The client's outgoing command buffer (messages waiting for the socket).
    pub client_capacity: usize,
}

/// Parses `256KiB`, `1MiB`, `512KB`, `1000` (bytes).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 256KiB"))?;
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB, KB, MB)"
            ))
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses `1500ms`, `2s`, `1m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e} (write e.g. 1500ms or 2s)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256KiB"), Ok(262_144));
        assert_eq!(parse_size("1MiB"), Ok(1_048_576));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2KB"), Ok(2000));
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("2").is_err());
    }
}
