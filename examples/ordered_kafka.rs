//! A consumer of timbridge's ordered stream on Kafka (`timbridge audit --ordered-topic`).
//!
//! It keeps nothing but the last MsgSeq of each group (sdkappid + group + topic, from the `tim-*`
//! headers) and checks that every group record (`tim-callback-command:
//! Group.CallbackAfterSendMsg`) is the next one: `seq == last + 1`. A `tim-ordered: skip` marker
//! stands for a seq that has no message (a system notice, a deleted or expired message, ...); it
//! takes its seq like a message does. Other commands are passed through, and only counted. The
//! ordered records are written in transactions: read them with `isolation.level=read_committed`.
//!
//! Run it:
//!
//! ```text
//! cargo run --example ordered_kafka -- --brokers 127.0.0.1:9092 --topic tim-ordered \
//!     --group my-consumer [--expect N] [--idle 5s]
//! ```
//!
//! It joins consumer group `--group` (from the earliest offset when the group has none, committing
//! as it goes). It stops after `--expect` group records and markers, after `--idle` without a
//! record, or on Ctrl-C, and prints one JSON line on stdout (markers and problems go to stderr):
//! `{"records":..,"markers":..,"groups":..,"out_of_order":..,"duplicates":..,"passthrough":..}`.
//! Exit status: 0 in order; 1 a record out of order or a duplicate (`seq <= last`); 2 an error;
//! 3 stopped (idle or Ctrl-C) before `--expect` was reached.
//!
//! Group messages of apps the auditor has no REST credentials for are passed through in arrival
//! order, not ordered: a consumer of such apps should not hold them to this check.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// The consumer group.
    #[arg(long)]
    group: String,
    /// Stop after this many group records and markers.
    #[arg(long)]
    expect: Option<u64>,
    /// Stop when nothing arrives for this long (e.g. 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    idle: Option<Duration>,
}

/// The check: the last seq of each group, and what was seen.
#[derive(Default)]
struct Check {
    /// Keyed by (sdkappid, group, topic); the topic is empty for a group without topics.
    last: HashMap<[String; 3], u64>,
    records: u64,
    markers: u64,
    out_of_order: u64,
    duplicates: u64,
    passthrough: u64,
}

impl Check {
    /// Takes one record by its headers.
    fn see(&mut self, header: impl Fn(&str) -> Option<String>) {
        if header("tim-callback-command").as_deref() != Some("Group.CallbackAfterSendMsg") {
            self.passthrough += 1;
            return;
        }
        let key =
            ["tim-sdkappid", "tim-group-id", "tim-topic-id"].map(|h| header(h).unwrap_or_default());
        let group = key.join(" ").trim_end().to_owned();
        let seq: u64 = header("tim-msg-seq")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if header("tim-ordered").as_deref() == Some("skip") {
            self.markers += 1;
            let reason = header("tim-ordered-reason");
            eprintln!("marker: {group} seq {seq}: {}", reason.unwrap_or_default());
        } else {
            self.records += 1;
        }
        let Some(last) = self.last.get_mut(&key) else {
            self.last.insert(key, seq); // a group's first record
            return;
        };
        if seq == *last + 1 {
            *last = seq;
        } else if seq <= *last {
            self.duplicates += 1;
            eprintln!("duplicate: {group} seq {seq} after {last}");
        } else {
            self.out_of_order += 1;
            eprintln!("out of order: {group} seq {seq} after {last}");
            *last = seq;
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut check = Check::default();
    if let Err(e) = read(&args, &mut check).await {
        eprintln!("ordered_kafka: {e}");
        return ExitCode::from(2);
    }
    let seen = check.records + check.markers;
    println!(
        r#"{{"records":{},"markers":{},"groups":{},"out_of_order":{},"duplicates":{},"passthrough":{}}}"#,
        check.records,
        check.markers,
        check.last.len(),
        check.out_of_order,
        check.duplicates,
        check.passthrough
    );
    if check.out_of_order > 0 || check.duplicates > 0 {
        ExitCode::FAILURE
    } else if let Some(n) = args.expect.filter(|n| seen < *n) {
        eprintln!("ordered_kafka: stopped after {seen} of {n}");
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

/// Reads until `--expect`, `--idle` or Ctrl-C.
async fn read(args: &Args, check: &mut Check) -> Result<(), rdkafka::error::KafkaError> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", &args.group)
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    consumer.subscribe(&[&args.topic])?;
    while args
        .expect
        .is_none_or(|n| check.records + check.markers < n)
    {
        let idle = tokio::time::sleep(args.idle.unwrap_or(Duration::MAX));
        let message = tokio::select! {
            m = consumer.recv() => m?,
            _ = idle => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let headers = message.headers();
        check.see(|name| {
            let header = headers?.iter().find(|h| h.key == name)?;
            Some(String::from_utf8_lossy(header.value?).into_owned())
        });
    }
    Ok(())
}
