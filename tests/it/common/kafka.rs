//! A real Kafka-protocol broker (tansu) on an ephemeral loopback port, rdkafka's MockCluster for
//! fault injection, and a consumer that reads back what the bridge produced.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

pub struct Tansu {
    port: u16,
    storage: String,
    child: Option<Child>,
}

fn tansu_binary() -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo_bin = format!("{home}/.cargo/bin/tansu");
    if std::path::Path::new(&cargo_bin).exists() {
        cargo_bin
    } else {
        "tansu".into()
    }
}

impl Tansu {
    /// Starts a tansu broker keeping its data in memory.
    pub fn start() -> Tansu {
        Tansu::start_with_storage("memory://tansu/")
    }

    pub fn start_with_storage(storage: &str) -> Tansu {
        let mut broker = Tansu {
            port: super::free_port(),
            storage: storage.to_owned(),
            child: None,
        };
        broker.run();
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &self.storage])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts (install it: cargo install tansu --locked --features dynostore)");
        self.child = Some(child);
        super::wait_listening(self.port, "tansu", Duration::from_secs(20));
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(tansu_binary())
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
            ])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .stdout(Stdio::null())
            .status()
            .expect("tansu topic create runs");
        assert!(status.success(), "creating topic {name}");
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The bridge in-process with the Kafka sink on `bootstrap` (plus `extra` flags), ready.
pub async fn start_bridge(bootstrap: &str, extra: &[&str]) -> timbridge::Bridge {
    let mut flags = vec!["--sink", "kafka", "--kafka-brokers", bootstrap];
    if !extra.contains(&"--config") {
        flags.extend_from_slice(&["--sdkappid", "1400000000"]);
    }
    flags.extend_from_slice(extra);
    let bridge = super::start(&flags).await;
    super::wait_readyz(bridge.admin_addr(), 200, Duration::from_secs(20)).await;
    bridge
}

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads `topic`'s partitions from the beginning until `expected` records arrived (or the
/// deadline passed); returns them grouped by partition, in offset order.
pub fn consume(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    deadline: Duration,
) -> Vec<Record> {
    consume_topics(bootstrap, &[topic], partitions, expected, deadline)
}

/// As [`consume`], over several topics at once (one consumer, one quiet period).
pub fn consume_topics(
    bootstrap: &str,
    topics: &[&str],
    partitions: i32,
    expected: usize,
    deadline: Duration,
) -> Vec<Record> {
    consume_isolated(
        bootstrap,
        topics,
        partitions,
        expected,
        deadline,
        "read_uncommitted",
    )
}

/// As [`consume_topics`] over 16 partitions, as a transactional consumer reads:
/// `isolation.level=read_committed` (records of open or aborted transactions never show).
pub fn consume_committed(
    bootstrap: &str,
    topics: &[&str],
    expected: usize,
    deadline: Duration,
) -> Vec<Record> {
    consume_isolated(bootstrap, topics, 16, expected, deadline, "read_committed")
}

fn consume_isolated(
    bootstrap: &str,
    topics: &[&str],
    partitions: i32,
    expected: usize,
    deadline: Duration,
    isolation: &str,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("timbridge-test-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&assignment).expect("assign");
    // Read until at least `expected` records arrived and then nothing more for 2 s: a count
    // alone can be reached early when a topic also holds messages answered 503 (at least once)
    // while a slower partition has not been read to its end yet.
    let mut out = Vec::new();
    let end = Instant::now() + deadline;
    let mut last_record = Instant::now();
    while Instant::now() < end
        && (out.len() < expected || last_record.elapsed() < Duration::from_secs(2))
    {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_record = Instant::now();
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().unwrap_or_default().to_vec(),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(e)) => eprintln!("consumer error: {e}"),
            None => {}
        }
    }
    out.sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    out
}
