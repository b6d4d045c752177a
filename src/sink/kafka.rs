//! Kafka: an idempotent producer (`acks=all`), the record keyed by the partition key so Kafka's
//! murmur2 partitioner keeps each group in one partition, and a publish done only when the
//! delivery report arrived.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use tokio::task::JoinHandle;

use super::{Record, Template};
use crate::core::deliver::{Ack, DeliveryError, StoredAt};
use crate::core::secret::Secret;
use crate::core::ConfigError;
use crate::sink::metrics::KafkaGauges;

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    /// Topic template; `{partition}` is refused (Kafka's partitioner picks the partition).
    pub topic: Template,
    pub linger: Duration,
    pub compression: String,
    /// Messages librdkafka may hold (queued and in flight); past it a publish fails at once.
    pub queue_max_messages: usize,
    /// Pass-through librdkafka settings.
    pub options: Vec<(String, String)>,
    /// Pass-through settings that hold credentials (see [`is_secret_option`]).
    pub secret_options: Vec<(String, Secret)>,
}

impl KafkaConfig {
    /// Adds a librdkafka setting, keeping credentials out of `Debug`.
    pub fn set(&mut self, key: String, value: String) {
        if is_secret_option(&key) {
            self.secret_options.push((key, Secret::new(value)));
        } else {
            self.options.push((key, value));
        }
    }

    /// The rules a Kafka configuration must follow, checked once at start-up.
    pub fn check(&self, publish_timeout: Duration) -> Result<(), ConfigError> {
        self.check_topic("--kafka-topic", &self.topic)?;
        if self.linger >= publish_timeout {
            return Err(ConfigError::new(
                "--kafka-linger",
                "must be shorter than --publish-timeout",
            ));
        }
        for (key, value) in self.all_options() {
            check_option(key, value, publish_timeout)?;
        }
        Ok(())
    }

    /// A topic template (`--kafka-topic` or an app's own, named by `key`): no `{partition}`,
    /// and a valid topic name.
    pub fn check_topic(&self, key: &str, topic: &Template) -> Result<(), ConfigError> {
        if topic.uses_partition() {
            return Err(ConfigError::new(
                key.to_owned(),
                "{partition} is not allowed: Kafka picks the partition from the GroupId key",
            ));
        }
        let sample = topic.sample();
        if sample.len() > 249
            || !sample
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(ConfigError::new(
                key.to_owned(),
                format!("{sample:?} is not a valid Kafka topic name (letters, digits, . _ -)"),
            ));
        }
        Ok(())
    }

    fn all_options(&self) -> impl Iterator<Item = (&str, &str)> {
        let plain = self.options.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let secret = self
            .secret_options
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()));
        plain.chain(secret)
    }
}

/// librdkafka settings whose values are credentials.
pub fn is_secret_option(key: &str) -> bool {
    key.contains("password")
        || key.contains("secret")
        || key.ends_with(".pem")
        || key == "sasl.oauthbearer.config"
}

pub struct KafkaSink {
    producer: FutureProducer<Context>,
    state: Arc<State>,
    watcher: JoinHandle<()>,
}

struct State {
    /// Cluster metadata was reachable at the last check.
    reachable: AtomicBool,
    /// librdkafka raised a fatal error: this producer can never publish again.
    fatal: AtomicBool,
}

/// The librdkafka settings the bridge's guarantees rest on; `--kafka-option` may not change
/// them.
const GUARANTEES: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("partitioner", "murmur2_random"),
];

impl KafkaSink {
    pub fn connect(
        config: &KafkaConfig,
        publish_timeout: Duration,
        gauges: KafkaGauges,
    ) -> Result<KafkaSink, ConfigError> {
        let client_config = client_config(config, publish_timeout)?;
        let producer: FutureProducer<Context> = client_config
            .create_with_context(Context { gauges })
            .map_err(|e| ConfigError::new("--kafka-option", e.to_string()))?;
        let state = Arc::new(State {
            reachable: AtomicBool::new(false),
            fatal: AtomicBool::new(false),
        });
        let watcher = tokio::spawn(watch(producer.clone(), state.clone()));
        Ok(KafkaSink {
            producer,
            state,
            watcher,
        })
    }

    pub fn is_ready(&self) -> bool {
        self.state.reachable.load(Ordering::Relaxed) && !self.state.fatal.load(Ordering::Relaxed)
    }

