//! Reads the stream or topic back and checks it against what runs sent: every message answered
//! 200 present once, each group's messages in MsgSeq order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;

/// One run's record of what it sent: per group, the last MsgSeq sent and the ones not answered
/// 200 (which may legitimately be missing).
#[derive(Debug, Default, serde::Deserialize)]
pub struct Expected {
    pub last_seq: BTreeMap<String, u64>,
    #[serde(default)]
    pub not_ok: BTreeMap<String, Vec<u64>>,
    /// Left out on purpose (`--skip-percent`): missing unless an auditor backfilled them.
    #[serde(default)]
    pub skipped: BTreeMap<String, Vec<u64>>,
    /// System notices: never in the stream.
    #[serde(default)]
    pub system: BTreeMap<String, Vec<u64>>,
}

/// One stored group message: group, MsgSeq, and whether the auditor published it
/// (`tim-source: backfill`, which comes after later seqs by nature).
pub type StoredMessage = (String, u64, bool);

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub messages: u64,
    pub groups: usize,
    pub missing: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Records published by the auditor (`tim-source: backfill`); not counted as out of order.
    pub backfilled: u64,
    /// Messages of groups no run sent (other traffic in the same stream).
    pub unexpected: u64,
    /// The first problems found, for a look.
    pub examples: Vec<String>,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.out_of_order == 0
    }
}

/// Compares `stored` in broker order with what was expected. Skipped seqs must be there when
/// `skipped_must_arrive` (an auditor ran), and may be missing otherwise.
pub fn check(expected: &[Expected], stored: &[StoredMessage], skipped_must_arrive: bool) -> Report {
    let mut report = Report {
        messages: stored.len() as u64,
        ..Report::default()
    };
    let mut last_seq: HashMap<&str, u64> = HashMap::new();
    let mut allowed_missing: HashSet<(&str, u64)> = HashSet::new();
    for e in expected {
        for (g, s) in &e.last_seq {
            last_seq.insert(g, *s);
        }
        for (g, seqs) in &e.not_ok {
            allowed_missing.extend(seqs.iter().map(|s| (g.as_str(), *s)));
        }
        for (g, seqs) in &e.system {
            allowed_missing.extend(seqs.iter().map(|s| (g.as_str(), *s)));
        }
        if !skipped_must_arrive {
            for (g, seqs) in &e.skipped {
                allowed_missing.extend(seqs.iter().map(|s| (g.as_str(), *s)));
            }
        }
    }
    let mut seen: HashMap<&str, HashSet<u64>> = HashMap::new();
    let mut highest: HashMap<&str, u64> = HashMap::new();
    for (group, seq, backfill) in stored {
        let Some(_) = last_seq.get(group.as_str()) else {
            report.unexpected += 1;
            continue;
        };
        if !seen.entry(group).or_default().insert(*seq) {
            report.duplicated += 1;
            note(&mut report, format!("{group}: MsgSeq {seq} stored twice"));
        }
        if *backfill {
            report.backfilled += 1;
            continue;
        }
        let top = highest.entry(group).or_insert(0);
        if *seq < *top {
            report.out_of_order += 1;
            note(
                &mut report,
                format!("{group}: MsgSeq {seq} stored after {top}"),
            );
        }
        *top = (*top).max(*seq);
    }
    for (group, last) in &last_seq {
        let got = seen.get(group);
        for seq in 1..=*last {
            if !got.is_some_and(|g| g.contains(&seq)) && !allowed_missing.contains(&(group, seq)) {
                report.missing += 1;
                note(&mut report, format!("{group}: MsgSeq {seq} missing"));
            }
        }
    }
    report.groups = seen.len();
    report
}

fn note(report: &mut Report, example: String) {
    if report.examples.len() < 20 {
        report.examples.push(example);
    }
}

