//! Where accepted callbacks go. One file per broker behind one enum; `publish` returns only once
//! the broker acknowledged (the JetStream PubAck, the Kafka delivery report) or the line was
//! written (stdout), so the HTTP answer can wait on it.

pub mod kafka;
pub mod nats;
pub mod stdout;

use std::fmt::Write as _;
use std::time::Duration;

use crate::callback::Callback;
use crate::error::{ConfigError, Rejection};

pub use kafka::KafkaSink;
pub use nats::NatsSink;
pub use stdout::StdoutSink;

// One per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Sink {
    Stdout(StdoutSink),
    Nats(NatsSink),
    Kafka(KafkaSink),
}

/// What the broker said about a publish that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The broker already had this message (a redelivered callback) and did not store it again.
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The broker cannot take messages now (down, disconnected, overloaded); a later attempt may
    /// succeed.
    #[error("{0}")]
    Unavailable(String),
    /// The broker refused this message and would refuse it again (too large, not authorised).
    #[error("{0}")]
    Rejected(String),
    /// The client's own bound is full (producer queue, pending acks): the broker is not keeping
    /// up with the offered load.
    #[error("{0}")]
    Backpressure(String),
    /// The client gave up waiting for the acknowledgement (its timeout matches the publish
    /// timeout).
    #[error("no acknowledgement in time")]
    TimedOut,
}

impl SinkError {
    /// The rejection to answer with; `publish_timeout` names the bound a timeout hit.
    pub fn into_rejection(self, publish_timeout: Duration) -> Rejection {
        match self {
            SinkError::Unavailable(why) => Rejection::SinkUnavailable(why),
            SinkError::Rejected(why) => Rejection::SinkRejected(why),
            SinkError::Backpressure(why) => Rejection::SinkBackpressure(why),
            SinkError::TimedOut => Rejection::PublishTimeout(publish_timeout),
        }
    }
}

impl Sink {
    /// The `sink` metric label.
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Stdout(_) => "stdout",
            Sink::Nats(_) => "nats",
            Sink::Kafka(_) => "kafka",
        }
    }

    /// Publishes `callback` and waits for the acknowledgement. Not bounded in time here: the
    /// caller bounds it by the publish timeout.
    pub async fn publish(&self, callback: &Callback) -> Result<Ack, SinkError> {
        match self {
            Sink::Stdout(sink) => sink.publish(callback),
            Sink::Nats(sink) => sink.publish(callback).await,
            Sink::Kafka(sink) => sink.publish(callback).await,
        }
    }

    /// Whether publishing can succeed now (connected, stream present).
    pub fn is_ready(&self) -> bool {
        match self {
            Sink::Stdout(_) => true,
            Sink::Nats(sink) => sink.is_ready(),
            Sink::Kafka(sink) => sink.is_ready(),
        }
    }

    /// False only when the sink can never publish again without a restart (a fatal producer
    /// error): `/healthz` fails so that Kubernetes restarts the pod.
    pub fn is_healthy(&self) -> bool {
        match self {
            Sink::Kafka(sink) => sink.is_healthy(),
            Sink::Stdout(_) | Sink::Nats(_) => true,
        }
    }

    /// Flushes what the sink buffers, waiting at most `timeout`.
    pub async fn close(&self, timeout: Duration) {
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

/// A subject or topic name with placeholders: `{command}`, `{partition}`, `{sdkappid}`.
/// Parsed once at start-up; rendering is plain concatenation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Command,
    Partition,
    SdkAppid,
}

impl Template {
    pub fn parse(flag: &'static str, text: &str) -> Result<Template, ConfigError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| ConfigError::new(flag, format!("unclosed '{{' in {text:?}")))?;
            parts.push(match &rest[open + 1..open + close] {
                "command" => Part::Command,
                "partition" => Part::Partition,
                "sdkappid" => Part::SdkAppid,
                other => {
                    return Err(ConfigError::new(
                        flag,
                        format!(
                            "unknown placeholder {{{other}}} (use {{command}}, {{partition}}, {{sdkappid}})"
                        ),
                    ))
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err(ConfigError::new(flag, "must not be empty"));
        }
        Ok(Template { parts })
    }

    pub fn uses_partition(&self) -> bool {
        self.parts.contains(&Part::Partition)
    }

    pub fn render(&self, command: &str, partition: u32, sdkappid: u64) -> String {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            // Writing into a String cannot fail.
            let _ = match part {
                Part::Literal(s) => {
                    out.push_str(s);
                    Ok(())
                }
                Part::Command => {
                    out.push_str(command);
                    Ok(())
                }
                Part::Partition => write!(out, "{partition}"),
                Part::SdkAppid => write!(out, "{sdkappid}"),
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_and_refuse_unknown_placeholders() {
        let t = Template::parse("--nats-subject", "tim.{command}.{partition}").unwrap();
        assert!(t.uses_partition());
        assert_eq!(
            t.render("Group.CallbackAfterSendMsg", 3, 1),
            "tim.Group.CallbackAfterSendMsg.3"
        );
        let t = Template::parse("--nats-subject", "a.{sdkappid}.b").unwrap();
        assert!(!t.uses_partition());
        assert_eq!(t.render("X.Y", 0, 1400000000), "a.1400000000.b");
        assert!(Template::parse("--nats-subject", "tim.{group}").is_err());
        assert!(Template::parse("--nats-subject", "tim.{command").is_err());
        assert!(Template::parse("--nats-subject", "").is_err());
    }
}
