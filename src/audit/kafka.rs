//! The auditor on Kafka: the published topics read back by a consumer group (offsets committed
//! only after the checkpoint), and the per-group checkpoint in a topic of its own, keyed by
//! group (create it with `cleanup.policy=compact`: only each key's latest value counts; a
//! forgotten group is a tombstone).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::checkpoint::{decode, kv_key, Saved};
use super::consume::{observation, Observation};
use super::tracker::GroupKey;
use crate::sink::kafka::connection_config;
use crate::sink::KafkaConfig;
use rdkafka::consumer::ConsumerGroupMetadata;

pub struct KafkaFeed {
    consumer: StreamConsumer,
}

impl KafkaFeed {
    /// Joins consumer group `group` on `topics`, from the oldest record when it has no
    /// committed offsets yet; with `partitions` (a shard), takes those partitions of each topic
    /// itself (the group's committed offsets still apply) instead of the group's assignment.
    pub fn new(
        config: &KafkaConfig,
        group: &str,
        topics: &[String],
        partitions: Option<&[u32]>,
    ) -> Result<KafkaFeed, String> {
        let consumer: StreamConsumer = connection_config(config)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| format!("Kafka consumer: {e}"))?;
        match partitions {
            None => {
                let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
                consumer
                    .subscribe(&topics)
                    .map_err(|e| format!("Kafka subscribe {topics:?}: {e}"))?;
            }
            Some(partitions) => {
                let mut assignment = TopicPartitionList::new();
                for topic in topics {
                    for &p in partitions {
                        assignment
                            .add_partition_offset(topic, p as i32, Offset::Stored)
                            .map_err(|e| e.to_string())?;
                    }
                }
                consumer
                    .assign(&assignment)
                    .map_err(|e| format!("Kafka assign {topics:?} {partitions:?}: {e}"))?;
            }
        }
        Ok(KafkaFeed { consumer })
    }

    /// The next record: its group message, if it is one, and (`raw`) the record itself for
    /// the ordered stream.
    pub async fn next(
        &self,
        raw: bool,
    ) -> Result<(Option<Observation>, Option<super::ordered::Consumed>), String> {
        let message = self.consumer.recv().await.map_err(|e| e.to_string())?;
        let consumed = raw.then(|| super::ordered::Consumed {
            raw: super::ordered::kafka::raw(&message),
            at: super::ordered::entry::Position::Kafka {
                topic: message.topic().to_string(),
                partition: message.partition(),
                offset: message.offset(),
            },
            appended_ms: message
                .timestamp()
                .to_millis()
                .and_then(|ms| u64::try_from(ms).ok())
                .unwrap_or(0),
        });
        let payload = bytes::Bytes::copy_from_slice(message.payload().unwrap_or_default());
        // The record's headers are read once: from what the ordered stream keeps, when it does.
        let seen = match &consumed {
            Some(consumed) => observation(|name| consumed.raw.header(name), &payload),
            None => {
                let mut headers: HashMap<&str, String> = HashMap::new();
                if let Some(h) = message.headers() {
                    for header in h.iter() {
                        if let Some(value) = header.value {
                            headers.insert(header.key, String::from_utf8_lossy(value).into_owned());
                        }
                    }
                }
                observation(|name| headers.get(name).map(String::as_str), &payload)
            }
        };
        Ok((seen, consumed))
    }

    /// What was consumed so far, and the consumer group, for a transaction to commit (the
    /// ordered stream on Kafka).
    pub fn offsets(&self) -> (TopicPartitionList, Option<ConsumerGroupMetadata>) {
        let offsets = self.consumer.position().unwrap_or_default();
        // Partitions with nothing consumed yet have no offset to commit.
        let mut consumed = TopicPartitionList::new();
        for e in offsets.elements() {
            if let Offset::Offset(o) = e.offset() {
                let _ = consumed.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o));
            }
        }
        (consumed, self.consumer.group_metadata())
    }

    /// Commits what was consumed so far (called once the checkpoint includes it).
    pub fn commit(&self) {
        if let Err(err) = self.consumer.commit_consumer_state(CommitMode::Async) {
            // Nothing consumed yet, or the group is rebalancing: the next commit covers it.
            tracing::debug!(error = %err, "audit: Kafka offset commit");
        }
    }
}

pub struct TopicCheckpoint {
    producer: FutureProducer,
    config: ClientConfig,
    topic: String,
}

impl TopicCheckpoint {
    /// With `producer` (the ordered stream's transactional one), the checkpoint records are
    /// part of its transactions; else an idempotent producer of its own writes them.
    pub fn open(
        config: &KafkaConfig,
        topic: &str,
        producer: Option<FutureProducer>,
    ) -> Result<TopicCheckpoint, String> {
        let client = connection_config(config);
        let producer: FutureProducer = match producer {
            Some(producer) => producer,
            None => client
                .clone()
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .create()
                .map_err(|e| format!("Kafka checkpoint producer: {e}"))?,
        };
        Ok(TopicCheckpoint {
            producer,
            config: client,
            topic: topic.to_string(),
        })
    }

    /// Every group's latest state: the topic read from its beginning to its end.
    pub async fn load(&self) -> Result<Vec<Saved>, String> {
        let (config, topic) = (self.config.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || read_all(&config, &topic))
            .await
            .map_err(|e| e.to_string())?
    }

    pub async fn put(&self, key: &GroupKey, value: Vec<u8>) -> Result<(), String> {
        let id = kv_key(key);
        let record = FutureRecord::to(&self.topic).key(&id).payload(&value);
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e.to_string())
    }

    /// A tombstone: compaction drops the group's earlier states.
    pub async fn forget(&self, key: &GroupKey) -> Result<(), String> {
        let id = kv_key(key);
        let record = FutureRecord::<String, [u8]>::to(&self.topic).key(&id);
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e.to_string())
    }
}

fn read_all(config: &ClientConfig, topic: &str) -> Result<Vec<Saved>, String> {
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", "timbridge-audit-checkpoint-load")
        .set("enable.auto.commit", "false")
        // Checkpoint records of an aborted transaction (the ordered stream's) never count.
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("checkpoint topic {topic}: {e}"))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    if partitions == 0 {
        return Err(format!(
            "checkpoint topic {topic} does not exist: create it (cleanup.policy=compact)"
        ));
    }
    let mut assignment = TopicPartitionList::new();
    let mut high = HashMap::new();
    for p in 0..partitions as i32 {
        let (_, top) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        high.insert(p, top);
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    // Latest value per key, read up to the high watermarks (past the markers and aborted
    // records of transactions, which are never delivered); watermarks can lag a write on some
    // brokers, so read on until the topic stays quiet for a second past them.
    let reached = |consumer: &BaseConsumer| {
        consumer.position().is_ok_and(|position| {
            high.iter().all(|(&p, &top)| {
                top <= 0
                    || position
                        .find_partition(topic, p)
                        .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= top))
            })
        })
    };
    let mut latest: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    let mut idle = 0;
    while idle < 50 && !(idle >= 5 && reached(&consumer)) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                idle = 0;
                if let Some(key) = m.key() {
                    latest.insert(key.to_vec(), m.payload().map(<[u8]>::to_vec));
                }
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => idle += 1,
        }
    }
    Ok(latest
        .into_values()
        .flatten()
        .filter_map(|v| decode(&v))
        .collect())
}
