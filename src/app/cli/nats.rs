//! Flags of the NATS JetStream sink.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::parse::{parse_duration, parse_secret};
use crate::core::secret::Secret;
use crate::core::ConfigError;
use crate::sink::NatsConfig;
use crate::wire::Template;

#[derive(Debug, Args)]
#[command(next_help_heading = "NATS JetStream sink")]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        env = "TIMBRIDGE_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// JetStream stream; created with file storage when missing (an existing one is not changed).
    #[arg(long, env = "TIMBRIDGE_NATS_STREAM", default_value = "TIM")]
    pub nats_stream: String,

    /// Subjects of the stream when the bridge creates it.
    #[arg(
        long,
        env = "TIMBRIDGE_NATS_STREAM_SUBJECTS",
        default_value = "tim.>",
        value_delimiter = ','
    )]
    pub nats_stream_subjects: Vec<String>,

    /// Replicas of the stream when the bridge creates it.
    #[arg(long, env = "TIMBRIDGE_NATS_STREAM_REPLICAS", default_value_t = 1)]
    pub nats_stream_replicas: usize,

    /// JetStream duplicate window of the stream when the bridge creates it (Nats-Msg-Id dedupe).
    #[arg(long, env = "TIMBRIDGE_NATS_DUPLICATE_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub nats_duplicate_window: Duration,

    /// Subject template; placeholders {command}, {partition}, {sdkappid}.
    #[arg(
        long,
        env = "TIMBRIDGE_NATS_SUBJECT",
        default_value = "tim.{command}.{partition}"
    )]
    pub nats_subject: String,

    /// NATS credentials file (JWT + nkey).
    #[arg(long, env = "TIMBRIDGE_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,

    /// NATS authentication token.
    #[arg(long, env = "TIMBRIDGE_NATS_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub nats_token: Option<Secret>,

    /// NATS user (with --nats-password).
    #[arg(long, env = "TIMBRIDGE_NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,

    /// NATS password (with --nats-user).
    #[arg(
        long,
        env = "TIMBRIDGE_NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user",
        value_parser = parse_secret
    )]
    pub nats_password: Option<Secret>,

    /// CA certificate (PEM) to verify the NATS server.
    #[arg(long, env = "TIMBRIDGE_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS (with --nats-tls-key).
    #[arg(long, env = "TIMBRIDGE_NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,

    /// Client key (PEM) for mutual TLS (with --nats-tls-cert).
    #[arg(long, env = "TIMBRIDGE_NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,

    /// Require TLS to the NATS server.
    #[arg(long, env = "TIMBRIDGE_NATS_TLS_REQUIRED")]
    pub nats_tls_required: bool,

    /// Time allowed for one connection attempt to NATS.
    #[arg(long, env = "TIMBRIDGE_NATS_CONNECT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub nats_connect_timeout: Duration,

    /// Publishes awaiting their PubAck at once; past it new callbacks get 503 at once.
    #[arg(long, env = "TIMBRIDGE_NATS_MAX_PENDING_ACKS", default_value_t = 8192)]
    pub nats_max_pending_acks: usize,
}

impl NatsArgs {
    pub(super) fn into_config(self) -> Result<NatsConfig, ConfigError> {
        let subject = Template::parse("--nats-subject", &self.nats_subject)?;
        let config = NatsConfig {
            url: self.nats_url,
            stream: self.nats_stream,
            stream_subjects: self.nats_stream_subjects,
            stream_replicas: self.nats_stream_replicas,
            duplicate_window: self.nats_duplicate_window,
            subject,
            creds_file: self.nats_creds,
            token: self.nats_token,
            user_password: self.nats_user.zip(self.nats_password),
            tls_ca: self.nats_tls_ca,
            tls_client_cert: self.nats_tls_cert.zip(self.nats_tls_key),
            tls_required: self.nats_tls_required,
            connect_timeout: self.nats_connect_timeout,
            max_pending_acks: self.nats_max_pending_acks.max(1),
            client_capacity: self.nats_max_pending_acks.max(128),
        };
        config.check()?;
        Ok(config)
    }
}
