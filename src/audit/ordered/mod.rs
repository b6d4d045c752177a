//! The ordered stream: each group's MsgSeqs once, strictly in order, every seq a message or a
//! marker saying why it is gone. In the order the data flows:
//!
//! ```text
//!  the main stream, consumed by the auditor ──▶ offer: a group message is held in its
//!     group's line (line.rs) until every seq below it went; another record passes through
//!  a repaired gap ──▶ markers for its seqs that are gone (system, deleted, no_history, ...);
//!     its backfills come back through the main stream like live records
//!  release ──▶ entry.rs: the record as it was, or a marker ──▶ output: nats.rs (Nats-Msg-Id,
//!     one entry per group in flight) or kafka.rs (a transaction per commit interval)
//!  checkpoint: each group's line (released point, held seqs by main-stream position) goes
//!     with the tracker's state; NATS saves it only once every earlier publish was stored
//! ```
//!
//! Memory: held bodies are bounded by `--ordered-max-held-bytes`; past it the oldest hole is
//! looked up at once and bodies are dropped, to be read back from the main stream by position
//! when their seq is released.

pub mod entry;
pub mod kafka;
pub mod line;
pub mod metrics;
pub mod nats;

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::TopicPartitionList;

use super::tracker::GroupKey;
use crate::core::deliver::{Ack, StoredAt};
use crate::core::Record;
use crate::wire::Template;
use entry::{Entry, Kind, Position, Raw, Skip};
use line::{Held, Line, Offered, What};
use metrics::OrderedMetrics;

#[derive(Debug, Clone)]
pub struct OrderedConfig {
    pub output: OutputConfig,
    pub max_held_bytes: usize,
    /// Entries handed to the output and not yet stored, at most (the loop stops consuming).
    pub max_inflight: usize,
}

#[derive(Debug, Clone)]
pub enum OutputConfig {
    Nats {
        subject: Template,
        stream: String,
        duplicate_window: Duration,
    },
    Kafka {
        topic: String,
        commit_interval: Duration,
        /// Exactly once through transactions; off for brokers without them (a restart may
        /// then repeat what was released since the last checkpoint).
        transactions: bool,
    },
}

// One per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Output {
    Nats(nats::NatsOutput),
    Kafka(kafka::KafkaOutput),
}

/// A record consumed from the main stream, for the ordered stream.
pub struct Consumed {
    pub raw: Raw,
    pub at: Position,
    pub appended_ms: u64,
}

pub struct Orderer {
    lines: HashMap<GroupKey, Line>,
    output: Output,
    metrics: OrderedMetrics,
    /// Bodies held in memory, bytes.
    held_bytes: usize,
    held_records: usize,
    max_held_bytes: usize,
    max_inflight: usize,
    /// `released_total` by kind: message, marker, passthrough (looked up once).
    released: [prometheus::IntCounter; 3],
}

impl Orderer {
    pub fn new(output: Output, config: &OrderedConfig, metrics: OrderedMetrics) -> Orderer {
        let released = ["message", "marker", "passthrough"]
            .map(|kind| metrics.released.with_label_values(&[kind]));
        Orderer {
            lines: HashMap::new(),
            output,
            metrics,
            held_bytes: 0,
            held_records: 0,
            max_held_bytes: config.max_held_bytes,
            max_inflight: config.max_inflight.max(1),
            released,
        }
    }

    /// A group's line from the checkpoint.
    pub fn restore(&mut self, key: GroupKey, line: Line) {
        self.held_records += line.held.len();
        self.lines.insert(key, line);
        self.update_gauges();
    }

    pub fn line(&self, key: &GroupKey) -> Option<&Line> {
        self.lines.get(key)
    }

    /// Whether records of `key` wait behind a hole (the group must stay tracked).
    pub fn holds(&self, key: &GroupKey) -> bool {
        self.lines.get(key).is_some_and(|l| !l.held.is_empty())
    }

