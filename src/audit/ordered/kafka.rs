//! The ordered stream on Kafka: a transactional producer (`transactional.id` per shard), the
//! Kafka Streams way. A transaction holds the ordered records released since the last commit,
//! the checkpoint records of the groups that changed, and the consumed offsets of the main
//! topics; every commit interval it commits, all or nothing. A consumer reading with
//! `isolation.level=read_committed` sees each seq once. A failed transaction is not retried
//! here: the auditor stops, and its next start resumes from the last commit (the new producer
//! fences the old one and aborts what it left open).

use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::entry::{self, Entry, Raw};
use crate::sink::kafka::connection_config;
use crate::sink::KafkaConfig;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct KafkaOutput {
    producer: FutureProducer,
    /// Without transactions (brokers that lack them): an idempotent producer, each commit
    /// only waiting for the delivery reports.
    transactional: bool,
    topic: String,
    /// For reading held records back.
    config: ClientConfig,
    in_flight: FuturesUnordered<Delivery>,
}

type Delivery = futures_util::future::BoxFuture<'static, (Entry, Result<(), String>)>;

impl KafkaOutput {
    /// The transactional producer `transactional_id` (`None`: an idempotent one, for brokers
    /// without transactions): fences an earlier instance with the same id (aborting what it
    /// left open), then opens the first transaction.
    pub async fn open(
        config: &KafkaConfig,
        topic: &str,
        transactional_id: Option<&str>,
    ) -> Result<KafkaOutput, String> {
        let mut client = connection_config(config);
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random");
        if let Some(id) = transactional_id {
            client.set("transactional.id", id).set(
                "transaction.timeout.ms",
                TXN_TIMEOUT.as_millis().to_string(),
            );
        }
        let producer: FutureProducer = client
            .create()
            .map_err(|e| format!("Kafka ordered producer: {e}"))?;
        if let Some(id) = transactional_id {
            let p = producer.clone();
            blocking(move || {
                p.init_transactions(TXN_TIMEOUT)?;
                p.begin_transaction()
            })
            .await
            .map_err(|e| format!("Kafka ordered producer {id}: {e}"))?;
        }
        Ok(KafkaOutput {
            producer,
            transactional: transactional_id.is_some(),
            topic: topic.to_string(),
            config: connection_config(config),
            in_flight: FuturesUnordered::new(),
        })
    }

    /// The transactional producer, for the checkpoint records of the same transaction.
    pub fn producer(&self) -> Option<FutureProducer> {
        self.transactional.then(|| self.producer.clone())
    }

    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    pub fn pending(&self) -> usize {
        self.in_flight.len()
    }

    /// Queues `entry` in the open transaction (librdkafka keeps each partition's order).
    pub async fn push(&mut self, entry: Entry) {
        let pairs = entry.headers.pairs();
        let mut headers = OwnedHeaders::new_with_capacity(pairs.len());
        for (name, value) in pairs {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        loop {
            let record = FutureRecord::to(&self.topic)
                .key(entry.key.as_bytes())
                .payload(entry.body.as_ref())
                .headers(headers.clone());
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.in_flight.push(Box::pin(delivered(entry, delivery)));
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((err, _)) => {
                    self.in_flight
                        .push(Box::pin(std::future::ready((entry, Err(err.to_string())))));
                    return;
                }
            }
        }
    }

    /// The next delivery report; `None` when none is outstanding.
    pub async fn next(&mut self) -> Option<(Entry, Result<(), String>)> {
        self.in_flight.next().await
    }

    /// Commits the open transaction with the consumed `offsets` of consumer group `group`,
    /// and opens the next one. An error is fatal: the transaction is not retried.
    pub async fn commit(
        &mut self,
        offsets: TopicPartitionList,
        group: Option<ConsumerGroupMetadata>,
    ) -> Result<(), String> {
        let p = self.producer.clone();
        blocking(move || {
            if let Some(group) = group {
                if offsets.count() > 0 {
                    p.send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)?;
                }
            }
            p.commit_transaction(TXN_TIMEOUT)?;
            p.begin_transaction()
        })
        .await
        .map_err(|e| format!("Kafka transaction: {e}"))
    }

    /// The client settings that read held records back (owned: used across awaits).
    pub fn reader(&self) -> ClientConfig {
        self.config.clone()
    }
}

/// A held record read back from `topic`/`partition` at `offset`.
pub async fn fetch_at(
    config: ClientConfig,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<Raw, String> {
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || fetch(&config, &topic, partition, offset))
        .await
        .map_err(|e| e.to_string())?
}

async fn delivered(entry: Entry, delivery: DeliveryFuture) -> (Entry, Result<(), String>) {
    let result = match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((err, _))) => Err(err.to_string()),
        Err(_) => Err("the producer went away".to_string()),
    };
    (entry, result)
}

async fn blocking(
    call: impl FnOnce() -> Result<(), KafkaError> + Send + 'static,
) -> Result<(), String> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

fn fetch(config: &ClientConfig, topic: &str, partition: i32, offset: i64) -> Result<Raw, String> {
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", "timbridge-audit-refetch")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(|e| e.to_string())?;
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.offset() == offset => return Ok(raw(&m)),
            Some(Ok(m)) if m.offset() > offset => break,
            Some(Ok(_)) | None => {}
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
    Err(format!("{topic}/{partition} offset {offset}: not found"))
}

/// A consumed Kafka message as the ordered stream republishes it.
pub fn raw(message: &impl Message) -> Raw {
    let mut headers = Vec::new();
    if let Some(h) = message.headers() {
        for header in h.iter() {
            if let Some(value) = header.value {
                headers.push((
                    header.key.to_string(),
                    String::from_utf8_lossy(value).into_owned(),
                ));
            }
        }
    }
    Raw {
        headers: entry::Headers::Pairs(headers),
        body: bytes::Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
    }
}
