//! Reads the stream or topic back and checks it against what runs sent: every message answered
//! 200 present once, each group's messages in MsgSeq order. With `--ordered`, the auditor's
//! ordered stream instead: every seq once, as a message or a marker, strictly in order.

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

/// One stored group record (`Group.CallbackAfterSendMsg`) as the readers return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub group: String,
    pub seq: u64,
    /// `tim-source: backfill`: published by the auditor.
    pub backfill: bool,
    /// A marker of the ordered stream (`tim-ordered: skip`): its `tim-ordered-reason`.
    pub marker: Option<String>,
}

impl StoredRecord {
    /// The group record a record's headers describe; None for other commands.
    pub fn from_headers<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<StoredRecord> {
        if header("tim-callback-command") != Some("Group.CallbackAfterSendMsg") {
            return None;
        }
        Some(StoredRecord {
            group: header("tim-group-id").unwrap_or_default().to_owned(),
            seq: header("tim-msg-seq")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            backfill: header("tim-source") == Some("backfill"),
            marker: (header("tim-ordered") == Some("skip"))
                .then(|| header("tim-ordered-reason").unwrap_or_default().to_owned()),
        })
    }
}

/// What a reader read: the group records in each group's order, and how many records of other
/// commands it passed over.
#[derive(Debug, Default)]
pub struct Stored {
    pub records: Vec<StoredRecord>,
    pub passthrough: u64,
}

impl Stored {
    /// The group messages, for [`check`] (markers are the ordered stream's only).
    pub fn messages(&self) -> Vec<StoredMessage> {
        self.records
            .iter()
            .filter(|r| r.marker.is_none())
            .map(|r| (r.group.clone(), r.seq, r.backfill))
            .collect()
    }
}

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
    /// `--ordered`: markers (`tim-ordered: skip`) of the runs' groups.
    pub markers: u64,
    /// `--ordered`: the markers by `tim-ordered-reason`.
    pub markers_by_reason: BTreeMap<String, u64>,
    /// `--ordered`: markers for seqs the runs list neither as system notices nor as skipped (a
    /// message that was sent must arrive as itself).
    pub unexpected_markers: u64,
    /// Records of other commands, passed over.
    pub passthrough: u64,
    /// The first problems found, for a look.
    pub examples: Vec<String>,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.missing == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.unexpected_markers == 0
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