    /// The group left the tracker: what it still holds goes out in seq order, past its holes
    /// (a consumer sees the jump), rather than never.
    pub async fn forget(&mut self, key: &GroupKey) -> Result<(), String> {
        let Some(mut line) = self.lines.remove(key) else {
            return Ok(());
        };
        if !line.held.is_empty() {
            tracing::warn!(group = %key.group, held = line.held.len(), released = line.released,
                "audit: a group evicted with records held: they go out past the hole");
            let held = std::mem::take(&mut line.held);
            for (seq, held) in held {
                self.held_records -= 1;
                self.held_bytes -= held.bytes();
                self.send(key, seq, held).await?;
            }
        }
        self.update_gauges();
        Ok(())
    }

    /// The output is full: stop consuming until it stores something.
    pub fn busy(&self) -> bool {
        self.pending() >= self.max_inflight
    }

    fn pending(&self) -> usize {
        match &self.output {
            Output::Nats(out) => out.pending(),
            Output::Kafka(out) => out.pending(),
        }
    }

    /// A group message of `key` at `seq`, consumed from the main stream.
    pub async fn offer(
        &mut self,
        key: &GroupKey,
        seq: u64,
        record: Consumed,
    ) -> Result<(), String> {
        self.hold(key, seq, record, true).await
    }

    /// Holds `record` (its body in memory when `keep`, else read back at release) and releases
    /// what can go.
    async fn hold(
        &mut self,
        key: &GroupKey,
        seq: u64,
        record: Consumed,
        keep: bool,
    ) -> Result<(), String> {
        if !self.lines.contains_key(key) {
            self.lines.insert(key.clone(), Line::starting_at(seq));
        }
        let line = self.lines.get_mut(key).expect("inserted above");
        if keep && line.pass(seq) {
            let entry = entry::message(key, seq, record.raw, record.appended_ms);
            return self.push(entry).await;
        }
        let raw = keep.then(|| Box::new(record.raw));
        let bytes = raw.as_ref().map_or(0, |r| r.bytes());
        let held = Held {
            since_ms: super::repair::now_ms(),
            what: What::Record {
                at: record.at,
                appended_ms: record.appended_ms,
                raw,
            },
        };
        if line.offer(seq, held) == Offered::Duplicate {
            self.metrics.duplicates.inc();
            return Ok(());
        }
        self.held_records += 1;
        self.held_bytes += bytes;
        self.release(key).await
    }

