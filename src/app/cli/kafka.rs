//! Flags of the Kafka sink.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::parse::{parse_duration, parse_key_value, parse_secret};
use crate::core::secret::Secret;
use crate::core::ConfigError;
use crate::sink::KafkaConfig;
use crate::wire::Template;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Kafka sink")]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma-separated host:port.
    #[arg(
        long,
        env = "TIMBRIDGE_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_brokers: String,

    /// Topic template; placeholders {command}, {sdkappid} (the partition is Kafka's, from the key).
    #[arg(long, env = "TIMBRIDGE_KAFKA_TOPIC", default_value = "tim.{command}")]
    pub kafka_topic: String,

    /// How long the producer waits to batch records (linger.ms). At high rates batches fill
    /// anyway while requests are in flight; a long linger only adds latency at low rates.
    #[arg(long, env = "TIMBRIDGE_KAFKA_LINGER", default_value = "1ms", value_parser = parse_duration)]
    pub kafka_linger: Duration,

    /// Batch compression.
    #[arg(
        long,
        env = "TIMBRIDGE_KAFKA_COMPRESSION",
        value_enum,
        default_value = "lz4"
    )]
    pub kafka_compression: Compression,

    /// Most messages the producer holds (queued or in flight); past it a publish gets 503 at once.
    #[arg(
        long,
        env = "TIMBRIDGE_KAFKA_QUEUE_MAX_MESSAGES",
        default_value_t = 20_000
    )]
    pub kafka_queue_max_messages: usize,

    /// security.protocol: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long, env = "TIMBRIDGE_KAFKA_SECURITY_PROTOCOL")]
    pub kafka_security_protocol: Option<String>,

    /// sasl.mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long, env = "TIMBRIDGE_KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,

    /// sasl.username.
    #[arg(long, env = "TIMBRIDGE_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,

    /// sasl.password.
    #[arg(long, env = "TIMBRIDGE_KAFKA_SASL_PASSWORD", hide_env_values = true, value_parser = parse_secret)]
    pub kafka_sasl_password: Option<Secret>,

    /// ssl.ca.location: CA certificate(s) to verify the brokers.
    #[arg(long, env = "TIMBRIDGE_KAFKA_SSL_CA")]
    pub kafka_ssl_ca: Option<PathBuf>,

    /// Any librdkafka producer setting as key=value (repeatable). Settings that would break the
    /// guarantees (enable.idempotence=false, acks other than all, another partitioner) are refused.
    #[arg(long = "kafka-option", env = "TIMBRIDGE_KAFKA_OPTION", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub kafka_options: Vec<(String, String)>,
}

impl KafkaArgs {
    pub(super) fn into_config(self, publish_timeout: Duration) -> Result<KafkaConfig, ConfigError> {
        let topic = Template::parse("--kafka-topic", &self.kafka_topic)?;
        let compression = match self.kafka_compression {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        };
        let mut config = KafkaConfig {
            brokers: self.kafka_brokers,
            topic,
            linger: self.kafka_linger,
            compression: compression.to_owned(),
            queue_max_messages: self.kafka_queue_max_messages.max(1),
            options: Vec::new(),
            secret_options: Vec::new(),
        };
        let named = [
            ("security.protocol", self.kafka_security_protocol),
            ("sasl.mechanism", self.kafka_sasl_mechanism),
            ("sasl.username", self.kafka_sasl_username),
            (
                "sasl.password",
                self.kafka_sasl_password.map(|p| p.expose().to_owned()),
            ),
            (
                "ssl.ca.location",
                self.kafka_ssl_ca.map(|p| p.display().to_string()),
            ),
        ];
        for (key, value) in named {
            if let Some(value) = value {
                config.set(key.to_owned(), value);
            }
        }
        for (key, value) in self.kafka_options {
            config.set(key, value);
        }
        config.check(publish_timeout)?;
        Ok(config)
    }
}
