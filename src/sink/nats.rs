//! NATS JetStream: one subject per (command, partition), the stream created when missing, and a
//! publish done only when the stream's PubAck arrived.

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

use super::{Ack, SinkError, Template};
use crate::callback::Callback;
use crate::config::NatsConfig;
use crate::error::ConfigError;
use crate::partition::partition;

pub struct NatsSink {
    client: async_nats::Client,
    js: jetstream::Context,
    subject: Template,
    partitions: u32,
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
            options = options.token(token.clone());
        }
        if let Some((user, password)) = &config.user_password {
            options = options.user_and_password(user.clone(), password.clone());
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
            subject: config.subject.clone(),
            partitions: config.partitions,
            stream,
            keeper,
        })
    }

    pub fn is_ready(&self) -> bool {
        self.client.connection_state() == State::Connected
            && self.stream.ready.load(Ordering::Relaxed)
    }

    pub async fn publish(&self, callback: &Callback) -> Result<Ack, SinkError> {
        let key = callback.partition_key();
        let subject = self.subject.render(
            callback.command(),
            partition(key.as_bytes(), self.partitions),
            callback.sdkappid(),
        );
        let mut headers = HeaderMap::new();
        for (name, value) in callback.headers() {
            // The callback module refuses control characters in these values already; this
            // keeps a missed case from becoming a panic inside the client.
            let value: HeaderValue = value
                .parse()
                .map_err(|_| SinkError::Rejected(format!("{name} is not a valid header value")))?;
            headers.insert(name, value);
        }
        if let Some(id) = callback.dedup_id() {
            let id: HeaderValue = id.parse().map_err(|_| {
                SinkError::Rejected("the message id is not a valid header value".into())
            })?;
            headers.insert(NATS_MESSAGE_ID, id);
        }
        let message = PublishMessage::build()
            .payload(callback.body().clone())
            .headers(headers);
        let pending = self
            .js
            .send_publish(subject, message)
            .await
            .map_err(|e| self.publish_error(e.kind(), &e))?;
        let ack = pending
            .await
            .map_err(|e| self.publish_error(e.kind(), &e))?;
        Ok(Ack {
            duplicate: ack.duplicate,
        })
    }

    fn publish_error(&self, kind: PublishErrorKind, err: &dyn std::fmt::Display) -> SinkError {
        match kind {
            PublishErrorKind::MaxPayloadExceeded => SinkError::Rejected(err.to_string()),
            PublishErrorKind::StreamNotFound => {
                // Deleted, or a server that lost its storage: have the keeper create it again.
                self.stream.ready.store(false, Ordering::Relaxed);
                self.stream.recheck.notify_one();
                SinkError::Unavailable("no stream for the subject".into())
            }
            PublishErrorKind::TimedOut => SinkError::TimedOut,
            PublishErrorKind::MaxAckPending => {
                SinkError::Backpressure("too many publishes awaiting their ack".into())
            }
            _ => SinkError::Unavailable(err.to_string()),
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