    /// A record the auditor backfilled for `key` at `seq`, where the broker keeps it: held like
    /// one consumed (its copy in the main stream is then a duplicate). When the broker already
    /// had the seq (a live record JetStream kept instead), that record is read back from the
    /// main stream at release, so the ordered stream holds what the main stream holds. Without
    /// a place to read it from, the copy in the main stream is waited for instead.
    pub async fn backfilled(
        &mut self,
        key: &GroupKey,
        seq: u64,
        record: Record,
        ack: Ack,
    ) -> Result<(), String> {
        let at = match ack.stored_at {
            Some(StoredAt::Stream(stream_seq)) => Position::Nats { stream_seq },
            Some(StoredAt::Partition(partition, offset)) => Position::Kafka {
                topic: record.destination.clone(),
                partition,
                offset,
            },
            None => return Ok(()),
        };
        let raw = Raw {
            headers: entry::Headers::Pairs(
                record
                    .headers
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.clone()))
                    .collect(),
            ),
            body: record.body,
            key: Some(record.key),
        };
        let consumed = Consumed {
            raw,
            at,
            appended_ms: super::repair::now_ms(),
        };
        self.hold(key, seq, consumed, !ack.duplicate).await
    }

    /// Seqs of `key` that are gone, with why (a repaired gap's unrecoverable and settled seqs).
    pub async fn skip(&mut self, key: &GroupKey, seqs: &[(u64, Skip)]) -> Result<(), String> {
        let Some(line) = self.lines.get_mut(key) else {
            return Ok(());
        };
        let now = super::repair::now_ms();
        for &(seq, reason) in seqs {
            let held = Held {
                since_ms: now,
                what: What::Marker(reason),
            };
            if line.offer(seq, held) == Offered::Held {
                self.held_records += 1;
            }
        }
        self.release(key).await
    }

    /// A record that is not an audited group message: out in arrival order.
    pub async fn pass(&mut self, record: Consumed) -> Result<(), String> {
        self.push(entry::passthrough(record.raw, record.appended_ms))
            .await
    }

    async fn release(&mut self, key: &GroupKey) -> Result<(), String> {
        let Some(line) = self.lines.get_mut(key) else {
            return Ok(());
        };
        let ready = line.ready();
        for (seq, held) in ready {
            self.held_records -= 1;
            self.held_bytes -= held.bytes();
            self.send(key, seq, held).await?;
        }
        self.update_gauges();
        Ok(())
    }

    async fn send(&mut self, key: &GroupKey, seq: u64, held: Held) -> Result<(), String> {
        let entry = match held.what {
            What::Marker(reason) => entry::marker(key, seq, reason),
            What::Record {
                raw: Some(raw),
                appended_ms,
                ..
            } => entry::message(key, seq, *raw, appended_ms),
            What::Record {
                raw: None,
                at,
                appended_ms,
            } => {
                let raw = fetch(&self.main_reader(), &at).await?;
                self.metrics.refetched.inc();
                entry::message(key, seq, raw, appended_ms)
            }
        };
        self.push(entry).await
    }

    fn main_reader(&self) -> MainReader {
        match &self.output {
            Output::Nats(out) => MainReader::Nats(out.reader()),
            Output::Kafka(out) => MainReader::Kafka(out.reader()),
        }
    }

    async fn push(&mut self, entry: Entry) -> Result<(), String> {
        match &mut self.output {
            Output::Nats(out) => out.push(entry),
            Output::Kafka(out) => out.push(entry).await,
        }
        Ok(())
    }

    /// Waits for one entry to be stored and counts it; `Ok(false)` when none was pending.
    pub async fn stored(&mut self) -> Result<bool, String> {
        let entry = match &mut self.output {
            Output::Nats(out) => match out.next().await {
                Some(published) => {
                    self.metrics.publish_failures.inc_by(published.failures);
                    published.entry
                }
                None => return Ok(false),
            },
            Output::Kafka(out) => match out.next().await {
                Some((entry, Ok(()))) => entry,
                Some((_, Err(err))) => return Err(format!("Kafka ordered publish: {err}")),
                None => return Ok(false),
            },
        };
        let kind = match entry.kind {
            Kind::Message => 0,
            Kind::Marker(reason) => {
                self.metrics
                    .markers
                    .with_label_values(&[reason.label()])
                    .inc();
                1
            }
            Kind::Passthrough => 2,
        };
        self.released[kind].inc();
        if let Some(appended) = entry.appended_ms {
            let now = super::repair::now_ms();
            self.metrics
                .latency
                .observe(now.saturating_sub(appended) as f64 / 1000.0);
        }
        Ok(true)
    }

    pub fn has_pending(&self) -> bool {
        self.pending() > 0
    }

    /// Waits until everything handed to the output is stored: a checkpoint's released points
    /// must not run ahead of the stream.
    pub async fn flush(&mut self) -> Result<(), String> {
        while self.stored().await? {}
        Ok(())
    }

    /// Kafka: commits the transaction (the checkpoint records already sent in it) with the
    /// consumed offsets. NATS: nothing (its entries are stored one by one).
    pub async fn commit(
        &mut self,
        offsets: Option<(TopicPartitionList, Option<ConsumerGroupMetadata>)>,
    ) -> Result<(), String> {
        match (&mut self.output, offsets) {
            (Output::Kafka(out), Some((offsets, group))) => out.commit(offsets, group).await,
            (Output::Kafka(out), None) => out.commit(TopicPartitionList::new(), None).await,
            (Output::Nats(_), _) => Ok(()),
        }
    }

    /// Kafka with transactions: the checkpoint and the consumed offsets commit with the
    /// ordered records.
    pub fn is_transactional(&self) -> bool {
        matches!(&self.output, Output::Kafka(out) if out.is_transactional())
    }

    /// The transactional producer (Kafka), for the checkpoint records.
    pub fn kafka_producer(&self) -> Option<rdkafka::producer::FutureProducer> {
        match &self.output {
            Output::Kafka(out) => out.producer(),
            Output::Nats(_) => None,
        }
    }

    /// Over the memory bound: which group's hole to look up at once (the oldest), after
    /// dropping held bodies until the bound has a quarter to spare.
    pub fn shed(&mut self) -> Option<GroupKey> {
        if self.held_bytes <= self.max_held_bytes {
            return None;
        }
        let oldest = self.oldest_hole().map(|(key, _)| key.clone());
        let target = self.max_held_bytes / 4 * 3;
        for line in self.lines.values_mut() {
            if self.held_bytes <= target {
                break;
            }
            self.held_bytes -= line.drop_bodies();
        }
        tracing::info!(
            held_bytes = self.held_bytes,
            "audit: held bodies dropped from memory (read back when released)"
        );
        self.update_gauges();
        oldest
    }

    /// The group whose hole has waited longest, and since when (ms).
    pub fn oldest_hole(&self) -> Option<(&GroupKey, u64)> {
        self.lines
            .iter()
            .filter_map(|(key, line)| Some((key, line.hole_since()?)))
            .min_by_key(|(_, since)| *since)
    }

    /// Updates the oldest hole's age.
    pub fn tick(&self, now_ms: u64) {
        let age = self
            .oldest_hole()
            .map_or(0, |(_, since)| now_ms.saturating_sub(since) / 1000);
        self.metrics.oldest_hole.set(age as i64);
    }

    fn update_gauges(&self) {
        self.metrics.held_records.set(self.held_records as i64);
        self.metrics.held_bytes.set(self.held_bytes as i64);
    }
}