/// Every message of a JetStream stream, in stream order.
pub async fn read_nats(url: &str, stream: &str) -> Result<Vec<StoredMessage>, String> {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let total = s.info().await.map_err(|e| e.to_string())?.state.messages;
    let consumer = s
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(total as usize);
    let mut read = 0u64;
    while read < total {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
        let Ok(Some(Ok(message))) = next else {
            return Err(format!(
                "stream read stalled after {read} of {total} messages"
            ));
        };
        read += 1;
        let headers = message.headers.as_ref();
        let group = headers
            .and_then(|h| h.get("tim-group-id"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let seq = headers
            .and_then(|h| h.get("tim-msg-seq"))
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0);
        let backfill = headers
            .and_then(|h| h.get("tim-source"))
            .is_some_and(|v| v.as_str() == "backfill");
        if headers
            .and_then(|h| h.get("tim-callback-command"))
            .map(|v| v.as_str())
            != Some("Group.CallbackAfterSendMsg")
        {
            continue; // the auditor's events and other commands
        }
        out.push((group, seq, backfill));
    }
    Ok(out)
}

/// Every record of a Kafka topic, partition by partition in offset order (a group lives in one
/// partition, so this is each group's order).
pub fn read_kafka(brokers: &str, topic: &str) -> Result<Vec<StoredMessage>, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "timbridge-load-verify")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..partitions as i32 {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        ends.insert(p, high);
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    // The high watermarks are a lower bound only: some brokers (tansu) report them a few
    // records behind right after writes. Read until the topic stays quiet for 2 s past them.
    let total: i64 = ends.values().sum();
    let mut by_partition: BTreeMap<i32, Vec<(i64, String, u64, bool)>> = BTreeMap::new();
    let mut read = 0i64;
    let mut idle = 0;
    while (read < total && idle < 50) || (read >= total && idle < 10) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                idle = 0;
                read += 1;
                let mut group = String::new();
                let mut seq = 0;
                let mut backfill = false;
                if let Some(headers) = m.headers() {
                    for h in headers.iter() {
                        let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                        match h.key {
                            "tim-group-id" => group = value.into_owned(),
                            "tim-msg-seq" => seq = value.parse().unwrap_or(0),
                            "tim-source" => backfill = value == "backfill",
                            _ => {}
                        }
                    }
                }
                by_partition.entry(m.partition()).or_default().push((
                    m.offset(),
                    group,
                    seq,
                    backfill,
                ));
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => idle += 1,
        }
    }
    Ok(by_partition
        .into_values()
        .flat_map(|mut records| {
            records.sort_by_key(|r| r.0);
            records.into_iter().map(|(_, g, s, b)| (g, s, b))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(groups: &[(&str, u64)]) -> Expected {
        Expected {
            last_seq: groups.iter().map(|(g, s)| (g.to_string(), *s)).collect(),
            ..Expected::default()
        }
    }

    #[test]
    fn finds_missing_doubled_and_reordered() {
        let e = [expected(&[("a", 3), ("b", 2)])];
        let s = |v: &[(&str, u64)]| {
            v.iter()
                .map(|(g, s)| (g.to_string(), *s, false))
                .collect::<Vec<_>>()
        };
        assert!(check(
            &e,
            &s(&[("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]),
            false
        )
        .clean());
        let r = check(
            &e,
            &s(&[("a", 1), ("a", 3), ("a", 2), ("b", 1), ("b", 1), ("x", 9)]),
            false,
        );
        assert_eq!(r.out_of_order, 1);
        assert_eq!(r.duplicated, 1);
        assert_eq!(r.missing, 1); // b/2
        assert_eq!(r.unexpected, 1);
    }

    #[test]
    fn skipped_messages_count_only_when_an_auditor_ran_and_backfills_may_come_late() {
        let mut e = expected(&[("a", 4)]);
        e.skipped.insert("a".into(), vec![2]);
        e.system.insert("a".into(), vec![3]);
        let live = vec![("a".to_string(), 1, false), ("a".to_string(), 4, false)];
        assert!(check(std::slice::from_ref(&e), &live, false).clean());
        assert_eq!(check(std::slice::from_ref(&e), &live, true).missing, 1);
        let mut repaired = live.clone();
        repaired.push(("a".to_string(), 2, true));
        let r = check(&[e], &repaired, true);
        assert!(r.clean(), "{r:?}");
        assert_eq!(r.backfilled, 1);
    }
}
