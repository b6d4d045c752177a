//! Where records go: one file per broker behind the [`Sink`] enum, which implements the
//! [`Deliver`] seam. [`crate::wire`] builds what a consumer receives (once, purely); each sink
//! only translates a [`Record`] into its client's types and resolves when the broker acknowledged
//! (the JetStream PubAck, the Kafka delivery report) or the line was written (stdout).

pub mod kafka;
pub mod metrics;
pub mod nats;
pub mod stdout;

use std::time::Duration;

use crate::core::deliver::{Ack, Deliver, DeliveryError};
use crate::core::{ConfigError, Record};
use crate::wire::Template;

pub use kafka::{KafkaConfig, KafkaSink};
pub use metrics::KafkaGauges;
pub use nats::{NatsConfig, NatsSink};
pub use stdout::StdoutSink;

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

// One per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Sink {
    Stdout(StdoutSink),
    Nats(NatsSink),
    Kafka(KafkaSink),
}

impl Sink {
    /// Connects the configured sink (brokers in the background: the bridge starts, not ready,
    /// while the broker is down).
    pub async fn connect(
        config: &SinkConfig,
        publish_timeout: Duration,
        kafka_gauges: &KafkaGauges,
    ) -> Result<Sink, crate::core::ConfigError> {
        Ok(match config {
            SinkConfig::Stdout => Sink::Stdout(StdoutSink::new()),
            SinkConfig::Nats(nats) => Sink::Nats(NatsSink::connect(nats, publish_timeout).await?),
            SinkConfig::Kafka(kafka) => Sink::Kafka(KafkaSink::connect(
                kafka,
                publish_timeout,
                kafka_gauges.clone(),
            )?),
        })
    }
}

impl Deliver for Sink {
    fn name(&self) -> &'static str {
        match self {
            Sink::Stdout(_) => "stdout",
            Sink::Nats(_) => "nats",
            Sink::Kafka(_) => "kafka",
        }
    }

    async fn deliver(&self, record: &Record) -> Result<Ack, DeliveryError> {
        match self {
            Sink::Stdout(sink) => sink.publish(record),
            Sink::Nats(sink) => sink.publish(record).await,
            Sink::Kafka(sink) => sink.publish(record).await,
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Sink::Stdout(_) => true,
            Sink::Nats(sink) => sink.is_ready(),
            Sink::Kafka(sink) => sink.is_ready(),
        }
    }

    fn is_healthy(&self) -> bool {
        match self {
            Sink::Kafka(sink) => sink.is_healthy(),
            Sink::Stdout(_) | Sink::Nats(_) => true,
        }
    }

    async fn close(&self, timeout: Duration) {
        match self {
            Sink::Stdout(sink) => sink.flush(),
            Sink::Nats(sink) => {
                if tokio::time::timeout(timeout, sink.close()).await.is_err() {
                    tracing::warn!("NATS flush did not finish within {timeout:?}");
                }
            }
            Sink::Kafka(sink) => sink.close(timeout).await,
        }
    }
}
