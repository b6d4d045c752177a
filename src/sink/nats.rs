//! NATS JetStream: one subject per (command, partition), the stream created when missing, and a
//! publish done only when the stream's PubAck arrived.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::header::{HeaderMap, HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream::context::{ContextBuilder, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::{jetstream, ConnectOptions, Event};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{Record, Template};
use crate::core::deliver::{Ack, DeliveryError, StoredAt};
use crate::core::record::header;
use crate::core::secret::Secret;
use crate::core::ConfigError;

#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub url: String,
    pub stream: String,
    pub stream_subjects: Vec<String>,
    pub stream_replicas: usize,
    pub duplicate_window: Duration,
    pub subject: Template,
    pub creds_file: Option<PathBuf>,
    pub token: Option<Secret>,
    pub user_password: Option<(String, Secret)>,
    pub tls_ca: Option<PathBuf>,
    pub tls_client_cert: Option<(PathBuf, PathBuf)>,
    pub tls_required: bool,
    pub connect_timeout: Duration,
    /// Publishes awaiting their PubAck at once; past it a publish fails at once (503).
    pub max_pending_acks: usize,
    /// The client's outgoing command buffer (messages waiting for the socket).
    pub client_capacity: usize,
}

impl NatsConfig {
    /// The rules a NATS configuration must follow, checked once at start-up.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.stream.is_empty()
            || self
                .stream
                .contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
        {
            return Err(ConfigError::new(
                "--nats-stream",
                "must be a name without spaces, '.', '*', '>', '/' or '\\'",
            ));
        }
        self.check_subject("--nats-subject", &self.subject)
    }

    /// A subject template (`--nats-subject` or an app's own, named by `key`) must put a
    /// typical callback in the stream, or every publish would be refused with "no responders".
    pub fn check_subject(&self, key: &str, subject: &Template) -> Result<(), ConfigError> {
        let sample = subject.sample();
        if !self
            .stream_subjects
            .iter()
            .any(|pattern| subject_matches(pattern, &sample))
        {
            return Err(ConfigError::new(
                if key == "--nats-subject" {
                    "--nats-stream-subjects".to_owned()
                } else {
                    key.to_owned()
                },
                format!(
                    "the stream's subjects {:?} (--nats-stream-subjects) do not cover the subject {sample:?} of {key}",
                    self.stream_subjects
                ),
            ));
        }
        Ok(())
    }
}

/// NATS subject matching: `*` matches one token, a final `>` one or more.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

pub struct NatsSink {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: Arc<StreamState>,
    keeper: JoinHandle<()>,
}

/// Whether the stream is known to exist; the keeper task re-checks it when told to.
struct StreamState {
    ready: AtomicBool,
    recheck: Notify,
}

impl NatsSink {
    /// Connects in the background: the bridge starts (and reports not ready) while NATS is down.
    pub async fn connect(
        config: &NatsConfig,
        publish_timeout: Duration,
    ) -> Result<NatsSink, ConfigError> {
        let mut options = ConnectOptions::new()
            .name("timbridge")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(config.connect_timeout)
            .client_capacity(config.client_capacity)
            .reconnect_delay_callback(|attempts| {
                // Quick first retries (a restarting server is back in a moment), then at most 2 s.
                Duration::from_millis((50u64 << attempts.min(6)).min(2_000))
            })
            .event_callback(|event| async move {
                match event {
                    Event::Connected => tracing::info!("connected to NATS"),
                    Event::Disconnected => tracing::warn!("disconnected from NATS"),
                    other => tracing::info!(event = %other, "NATS client event"),
                }
            });
        if let Some(path) = &config.creds_file {
            options = options.credentials_file(path).await.map_err(|e| {
                ConfigError::new("--nats-creds", format!("{}: {e}", path.display()))
            })?;
        }
        if let Some(token) = &config.token {
            options = options.token(token.expose().to_owned());
        }
        if let Some((user, password)) = &config.user_password {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        if let Some(ca) = &config.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &config.tls_client_cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if config.tls_required {
            options = options.require_tls(true);
        }
        let client = options
            .connect(config.url.as_str())
            .await
            .map_err(|e| ConfigError::new("--nats-url", e.to_string()))?;

        let js = ContextBuilder::new()
            .timeout(publish_timeout)
            .max_ack_inflight(config.max_pending_acks)
            // Fail at once when too many acks are outstanding rather than queue behind them:
            // the HTTP answer has a deadline.
            .backpressure_on_inflight(false)
            .build(client.clone());

        let stream = Arc::new(StreamState {
            ready: AtomicBool::new(false),
            recheck: Notify::new(),
        });
        let stream_config = StreamConfig {
            name: config.stream.clone(),
            subjects: config.stream_subjects.clone(),
            storage: StorageType::File,
            duplicate_window: config.duplicate_window,
            num_replicas: config.stream_replicas,
            ..Default::default()
        };
        let keeper = tokio::spawn(keep_stream(
            client.clone(),
            js.clone(),
            stream_config,
            stream.clone(),
        ));
        Ok(NatsSink {
            client,
            js,
            stream,
            keeper,
        })
    }

    /// The JetStream context of this connection (the auditor consumes and checkpoints on it).
    pub fn jetstream(&self) -> jetstream::Context {
        self.js.clone()
    }

    pub fn is_ready(&self) -> bool {
        self.client.connection_state() == State::Connected
            && self.stream.ready.load(Ordering::Relaxed)
    }

    pub async fn publish(&self, record: &Record) -> Result<Ack, DeliveryError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &record.headers {
            // The callback module refuses control characters in these values already; this
            // keeps a missed case from becoming a panic inside the client.
            let value: HeaderValue = value.parse().map_err(|_| {
                DeliveryError::Rejected(format!("{name} is not a valid header value"))
            })?;
            if *name == header::DEDUP_ID {
                // JetStream drops a second message with the same id within its window.
                headers.insert(NATS_MESSAGE_ID, value.clone());
            }
            headers.insert(*name, value);
        }
        let message = PublishMessage::build()
            .payload(record.body.clone())
            .headers(headers);
        let pending = self
            .js
            .send_publish(record.destination.clone(), message)
            .await
            .map_err(|e| self.publish_error(e.kind(), &e))?;
        let ack = pending
            .await
            .map_err(|e| self.publish_error(e.kind(), &e))?;
        Ok(Ack {
            duplicate: ack.duplicate,
            stored_at: Some(StoredAt::Stream(ack.sequence)),
        })
    }