    /// False once the producer hit a fatal error: only a new process recovers from that.
    pub fn is_healthy(&self) -> bool {
        !self.state.fatal.load(Ordering::Relaxed)
    }

    pub async fn publish(&self, record: &Record) -> Result<Ack, DeliveryError> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let message = FutureRecord::to(&record.destination)
            .key(record.key.as_bytes())
            .payload(record.body.as_ref())
            .headers(headers);
        // Never block on a full producer queue: that is backpressure, answered 503 at once.
        let delivery = self
            .producer
            .send_result(message)
            .map_err(|(err, _)| classify(&err))?;
        match delivery.await {
            Ok(Ok(delivery)) => Ok(Ack {
                duplicate: false,
                stored_at: Some(StoredAt::Partition(delivery.partition, delivery.offset)),
            }),
            Ok(Err((err, _))) => Err(classify(&err)),
            Err(_) => Err(DeliveryError::Unavailable(
                "the producer dropped the delivery report".into(),
            )),
        }
    }

    /// Waits (bounded) for queued messages to be delivered.
    pub async fn close(&self, timeout: Duration) {
        self.watcher.abort();
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("Kafka producer flushed"),
            Ok(Err(err)) => tracing::warn!(error = %err, "Kafka producer flush incomplete"),
            Err(err) => tracing::warn!(error = %err, "Kafka flush task failed"),
        }
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// The connection settings alone (brokers, `--kafka-option`s: security, credentials), for the
/// auditor's consumer and its checkpoint producer.
pub fn connection_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", "timbridge-audit")
        .set_log_level(RDKafkaLogLevel::Warning);
    for (key, value) in config.all_options() {
        c.set(key, value);
    }
    c
}

fn client_config(
    config: &KafkaConfig,
    publish_timeout: Duration,
) -> Result<ClientConfig, ConfigError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", "timbridge")
        .set("linger.ms", config.linger.as_millis().to_string())
        .set("compression.type", &config.compression)
        // A message still undelivered when the HTTP answer is due has been answered 503; no
        // point keeping it longer (it would only arrive as a duplicate).
        .set(
            "message.timeout.ms",
            publish_timeout.as_millis().max(1).to_string(),
        )
        .set(
            "queue.buffering.max.messages",
            config.queue_max_messages.to_string(),
        )
        .set("statistics.interval.ms", "5000")
        // Topics are created by the operator, never by a publish (the bridge's destinations
        // are a fixed set: unknown commands share one topic).
        .set("allow.auto.create.topics", "false")
        .set_log_level(RDKafkaLogLevel::Warning);
    for (key, value) in GUARANTEES {
        c.set(*key, *value);
    }
    // Checked in KafkaConfig::check; checked again here because a refused setting must never
    // reach the producer, whoever built the configuration.
    for (key, value) in config.all_options() {
        check_option(key, value, publish_timeout)?;
        c.set(key, value);
    }
    Ok(c)
}

