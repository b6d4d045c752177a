//! The published stream, read back, whichever broker holds it: a JetStream durable pull
//! consumer (each message acknowledged once the checkpoint includes it) or a Kafka consumer
//! group (offsets committed then). [`open`] attaches it at start, with the checkpoint store on
//! the same broker.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::Message;
use futures_util::StreamExt;

use crate::sink::{KafkaConfig, NatsConfig, Sink, SinkConfig};

use super::backfill;
use super::checkpoint::{Checkpoint, Store};
use super::consume::{self, Observation};
use super::kafka::{KafkaFeed, TopicCheckpoint};
use super::ordered::entry::{Headers, Position, Raw};
use super::ordered::Consumed;
use super::{AuditConfig, Shard};

/// One record read: the group message it is (if it is one) and, when the ordered stream is
/// on, the record itself.
pub type Read = (Option<Observation>, Option<Consumed>);

/// What a consumer had delivered to an earlier instance (killed) and not seen acknowledged:
/// stream sequences above its ack floor up to its last delivered one, read again at start
/// straight from the stream instead of waiting out the ack wait for their redelivery (the
/// ordered stream cannot release a group past them). Their redelivery later is a repeat.
pub struct Replay {
    pub stream: async_nats::jetstream::stream::Stream,
    /// `(next, last, filter subject)` per consumer.
    pub ranges: Vec<(u64, u64, Option<String>)>,
}

impl Replay {
    async fn next(&mut self) -> Option<Read> {
        loop {
            let (next, last, filter) = self.ranges.last_mut()?;
            if *next > *last {
                self.ranges.pop();
                continue;
            }
            let seq = *next;
            *next += 1;
            let Ok(message) = self.stream.get_raw_message(seq).await else {
                continue; // deleted, or no longer kept
            };
            if let Some(filter) = filter {
                if !crate::sink::nats::subject_matches(filter, message.subject.as_str()) {
                    continue;
                }
            }
            let headers = Headers::Nats(message.headers);
            let seen = consume::observation(|name| headers.get(name), &message.payload);
            let appended_ms =
                u64::try_from(message.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
            let consumed = Consumed {
                raw: Raw {
                    headers,
                    body: message.payload,
                    key: None,
                },
                at: Position::Nats { stream_seq: seq },
                appended_ms,
            };
            return Some((seen, Some(consumed)));
        }
    }
}

// One per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Feed {
    Nats {
        /// One consumer's messages, or (sharded) those of one consumer per subject.
        messages: futures_util::stream::SelectAll<pull::Stream>,
        /// Consumed and not yet acknowledged, by stream sequence: a message redelivered while
        /// a checkpoint write keeps failing replaces its earlier copy instead of piling up.
        unacked: BTreeMap<u64, Message>,
        /// Keep each record for the ordered stream.
        raw: bool,
        /// Read first (the ordered stream only).
        replay: Option<Replay>,
        /// The acknowledgements of the last checkpoint, sent off the loop (one batch at a time).
        acking: Option<tokio::task::JoinHandle<()>>,
    },
    Kafka {
        feed: KafkaFeed,
        consumed: usize,
        raw: bool,
    },
}