    fn publish_error(&self, kind: PublishErrorKind, err: &dyn std::fmt::Display) -> DeliveryError {
        match kind {
            PublishErrorKind::MaxPayloadExceeded => DeliveryError::Rejected(err.to_string()),
            PublishErrorKind::StreamNotFound => {
                // Deleted, or a server that lost its storage: have the keeper create it again.
                self.stream.ready.store(false, Ordering::Relaxed);
                self.stream.recheck.notify_one();
                DeliveryError::Unavailable("no stream for the subject".into())
            }
            PublishErrorKind::TimedOut => DeliveryError::TimedOut,
            PublishErrorKind::MaxAckPending => {
                DeliveryError::Backpressure("too many publishes awaiting their ack".into())
            }
            _ => DeliveryError::Unavailable(err.to_string()),
        }
    }

    pub async fn close(&self) {
        self.keeper.abort();
        if let Err(err) = self.client.flush().await {
            tracing::warn!(error = %err, "flushing the NATS connection failed");
        }
    }
}

impl Drop for NatsSink {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Makes sure the stream exists: at start, after a publish found it missing, and every few
/// seconds (a server restarted without its storage). Creating never changes an existing stream:
/// its retention and limits are the operator's.
async fn keep_stream(
    client: async_nats::Client,
    js: jetstream::Context,
    config: StreamConfig,
    state: Arc<StreamState>,
) {
    loop {
        let ready = if client.connection_state() == State::Connected {
            match js.get_or_create_stream(config.clone()).await {
                Ok(_) => true,
                Err(err) => {
                    tracing::warn!(stream = %config.name, error = %err, "JetStream stream not available");
                    false
                }
            }
        } else {
            false
        };
        if ready != state.ready.swap(ready, Ordering::Relaxed) && ready {
            tracing::info!(stream = %config.name, "JetStream stream ready");
        }
        let wait = if ready {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(250)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.recheck.notified() => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A NATS configuration as the flags' defaults make it.
    pub(crate) fn config() -> NatsConfig {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            stream: "TIM".into(),
            stream_subjects: vec!["tim.>".into()],
            stream_replicas: 1,
            duplicate_window: Duration::from_secs(120),
            subject: Template::parse("--nats-subject", "tim.{command}.{partition}").unwrap(),
            creds_file: None,
            token: None,
            user_password: None,
            tls_ca: None,
            tls_client_cert: None,
            tls_required: false,
            connect_timeout: Duration::from_secs(2),
            max_pending_acks: 8192,
            client_capacity: 8192,
        }
    }

    #[test]
    fn subject_patterns() {
        assert!(subject_matches("tim.>", "tim.Group.CallbackAfterSendMsg.3"));
        assert!(!subject_matches("tim.>", "tim"));
        assert!(subject_matches(
            "tim.*.*.*",
            "tim.Group.CallbackAfterSendMsg.3"
        ));
        assert!(!subject_matches(
            "tim.*",
            "tim.Group.CallbackAfterSendMsg.3"
        ));
        assert!(!subject_matches("other.>", "tim.a"));
    }
}
