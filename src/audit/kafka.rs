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

use super::checkpoint::{decode, encode, kv_key};
use super::consume::{observation, Observation};
use super::tracker::{GroupKey, GroupState};
use crate::sink::kafka::connection_config;
use crate::sink::KafkaConfig;

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

    /// The next record: its group message, if it is one.
    pub async fn next(&self) -> Result<Option<Observation>, String> {
        let message = self.consumer.recv().await.map_err(|e| e.to_string())?;
        let mut headers: HashMap<&str, String> = HashMap::new();
        if let Some(h) = message.headers() {
            for header in h.iter() {
                if let Some(value) = header.value {
                    headers.insert(header.key, String::from_utf8_lossy(value).into_owned());
                }
            }
        }
        Ok(observation(
            |name| headers.get(name).map(String::as_str),
            message.payload().unwrap_or_default(),
        ))
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
    pub fn open(config: &KafkaConfig, topic: &str) -> Result<TopicCheckpoint, String> {
        let client = connection_config(config);
        let producer: FutureProducer = client
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .map_err(|e| format!("Kafka checkpoint producer: {e}"))?;
        Ok(TopicCheckpoint {
            producer,
            config: client,
            topic: topic.to_string(),
        })
    }

    /// Every group's latest state: the topic read from its beginning to its end.
    pub async fn load(&self) -> Result<Vec<(GroupKey, GroupState)>, String> {
        let (config, topic) = (self.config.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || read_all(&config, &topic))
            .await
            .map_err(|e| e.to_string())?
    }

    pub async fn save(&self, key: &GroupKey, state: &GroupState) -> Result<(), String> {
        let (id, value) = (kv_key(key), encode(key, state));
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

fn read_all(config: &ClientConfig, topic: &str) -> Result<Vec<(GroupKey, GroupState)>, String> {
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", "timbridge-audit-checkpoint-load")
        .set("enable.auto.commit", "false")
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
    let mut total = 0;
    for p in 0..partitions as i32 {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        total += (high - low).max(0);
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    // Latest value per key; watermarks can lag a write on some brokers, so read on until the
    // topic stays quiet for a second past them.
    let mut latest: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    let (mut read, mut idle) = (0i64, 0);
    while (read < total && idle < 50) || (read >= total && idle < 5) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                idle = 0;
                read += 1;
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