impl Feed {
    /// The next record: `Some(Ok(..))` a record read, `Some(Err(..))` a consumer error (go
    /// on), `None` the stream ended.
    pub async fn next(&mut self) -> Option<Result<Read, String>> {
        match self {
            Feed::Nats {
                messages,
                unacked,
                raw,
                replay,
                ..
            } => {
                if let Some(r) = replay {
                    match r.next().await {
                        Some(read) => return Some(Ok(read)),
                        None => {
                            tracing::info!(
                                "audit: what the last run had not acknowledged was read again"
                            );
                            *replay = None;
                        }
                    }
                }
                match messages.next().await? {
                    Ok(mut message) => {
                        let seen = consume::observe(&message);
                        let (seq, appended_ms) = message.info().map_or((u64::MAX, 0), |info| {
                            let ms = info.published.unix_timestamp_nanos() / 1_000_000;
                            (info.stream_sequence, u64::try_from(ms).unwrap_or(0))
                        });
                        // The ordered stream republishes the headers: taken, not copied (the
                        // message is kept for its acknowledgement only).
                        let consumed = raw.then(|| Consumed {
                            raw: Raw {
                                headers: Headers::Nats(
                                    message.message.headers.take().unwrap_or_default(),
                                ),
                                body: message.payload.clone(),
                                key: None,
                            },
                            at: Position::Nats { stream_seq: seq },
                            appended_ms,
                        });
                        unacked.insert(seq, message);
                        Some(Ok((seen, consumed)))
                    }
                    Err(err) => Some(Err(err.to_string())),
                }
            }
            Feed::Kafka {
                feed,
                consumed,
                raw,
            } => {
                let next = feed.next(*raw).await;
                if next.is_ok() {
                    *consumed += 1;
                }
                Some(next)
            }
        }
    }

    /// Waits for the acknowledgements sent off the loop (before the auditor exits).
    pub async fn settle(&mut self) {
        if let Feed::Nats { acking, .. } = self {
            if let Some(previous) = acking.take() {
                let _ = previous.await;
            }
        }
    }

    /// Records consumed since the last commit.
    pub fn pending(&self) -> usize {
        match self {
            Feed::Nats { unacked, .. } => unacked.len(),
            Feed::Kafka { consumed, .. } => *consumed,
        }
    }

    /// Kafka: the consumed offsets, for the ordered stream's transaction (which commits them
    /// instead of [`Feed::commit`]).
    pub fn offsets(
        &mut self,
    ) -> Option<(
        rdkafka::TopicPartitionList,
        Option<rdkafka::consumer::ConsumerGroupMetadata>,
    )> {
        match self {
            Feed::Nats { .. } => None,
            Feed::Kafka { feed, consumed, .. } => {
                *consumed = 0;
                Some(feed.offsets())
            }
        }
    }

    /// Acknowledges (commits) everything consumed so far: call only once it is checkpointed.
    /// On NATS the acknowledgements go out from a task of their own (thousands a second, one
    /// publish each: the loop would consume nothing meanwhile); the previous batch is waited
    /// for first, so at most one is outstanding.
    pub async fn commit(&mut self) {
        match self {
            Feed::Nats {
                unacked, acking, ..
            } => {
                if let Some(previous) = acking.take() {
                    let _ = previous.await;
                }
                let batch = std::mem::take(unacked);
                if !batch.is_empty() {
                    *acking = Some(tokio::spawn(async move {
                        for (_, message) in batch {
                            let _ = message.ack().await;
                        }
                    }));
                }
            }
            Feed::Kafka { feed, consumed, .. } => {
                if *consumed > 0 {
                    feed.commit();
                    *consumed = 0;
                }
            }
        }
    }
}

/// The consumer of the published stream and the checkpoint store, on the sink's broker (on
/// Kafka written by `producer` when given: the ordered stream's transactional one).
pub async fn open(
    config: &AuditConfig,
    sink: &Sink,
    producer: Option<rdkafka::producer::FutureProducer>,
) -> Result<(Feed, Store), String> {
    match (&config.sink, sink) {
        (SinkConfig::Nats(nats), Sink::Nats(connected)) => {
            open_nats(config, nats, connected.jetstream()).await
        }
        (SinkConfig::Kafka(kafka), Sink::Kafka(_)) => open_kafka(config, kafka, producer),
        _ => Err("--sink: the auditor reads NATS or Kafka".into()),
    }
}

