//! Flags of `timbridge audit` for the ordered stream (`src/audit/ordered/`): where it goes
//! (a NATS subject template and stream, or a Kafka topic) and its bounds.

use std::time::Duration;

use clap::Args;

use super::parse::{parse_duration, parse_size};
use crate::audit::ordered::{OrderedConfig, OutputConfig};
use crate::core::ConfigError;
use crate::sink::SinkConfig;

#[derive(Debug, Args)]
pub struct OrderedArgs {
    /// NATS: the ordered stream's subject template (off when empty): each group's MsgSeqs
    /// once, in order, every seq a message or a marker. Must contain {partition} (e.g.
    /// `tim-ordered.{partition}`), may contain {sdkappid}, and must lie outside the bridge's
    /// stream subjects.
    #[arg(
        long,
        env = "TIMBRIDGE_ORDERED_SUBJECT",
        default_value = "",
        help_heading = "Ordered stream"
    )]
    pub ordered_subject: String,

    /// NATS: the stream holding the ordered stream, created when missing.
    #[arg(
        long,
        env = "TIMBRIDGE_ORDERED_STREAM",
        default_value = "TIM_ORDERED",
        help_heading = "Ordered stream"
    )]
    pub ordered_stream: String,

    /// Kafka: the ordered stream's topic (off when empty; created beforehand), keyed by
    /// GroupId like the live record. Consumers read it with isolation.level=read_committed.
    #[arg(
        long,
        env = "TIMBRIDGE_ORDERED_TOPIC",
        default_value = "",
        help_heading = "Ordered stream"
    )]
    pub ordered_topic: String,

    /// NATS: the ordered stream's duplicate window (Nats-Msg-Id), when the auditor creates it.
    #[arg(long, env = "TIMBRIDGE_ORDERED_DUPLICATE_WINDOW", default_value = "10m", value_parser = parse_duration, help_heading = "Ordered stream")]
    pub ordered_duplicate_window: Duration,

    /// Bodies held in memory behind holes, at most; past it the oldest hole is looked up at
    /// once and held bodies are read back from the main stream when released.
    #[arg(long, env = "TIMBRIDGE_ORDERED_MAX_HELD_BYTES", default_value = "64MiB", value_parser = parse_size, help_heading = "Ordered stream")]
    pub ordered_max_held_bytes: usize,

    /// Ordered entries handed to the broker and not yet stored, at most (NATS: awaiting their
    /// ack; Kafka: awaiting their delivery report); the consumer waits past it.
    #[arg(
        long,
        env = "TIMBRIDGE_ORDERED_MAX_INFLIGHT",
        default_value_t = 1024,
        help_heading = "Ordered stream"
    )]
    pub ordered_max_inflight: usize,

    /// Kafka: how often the transaction (ordered records, checkpoint, consumed offsets)
    /// commits; consumers see the records then.
    #[arg(long, env = "TIMBRIDGE_ORDERED_COMMIT_INTERVAL", default_value = "100ms", value_parser = parse_duration, help_heading = "Ordered stream")]
    pub ordered_commit_interval: Duration,

    /// Kafka: for brokers without transactions (no EndTxn, e.g. tansu 0.6): an idempotent
    /// producer; each checkpoint waits for the ordered records' delivery reports, and a restart
    /// may repeat what was released since the last one (a repeat is a seq at or below the last
    /// one a consumer saw of its group).
    #[arg(
        long,
        env = "TIMBRIDGE_ORDERED_NO_TRANSACTIONS",
        help_heading = "Ordered stream"
    )]
    pub ordered_no_transactions: bool,
}

impl OrderedArgs {
    /// The ordered stream's settings, `None` when it is off.
    pub(super) fn into_config(
        self,
        sink: &SinkConfig,
        state_topic: &str,
        event_topic: &str,
    ) -> Result<Option<OrderedConfig>, ConfigError> {
        let output = match (
            sink,
            self.ordered_subject.is_empty(),
            self.ordered_topic.is_empty(),
        ) {
            (_, true, true) => return Ok(None),
            (SinkConfig::Nats(nats), false, true) => {
                let flag = "--ordered-subject";
                let subject = crate::wire::Template::parse(flag, &self.ordered_subject)?;
                if !subject.uses_partition() || subject.uses_command() {
                    return Err(ConfigError::new(
                        flag,
                        "must contain {partition} and not {command} (e.g. tim-ordered.{partition})",
                    ));
                }
                let sample = subject.sample();
                if let Some(pattern) = nats
                    .stream_subjects
                    .iter()
                    .find(|p| crate::sink::nats::subject_matches(p, &sample))
                {
                    return Err(ConfigError::new(
                        flag,
                        format!("{sample:?} is inside the bridge's stream subject {pattern:?}: the auditor would read its own output"),
                    ));
                }
                if self.ordered_stream.is_empty() || self.ordered_stream == nats.stream {
                    return Err(ConfigError::new(
                        "--ordered-stream",
                        "must name a stream other than the bridge's (--nats-stream)",
                    ));
                }
                OutputConfig::Nats {
                    subject,
                    stream: self.ordered_stream,
                    duplicate_window: self.ordered_duplicate_window,
                }
            }
            (SinkConfig::Kafka(kafka), true, false) => {
                let read = kafka.topic.render(crate::audit::backfill::COMMAND, 0, 0);
                if [read.as_str(), state_topic, event_topic].contains(&self.ordered_topic.as_str())
                {
                    return Err(ConfigError::new(
                        "--ordered-topic",
                        "must be a topic of its own (not the bridge's, the checkpoint's or the events')",
                    ));
                }
                OutputConfig::Kafka {
                    topic: self.ordered_topic,
                    commit_interval: self.ordered_commit_interval,
                    transactions: !self.ordered_no_transactions,
                }
            }
            _ => {
                return Err(ConfigError::new(
                    "--ordered-subject",
                    "--ordered-subject goes with --sink nats, --ordered-topic with --sink kafka",
                ))
            }
        };
        for (flag, zero) in [
            ("--ordered-max-held-bytes", self.ordered_max_held_bytes == 0),
            ("--ordered-max-inflight", self.ordered_max_inflight == 0),
            (
                "--ordered-commit-interval",
                self.ordered_commit_interval.is_zero(),
            ),
            (
                "--ordered-duplicate-window",
                self.ordered_duplicate_window.is_zero(),
            ),
        ] {
            if zero {
                return Err(ConfigError::new(flag, "must be more than 0"));
            }
        }
        Ok(Some(OrderedConfig {
            output,
            max_held_bytes: self.ordered_max_held_bytes,
            max_inflight: self.ordered_max_inflight,
        }))
    }
}