/// Checks the auditor's ordered stream, `stored` in broker order, against what was expected.
/// Per group, from its first record: every seq once, as a message or a marker, and each the one
/// after the last (`seq == last + 1`; backfills are not exempt). A marker may stand only for a
/// system notice or a skipped seq. Every seq up to the runs' last must be there, but for the
/// seqs below a group's first record that never reached the bridge's stream (not answered 200,
/// skipped, system notices): the auditor starts a group at the first seq it sees.
pub fn check_ordered(expected: &[Expected], stored: &Stored) -> Report {
    let mut report = Report {
        passthrough: stored.passthrough,
        ..Report::default()
    };
    let mut last_seq: HashMap<&str, u64> = HashMap::new();
    let mut unsent: HashSet<(&str, u64)> = HashSet::new();
    let mut may_be_marker: HashSet<(&str, u64)> = HashSet::new();
    for e in expected {
        for (g, s) in &e.last_seq {
            last_seq.insert(g, *s);
        }
        for (g, seqs) in e.not_ok.iter().chain(&e.system).chain(&e.skipped) {
            unsent.extend(seqs.iter().map(|s| (g.as_str(), *s)));
        }
        for (g, seqs) in e.system.iter().chain(&e.skipped) {
            may_be_marker.extend(seqs.iter().map(|s| (g.as_str(), *s)));
        }
    }
    let mut seen: HashMap<&str, HashSet<u64>> = HashMap::new();
    // Per group: its first seq and its last (the highest released so far).
    let mut first_last: HashMap<&str, (u64, u64)> = HashMap::new();
    for record in &stored.records {
        let (group, seq) = (record.group.as_str(), record.seq);
        if !last_seq.contains_key(group) {
            report.unexpected += 1;
            continue;
        }
        match &record.marker {
            Some(reason) => {
                report.markers += 1;
                *report.markers_by_reason.entry(reason.clone()).or_default() += 1;
                if !may_be_marker.contains(&(group, seq)) {
                    report.unexpected_markers += 1;
                    let text = format!("{group}: MsgSeq {seq} is a marker ({reason}) but was sent");
                    note(&mut report, text);
                }
            }
            None => {
                report.messages += 1;
                report.backfilled += u64::from(record.backfill);
            }
        }
        let fresh = seen.entry(group).or_default().insert(seq);
        let Some((_, last)) = first_last.get_mut(group) else {
            first_last.insert(group, (seq, seq));
            continue;
        };
        if !fresh {
            report.duplicated += 1;
            note(&mut report, format!("{group}: MsgSeq {seq} stored twice"));
        } else if seq != *last + 1 {
            report.out_of_order += 1;
            note(
                &mut report,
                format!("{group}: MsgSeq {seq} stored after {last}"),
            );
        }
        *last = (*last).max(seq);
    }
    for (group, last) in &last_seq {
        let got = seen.get(group);
        let first = first_last.get(group).map_or(u64::MAX, |f| f.0);
        for seq in 1..=*last {
            let excused = seq < first && unsent.contains(&(group, seq));
            if !got.is_some_and(|g| g.contains(&seq)) && !excused {
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

/// Every record of a JetStream stream (of `subject` only, when given), in stream order.
pub async fn read_nats(url: &str, stream: &str, subject: Option<&str>) -> Result<Stored, String> {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    let s = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let consumer = s
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            filter_subject: subject.unwrap_or_default().to_owned(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    // What the consumer had to deliver when it was created (the stream's messages, or those of
    // the subject).
    let total = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut out = Stored {
        records: Vec::with_capacity(total as usize),
        passthrough: 0,
    };
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
        match StoredRecord::from_headers(|name| headers?.get(name).map(|v| v.as_str())) {
            Some(record) => out.records.push(record),
            None => out.passthrough += 1, // the auditor's events and other commands
        }
    }
    Ok(out)
}

/// Every record of a Kafka topic, partition by partition in offset order (a group lives in one
/// partition, so this is each group's order). `read_committed` for a transactional topic (the
/// ordered stream).
pub fn read_kafka(brokers: &str, topic: &str, read_committed: bool) -> Result<Stored, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let isolation = if read_committed {
        "read_committed"
    } else {
        "read_uncommitted"
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "timbridge-load-verify")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
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
    // (A transactional topic's commit markers take offsets too: there, the read ends on 10 s
    // of quiet.)
    let total: i64 = ends.values().sum();
    let mut by_partition: BTreeMap<i32, Vec<(i64, Option<StoredRecord>)>> = BTreeMap::new();
    let mut read = 0i64;
    let mut idle = 0;
    while (read < total && idle < 50) || (read >= total && idle < 10) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                idle = 0;
                read += 1;
                let headers = m.headers();
                let header = |name: &str| {
                    let h = headers?.iter().find(|h| h.key == name)?;
                    std::str::from_utf8(h.value?).ok()
                };
                let record = StoredRecord::from_headers(header);
                by_partition
                    .entry(m.partition())
                    .or_default()
                    .push((m.offset(), record));
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => idle += 1,
        }
    }
    let mut out = Stored::default();
    for mut records in by_partition.into_values() {
        records.sort_by_key(|r| r.0);
        for (_, record) in records {
            match record {
                Some(record) => out.records.push(record),
                None => out.passthrough += 1,
            }
        }
    }
    Ok(out)
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

    /// An ordered stream from `(group, seq, kind)`: kind `m` a live message, `b` a backfill,
    /// anything else a marker of that reason.
    fn ordered(records: &[(&str, u64, &str)]) -> Stored {
        Stored {
            records: records
                .iter()
                .map(|(g, s, kind)| StoredRecord {
                    group: g.to_string(),
                    seq: *s,
                    backfill: *kind == "b",
                    marker: (*kind != "m" && *kind != "b").then(|| kind.to_string()),
                })
                .collect(),
            passthrough: 0,
        }
    }

    /// Group `a` up to 6: 3 a system notice, 5 skipped.
    fn ordered_run() -> Expected {
        let mut e = expected(&[("a", 6), ("b", 2)]);
        e.system.insert("a".into(), vec![3]);
        e.skipped.insert("a".into(), vec![5]);
        e
    }

    #[test]
    fn ordered_stream_in_order_with_markers_and_backfills_is_clean() {
        let stored = ordered(&[
            ("a", 1, "m"),
            ("b", 1, "m"),
            ("a", 2, "m"),
            ("a", 3, "system"),
            ("a", 4, "m"),
            ("b", 2, "m"),
            ("a", 5, "b"),
            ("a", 6, "m"),
        ]);
        let r = check_ordered(&[ordered_run()], &stored);
        assert!(r.clean(), "{r:?}");
        assert_eq!(
            (r.messages, r.markers, r.backfilled, r.groups),
            (7, 1, 1, 2)
        );
        assert_eq!(r.markers_by_reason.get("system"), Some(&1));
        // A skipped seq may be a marker too (its lookup found nothing).
        let stored = ordered(&[
            ("a", 1, "m"),
            ("a", 2, "m"),
            ("a", 3, "no_history"),
            ("a", 4, "m"),
            ("a", 5, "expired"),
            ("a", 6, "m"),
            ("b", 1, "m"),
            ("b", 2, "m"),
        ]);
        let r = check_ordered(&[ordered_run()], &stored);
        assert!(r.clean(), "{r:?}");
        assert_eq!(r.markers, 2);
        assert_eq!(r.markers_by_reason.len(), 2);
    }

    #[test]
    fn ordered_stream_holds_backfills_to_the_order_too() {
        // What the main stream may hold (a backfill after later seqs) is out of order here.
        let stored = ordered(&[
            ("a", 1, "m"),
            ("a", 2, "m"),
            ("a", 3, "system"),
            ("a", 4, "m"),
            ("a", 6, "m"),
            ("a", 5, "b"),
            ("b", 1, "m"),
            ("b", 2, "m"),
        ]);
        let e = [ordered_run()];
        let main = check(&e, &stored.messages(), true);
        assert_eq!(main.out_of_order, 0, "{main:?}");
        let r = check_ordered(&e, &stored);
        assert_eq!(r.out_of_order, 2, "6 after 4, then 5 after 6: {r:?}");
        assert_eq!((r.missing, r.duplicated), (0, 0));
        assert!(!r.clean());
    }

    #[test]
    fn ordered_stream_finds_holes_doubles_and_markers_for_sent_messages() {
        let e = [ordered_run()];
        // A hole: 5 never came (skipped seqs must arrive, as a message or a marker).
        let hole = ordered(&[
            ("a", 1, "m"),
            ("a", 2, "m"),
            ("a", 3, "system"),
            ("a", 4, "m"),
            ("a", 6, "m"),
            ("b", 1, "m"),
            ("b", 2, "m"),
        ]);
        let r = check_ordered(&e, &hole);
        assert_eq!(
            (r.missing, r.out_of_order, r.duplicated),
            (1, 1, 0),
            "{r:?}"
        );
        // A system notice that never came is missing too (3, 4, 5 and 6 here).
        let no_notice = ordered(&[("a", 1, "m"), ("a", 2, "m"), ("b", 1, "m"), ("b", 2, "m")]);
        assert_eq!(check_ordered(&e, &no_notice).missing, 4);
        // The same seq twice, as a message and as a marker.
        let doubled = ordered(&[
            ("a", 1, "m"),
            ("a", 2, "m"),
            ("a", 2, "deleted"),
            ("a", 3, "system"),
            ("a", 4, "m"),
            ("a", 5, "b"),
            ("a", 6, "m"),
            ("b", 1, "m"),
            ("b", 2, "m"),
            ("b", 2, "m"),
        ]);
        let r = check_ordered(&e, &doubled);
        assert_eq!(
            (r.duplicated, r.out_of_order, r.missing),
            (2, 0, 0),
            "{r:?}"
        );
        // A marker for a message that was sent (4), even in its place.
        let wrong_marker = ordered(&[
            ("a", 1, "m"),
            ("a", 2, "m"),
            ("a", 3, "system"),
            ("a", 4, "not_found"),
            ("a", 5, "b"),
            ("a", 6, "m"),
            ("b", 1, "m"),
            ("b", 2, "m"),
        ]);
        let r = check_ordered(&e, &wrong_marker);
        assert_eq!(r.unexpected_markers, 1, "{r:?}");
        assert_eq!((r.missing, r.out_of_order, r.duplicated), (0, 0, 0));
        assert!(!r.clean());
    }

    #[test]
    fn ordered_stream_starts_where_the_auditor_began_watching() {
        // b/1 was answered 503 and b/2 skipped: the auditor first saw b/3, and starts the
        // group there.
        let mut e = ordered_run();
        e.last_seq.insert("b".into(), 3);
        e.not_ok.insert("b".into(), vec![1]);
        e.skipped.insert("b".into(), vec![2]);
        let stored = ordered(&[
            ("a", 1, "m"),
            ("a", 2, "m"),
            ("a", 3, "system"),
            ("a", 4, "m"),
            ("a", 5, "b"),
            ("a", 6, "m"),
            ("b", 3, "m"),
            ("x", 9, "m"),
        ]);
        let r = check_ordered(std::slice::from_ref(&e), &stored);
        assert!(r.clean(), "{r:?}");
        assert_eq!(r.unexpected, 1);
        // But a seq sent 200 below the first is missing (b/1 now), and so are a skipped seq (a/5)
        // or one not answered 200 (a/4) above it (the auditor looks them up).
        e.not_ok.clear();
        let r = check_ordered(std::slice::from_ref(&e), &stored);
        assert_eq!(r.missing, 1, "{r:?}");
        assert_eq!(r.examples, ["b: MsgSeq 1 missing"]);
        let without_5 = ordered(&[
            ("a", 1, "m"),
            ("a", 2, "m"),
            ("a", 3, "system"),
            ("a", 4, "m"),
        ]);
        let r = check_ordered(std::slice::from_ref(&e), &without_5);
        assert!(
            r.examples.contains(&"a: MsgSeq 5 missing".to_string()),
            "{r:?}"
        );
        e.not_ok.insert("a".into(), vec![4]);
        let without_4 = ordered(&[
            ("a", 1, "m"),
            ("a", 2, "m"),
            ("a", 3, "system"),
            ("a", 5, "b"),
            ("a", 6, "m"),
            ("b", 1, "m"),
            ("b", 2, "b"),
            ("b", 3, "m"),
        ]);
        let r = check_ordered(&[e], &without_4);
        assert_eq!((r.missing, r.out_of_order), (1, 1), "{r:?}");
    }

    #[test]
    fn stored_records_are_read_from_their_headers() {
        let headers = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
        };
        let marker = StoredRecord::from_headers(headers(&[
            ("tim-callback-command", "Group.CallbackAfterSendMsg"),
            ("tim-group-id", "@TGS#x"),
            ("tim-msg-seq", "7"),
            ("tim-ordered", "skip"),
            ("tim-ordered-reason", "expired"),
        ]));
        assert_eq!(
            marker,
            Some(StoredRecord {
                group: "@TGS#x".into(),
                seq: 7,
                backfill: false,
                marker: Some("expired".into()),
            })
        );
        let backfill = StoredRecord::from_headers(headers(&[
            ("tim-callback-command", "Group.CallbackAfterSendMsg"),
            ("tim-group-id", "@TGS#x"),
            ("tim-msg-seq", "8"),
            ("tim-source", "backfill"),
        ]))
        .unwrap();
        assert!(backfill.backfill && backfill.marker.is_none() && backfill.seq == 8);
        let other = StoredRecord::from_headers(headers(&[
            ("tim-callback-command", "C2C.CallbackAfterSendMsg"),
            ("tim-msg-seq", "8"),
        ]));
        assert_eq!(other, None);
    }
}