/// Reads held records back from the main stream; owned, so no borrow of the output is held
/// across its awaits.
enum MainReader {
    Nats(nats::MainReader),
    Kafka(rdkafka::ClientConfig),
}

/// Reads a held record back from the main stream, trying for a while: the main stream's
/// broker is the output's too, and may be restarting.
async fn fetch(reader: &MainReader, at: &Position) -> Result<Raw, String> {
    let mut last = String::new();
    for attempt in 0..30u32 {
        let got = match (reader, at) {
            (MainReader::Nats(r), Position::Nats { stream_seq }) => r.fetch(*stream_seq).await,
            (
                MainReader::Kafka(config),
                Position::Kafka {
                    topic,
                    partition,
                    offset,
                },
            ) => kafka::fetch_at(config.clone(), topic, *partition, *offset).await,
            _ => return Err(format!("a held record at {at:?} is not on this broker")),
        };
        match got {
            Ok(raw) => return Ok(raw),
            Err(err) => {
                tracing::warn!(error = %err, attempt, "audit: reading a held record back failed");
                last = err;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(format!(
        "a held record could not be read back from the main stream ({last}): is its retention shorter than the hole?"
    ))
}

/// The ordered stream's output, opened on the auditor's broker.
pub async fn open(
    config: &OrderedConfig,
    sink: &crate::sink::SinkConfig,
    js: Option<async_nats::jetstream::Context>,
    partitions: u32,
    transactional_id: &str,
) -> Result<Output, String> {
    match (&config.output, sink) {
        (
            OutputConfig::Nats {
                subject,
                stream,
                duplicate_window,
            },
            crate::sink::SinkConfig::Nats(nats),
        ) => {
            let js = js.ok_or("the ordered stream on NATS needs the NATS sink")?;
            let settings = nats::StreamSettings {
                name: stream.clone(),
                duplicate_window: *duplicate_window,
            };
            Ok(Output::Nats(
                nats::NatsOutput::open(js, subject.clone(), partitions, &nats.stream, &settings)
                    .await?,
            ))
        }
        (
            OutputConfig::Kafka {
                topic,
                transactions,
                ..
            },
            crate::sink::SinkConfig::Kafka(kafka),
        ) => {
            let id = transactions.then_some(transactional_id);
            Ok(Output::Kafka(
                kafka::KafkaOutput::open(kafka, topic, id).await?,
            ))
        }
        _ => {
            Err("--ordered-subject goes with --sink nats, --ordered-topic with --sink kafka".into())
        }
    }
}