/// Refuses pass-through options that would break what a 200 promises.
fn check_option(key: &str, value: &str, publish_timeout: Duration) -> Result<(), ConfigError> {
    let flag = "--kafka-option";
    let value_lc = value.trim().to_ascii_lowercase();
    match key {
        "enable.idempotence" if value_lc != "true" => Err(ConfigError::new(
            flag,
            "enable.idempotence must stay true: retries could reorder or double a group's messages",
        )),
        "acks" | "request.required.acks" if value_lc != "all" && value_lc != "-1" => {
            Err(ConfigError::new(
                flag,
                "acks must stay all: a 200 promises the message is on every in-sync replica",
            ))
        }
        "partitioner" if value_lc != "murmur2_random" => Err(ConfigError::new(
            flag,
            "partitioner must stay murmur2_random: the partition of a group must match Java clients and the NATS {partition}",
        )),
        "message.timeout.ms" | "delivery.timeout.ms" => {
            let ms: u128 = value_lc
                .parse()
                .map_err(|_| ConfigError::new(flag, format!("{key} must be milliseconds")))?;
            if ms == 0 || ms > publish_timeout.as_millis() {
                Err(ConfigError::new(
                    flag,
                    format!("{key} must be between 1 and the publish timeout ({} ms)", publish_timeout.as_millis()),
                ))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Transient errors (503: the broker may take it later) apart from permanent ones (500: this
/// message, or this configuration, will never be accepted).
fn classify(err: &KafkaError) -> DeliveryError {
    let code = match err {
        KafkaError::MessageProduction(code) => Some(*code),
        other => other.rdkafka_error_code(),
    };
    match code {
        Some(RDKafkaErrorCode::MessageTimedOut) => DeliveryError::TimedOut,
        Some(RDKafkaErrorCode::QueueFull) => {
            DeliveryError::Backpressure("the producer queue is full".into())
        }
        // The record itself can never be accepted.
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::PolicyViolation,
        ) => DeliveryError::Rejected(err.to_string()),
        // An operator can fix these (a topic deleted and re-created, an ACL slip, rotated
        // credentials): a spooled record waits for the fix instead of being dead-lettered.
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::InvalidRequiredAcks,
        ) => DeliveryError::Misconfigured(err.to_string()),
        _ => DeliveryError::Unavailable(err.to_string()),
    }
}

/// How often the watcher checks the cluster (readiness lags an outage by at most this).
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Checks every second that the cluster's metadata is reachable (readiness) and whether the
/// producer hit a fatal error (health).
async fn watch(producer: FutureProducer<Context>, state: Arc<State>) {
    loop {
        let probe = producer.clone();
        let result = tokio::task::spawn_blocking(move || {
            let fatal = probe.client().fatal_error();
            let reachable = probe
                .client()
                .fetch_metadata(None, Duration::from_secs(1))
                .map(|m| !m.brokers().is_empty());
            (fatal, reachable)
        })
        .await;
        if let Ok((fatal, reachable)) = result {
            if let Some((code, reason)) = fatal {
                if !state.fatal.swap(true, Ordering::Relaxed) {
                    tracing::error!(?code, %reason, "Kafka producer fatal error: restart needed (/healthz now fails)");
                }
            }
            let reachable = matches!(reachable, Ok(true));
            if reachable != state.reachable.swap(reachable, Ordering::Relaxed) {
                if reachable {
                    tracing::info!("Kafka cluster reachable");
                } else {
                    tracing::warn!("Kafka cluster unreachable");
                }
            }
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

/// Routes librdkafka's logs and errors into tracing and its statistics into metrics.
struct Context {
    gauges: KafkaGauges,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, "librdkafka: {reason}");
    }

    fn stats(&self, stats: Statistics) {
        let rtt_us = stats
            .brokers
            .values()
            .filter_map(|b| b.rtt.as_ref().map(|w| w.avg))
            .max()
            .unwrap_or(0);
        let in_flight: i64 = stats
            .brokers
            .values()
            .map(|b| b.outbuf_msg_cnt + b.waitresp_msg_cnt)
            .sum();
        self.gauges
            .update(stats.msg_cnt, stats.msg_size, rtt_us, in_flight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarantee_breaking_options_are_refused() {
        let t = Duration::from_millis(1500);
        for (k, v) in [
            ("enable.idempotence", "false"),
            ("acks", "1"),
            ("request.required.acks", "0"),
            ("partitioner", "consistent_random"),
            ("message.timeout.ms", "300000"),
            ("delivery.timeout.ms", "0"),
        ] {
            assert!(check_option(k, v, t).is_err(), "{k}={v}");
        }
        for (k, v) in [
            ("acks", "all"),
            ("acks", "-1"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("message.timeout.ms", "1000"),
        ] {
            assert!(check_option(k, v, t).is_ok(), "{k}={v}");
        }
    }

    #[test]
    fn permanent_errors_are_told_from_transient_ones() {
        let permanent = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(matches!(classify(&permanent), DeliveryError::Rejected(_)));
        // What an operator can fix is not the record's fault: a spooled record waits.
        for fixable in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::SaslAuthenticationFailed,
            RDKafkaErrorCode::Authentication,
        ] {
            let err = KafkaError::MessageProduction(fixable);
            assert!(
                matches!(classify(&err), DeliveryError::Misconfigured(_)),
                "{fixable:?}"
            );
        }
        let full = KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
        assert!(matches!(classify(&full), DeliveryError::Backpressure(_)));
        let timeout = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert!(matches!(classify(&timeout), DeliveryError::TimedOut));
        let down = KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown);
        assert!(matches!(classify(&down), DeliveryError::Unavailable(_)));
    }
}