/// One durable pull consumer per filter (the whole stream, or each subject of the shard's
/// partitions), what the last run left unacknowledged to read again, and the KV checkpoint.
async fn open_nats(
    config: &AuditConfig,
    nats: &NatsConfig,
    js: async_nats::jetstream::Context,
) -> Result<(Feed, Store), String> {
    let raw = config.ordered.is_some();
    let filters = filters(config, nats);
    let mut streams = Vec::with_capacity(filters.len());
    let mut replay = Vec::new();
    for filter in filters {
        let name = match &filter {
            None => config.consumer.clone(),
            Some(subject) => format!("{}-{}", config.consumer, consume::name_part(subject)),
        };
        // The stream exists once the first bridge (or this sink's keeper) created it.
        let consumer = loop {
            let made = consume::consumer(
                &js,
                &nats.stream,
                &name,
                filter.clone(),
                config.max_ack_pending,
            );
            match made.await {
                Ok(consumer) => break consumer,
                Err(err) => {
                    tracing::warn!(error = %err, "audit: waiting for the stream");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let info = consumer.cached_info();
        let (floor, delivered) = (
            info.ack_floor.stream_sequence,
            info.delivered.stream_sequence,
        );
        if raw && delivered > floor {
            replay.push((floor + 1, delivered, filter.clone()));
        }
        streams.push(
            consumer
                .stream()
                .max_messages_per_batch(512)
                .messages()
                .await
                .map_err(|e| format!("consumer: {e}"))?,
        );
    }
    let store = Store::Kv(Checkpoint::open(&js, &config.state_bucket).await?);
    let replay = if replay.is_empty() {
        None
    } else {
        let stream = js
            .get_stream(&nats.stream)
            .await
            .map_err(|e| format!("stream {}: {e}", nats.stream))?;
        tracing::info!(ranges = ?replay, "audit: reading again what the last run had not acknowledged");
        Some(Replay {
            stream,
            ranges: replay,
        })
    };
    let feed = Feed::Nats {
        messages: futures_util::stream::select_all(streams),
        unacked: BTreeMap::new(),
        raw,
        replay,
        acking: None,
    };
    Ok((feed, store))
}

/// One consumer for the whole stream (`None`); with shards, one per subject of the shard's
/// partitions (a 2.9 server filters on one subject per consumer).
fn filters(config: &AuditConfig, nats: &NatsConfig) -> Vec<Option<String>> {
    if config.shard == Shard::ALL {
        vec![None]
    } else {
        let mut subjects: Vec<String> = config
            .shard
            .partitions(config.partitions)
            .into_iter()
            .flat_map(|p| {
                config.apps.iter().map(move |app| {
                    app.destination.as_ref().unwrap_or(&nats.subject).render(
                        backfill::COMMAND,
                        p,
                        app.sdkappid,
                    )
                })
            })
            .collect();
        subjects.sort();
        subjects.dedup();
        subjects.into_iter().map(Some).collect()
    }
}

/// The consumer group on the group messages' topics (the shard's partitions only) and the
/// compacted checkpoint topic.
fn open_kafka(
    config: &AuditConfig,
    kafka: &KafkaConfig,
    producer: Option<rdkafka::producer::FutureProducer>,
) -> Result<(Feed, Store), String> {
    let raw = config.ordered.is_some();
    // The topics group messages go to: the sink's template, and the apps' own.
    let mut topics: Vec<String> = config
        .apps
        .iter()
        .map(|app| {
            app.destination.as_ref().unwrap_or(&kafka.topic).render(
                backfill::COMMAND,
                0,
                app.sdkappid,
            )
        })
        .collect();
    topics.sort();
    topics.dedup();
    let shard = (config.shard != Shard::ALL).then(|| config.shard.partitions(config.partitions));
    let feed = Feed::Kafka {
        feed: KafkaFeed::new(kafka, &config.consumer, &topics, shard.as_deref())?,
        consumed: 0,
        raw,
    };
    let store = Store::Topic(TopicCheckpoint::open(kafka, &config.state_topic, producer)?);
    Ok((feed, store))
}
