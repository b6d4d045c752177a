//! A consumer of timbridge's ordered stream on NATS JetStream (`timbridge audit --ordered-subject`).
//!
//! It keeps nothing but the last MsgSeq of each group (sdkappid + group + topic, from the `tim-*`
//! headers) and checks that every group record (`tim-callback-command:
//! Group.CallbackAfterSendMsg`) is the next one: `seq == last + 1`. A `tim-ordered: skip` marker
//! stands for a seq that has no message (a system notice, a deleted or expired message, ...); it
//! takes its seq like a message does. Other commands are passed through, and only counted.
//!
//! Run it:
//!
//! ```text
//! cargo run --example ordered_nats -- --nats-url nats://127.0.0.1:4222 \
//!     [--stream TIM_ORDERED] [--durable NAME] [--expect N] [--idle 5s]
//! ```
//!
//! Without `--durable` it reads the whole stream through an ephemeral ordered consumer; with it, a
//! durable pull consumer of that name resumes where it acked. It stops after `--expect` group
//! records and markers, after `--idle` without a record, or on Ctrl-C, and prints one JSON line on
//! stdout (markers and problems go to stderr):
//! `{"records":..,"markers":..,"groups":..,"out_of_order":..,"duplicates":..,"passthrough":..}`.
//! Exit status: 0 in order; 1 a record out of order or a duplicate (`seq <= last`); 2 an error;
//! 3 stopped (idle or Ctrl-C) before `--expect` was reached.
//!
//! Group messages of apps the auditor has no REST credentials for are passed through in arrival
//! order, not ordered: a consumer of such apps should not hold them to this check.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use clap::Parser;
use futures_util::stream::{BoxStream, StreamExt};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    nats_url: String,
    #[arg(long, default_value = "TIM_ORDERED")]
    stream: String,
    /// Read through a durable consumer of this name (acking each record).
    #[arg(long)]
    durable: Option<String>,
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
        eprintln!("ordered_nats: {e}");
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
        eprintln!("ordered_nats: stopped after {seen} of {n}");
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

/// Reads until `--expect`, `--idle` or Ctrl-C.
async fn read(args: &Args, check: &mut Check) -> Result<(), async_nats::Error> {
    let js = jetstream::new(async_nats::connect(&args.nats_url).await?);
    let stream = js.get_stream(&args.stream).await?;
    let mut messages: BoxStream<'static, Result<jetstream::Message, async_nats::Error>> =
        match &args.durable {
            Some(name) => {
                let config = consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    ..Default::default()
                };
                let c = stream.get_or_create_consumer(name, config).await?;
                c.messages().await?.map(|m| m.map_err(Into::into)).boxed()
            }
            None => {
                let c = stream
                    .create_consumer(consumer::pull::OrderedConfig::default())
                    .await?;
                c.messages().await?.map(|m| m.map_err(Into::into)).boxed()
            }
        };
    while args
        .expect
        .is_none_or(|n| check.records + check.markers < n)
    {
        let idle = tokio::time::sleep(args.idle.unwrap_or(Duration::MAX));
        let message: jetstream::Message = tokio::select! {
            m = messages.next() => match m {
                Some(m) => m?,
                None => break,
            },
            _ = idle => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let headers = message.headers.clone().unwrap_or_default();
        check.see(|name| headers.get(name).map(|v| v.as_str().to_owned()));
        if args.durable.is_some() {
            message.ack().await?;
        }
    }
    Ok(())
}
