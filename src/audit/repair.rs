//! One worker per app: takes due gaps, asks the tracker what of each is still missing (it may
//! have waited in the queue while late callbacks filled it), looks that up
//! ([`super::resolve`]), publishes each real message as a backfill and each unrecoverable range
//! as an event, and reports back what the gap's seqs turned out to be. A gap whose lookup or
//! publish failed is reported unfinished and is tried again later; its backfills carry the live
//! dedup ids, so a retry cannot duplicate.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::backfill;
use super::metrics::AuditMetrics;
use super::resolve::{self, Gone, Reason};
use super::tracker::Gap;
use crate::core::deliver::{Ack, Deliver};
use crate::core::record::header;
use crate::core::Record;
use crate::sink::Sink;
use crate::tencent::rest::RestClient;
use crate::wire::partition;
use crate::wire::RecordBuilder;

/// What became of a gap.
#[derive(Debug)]
pub struct Repaired {
    pub gap: Gap,
    /// Every seq is accounted for; false: try again later.
    pub done: bool,
    /// When done: the seqs of the gap that have no message, and why (the ordered stream's
    /// markers).
    pub gone: Vec<(u64, Gone)>,
    /// When done: the records backfilled, and where the broker keeps them (the ordered stream
    /// takes them from here: their copy in the stream may reach another consumer instance
    /// first, or be dropped as a duplicate of a live record that did).
    pub backfilled: Vec<(u64, Record, Ack)>,
}

/// A worker's question to the loop that owns the tracker: what of this queued gap is still
/// missing ([`super::tracker::Tracker::still_missing`]); `None` when nothing is.
pub struct Recheck {
    pub gap: Gap,
    pub reply: oneshot::Sender<Option<Gap>>,
}

/// What a finished lookup found: the seqs gone (and why), and the records backfilled.
type Found = (Vec<(u64, Gone)>, Vec<(u64, Record, Ack)>);

pub struct Repairer {
    pub client: Arc<RestClient>,
    pub sink: Arc<Sink>,
    pub builder: RecordBuilder,
    pub event_subject: String,
    pub partitions: u32,
    pub metrics: AuditMetrics,
}

impl Repairer {
    /// Ends when the loop is gone (its channels closed).
    pub async fn run(
        self,
        mut gaps: mpsc::Receiver<Gap>,
        recheck: mpsc::Sender<Recheck>,
        done: mpsc::Sender<Repaired>,
    ) {
        while let Some(queued) = gaps.recv().await {
            // No REST call for what arrived live while the gap waited in the queue.
            let (reply, answer) = oneshot::channel();
            let question = Recheck {
                gap: queued.clone(),
                reply,
            };
            if recheck.send(question).await.is_err() {
                return;
            }
            let Ok(missing) = answer.await else { return };
            let repaired = match missing {
                Some(gap) => {
                    let found = self.repair(&gap).await;
                    let done = found.is_some();
                    let (gone, backfilled) = found.unwrap_or_default();
                    Repaired {
                        gap,
                        done,
                        gone,
                        backfilled,
                    }
                }
                None => {
                    tracing::info!(sdkappid = queued.key.sdkappid, group = %queued.key.group,
                        first = queued.first, last = queued.last,
                        "audit: a queued gap was filled by the stream before its lookup");
                    Repaired {
                        gap: queued,
                        done: true,
                        gone: Vec::new(),
                        backfilled: Vec::new(),
                    }
                }
            };
            if done.send(repaired).await.is_err() {
                return;
            }
        }
    }

    /// The seqs of `gap` that are gone (and why) and the records backfilled, once every seq is
    /// accounted for; `None`: try again later.
    async fn repair(&self, gap: &Gap) -> Option<Found> {
        let resolution = match resolve::resolve(&self.client, gap).await {
            Ok(resolution) => resolution,
            Err(err) => {
                tracing::warn!(sdkappid = gap.key.sdkappid, group = %gap.key.group, first = gap.first,
                    last = gap.last, error = %err, "audit: history lookup failed; will try again");
                return None;
            }
        };
        let now = now_ms();
        if resolution.beyond_tencent {
            self.metrics.forged("above_next_msg_seq");
        }
        let mut gone: Vec<(u64, Gone)> = Vec::new();
        let mut backfilled = Vec::with_capacity(resolution.backfill.len());
        for message in &resolution.backfill {
            let record = match backfill::record(&self.builder, &gap.key, &gap.kind, message, now) {
                Ok(record) => record,
                Err(err) => {
                    // Tencent's history gave something the bridge would refuse: report it
                    // rather than publish it.
                    tracing::warn!(group = %gap.key.group, seq = message.msg_seq, error = %err,
                        "audit: a history message does not make a valid callback; reported unrecoverable");
                    if !self
                        .report(gap, message.msg_seq, message.msg_seq, Reason::NotFound, now)
                        .await
                    {
                        return None;
                    }
                    gone.push((message.msg_seq, Gone::Unrecoverable(Reason::NotFound)));
                    continue;
                }
            };
            let ack = match self.sink.deliver(&record).await {
                Ok(ack) => ack,
                Err(err) => {
                    tracing::warn!(group = %gap.key.group, seq = message.msg_seq, error = %err,
                        "audit: backfill publish failed; will try again");
                    return None;
                }
            };
            backfilled.push((message.msg_seq, record, ack));
            self.metrics
                .gap_seqs
                .with_label_values(&["backfilled"])
                .inc();
            tracing::info!(sdkappid = gap.key.sdkappid, group = %gap.key.group, seq = message.msg_seq, "audit: backfilled");
        }
        for &(first, last, reason) in &resolution.unrecoverable {
            if !self.report(gap, first, last, reason, now).await {
                return None;
            }
            gone.extend((first..=last).map(|seq| (seq, Gone::Unrecoverable(reason))));
        }
        self.metrics
            .gap_seqs
            .with_label_values(&["settled"])
            .inc_by(resolution.settled.len() as u64);
        gone.extend(
            resolution
                .settled
                .iter()
                .map(|&(seq, settled)| (seq, Gone::Settled(settled))),
        );
        gone.sort_by_key(|(seq, _)| *seq);
        Some((gone, backfilled))
    }

    /// Publishes the unrecoverable range as an event (its own dedup id: a retry is dropped).
    async fn report(&self, gap: &Gap, first: u64, last: u64, reason: Reason, now: u64) -> bool {
        let key = &gap.key;
        let topic = key.topic.as_deref().unwrap_or("");
        let body = json!({
            "SdkAppid": key.sdkappid,
            "GroupId": key.group,
            "TopicId": key.topic,
            "Type": gap.kind,
            "FirstMsgSeq": first,
            "LastMsgSeq": last,
            "Reason": reason.label(),
            "DetectedAt": now,
        });
        let dedup = format!(
            "u:{}:{first}:{last}:{}:{}:{}:{topic}",
            key.sdkappid,
            key.group.len(),
            key.group,
            topic.len()
        );
        let record = event_record(
            key,
            (&self.event_subject, self.partitions),
            Vec::new(),
            dedup,
            &body,
            now,
        );
        if let Err(err) = self.sink.deliver(&record).await {
            tracing::warn!(group = %key.group, error = %err, "audit: publishing an unrecoverable gap failed; will try again");
            return false;
        }
        let seqs = last - first + 1;
        self.metrics
            .gap_seqs
            .with_label_values(&["unrecoverable"])
            .inc_by(seqs);
        self.metrics
            .unrecoverable
            .with_label_values(&[reason.label()])
            .inc_by(seqs);
        tracing::warn!(sdkappid = key.sdkappid, group = %key.group, first, last, reason = reason.label(),
            "audit: unrecoverable gap");
        true
    }
}

/// An event of the auditor's about `key`'s group, on the audit event subject of `partitions`
/// partitions, with `extra` headers after the group's and a dedup id of its own.
pub fn event_record(
    key: &super::tracker::GroupKey,
    (subject, partitions): (&str, u32),
    extra: Vec<(&'static str, String)>,
    dedup: String,
    body: &serde_json::Value,
    now: u64,
) -> Record {
    let mut headers = vec![
        (header::SDKAPPID, key.sdkappid.to_string()),
        (header::GROUP_ID, key.group.clone()),
    ];
    headers.extend(extra);
    if let Some(topic) = &key.topic {
        headers.push((header::TOPIC_ID, topic.clone()));
    }
    headers.push((header::RECEIVED_AT, now.to_string()));
    headers.push((header::DEDUP_ID, dedup));
    Record {
        destination: subject.to_owned(),
        key: key.group.clone(),
        partition: partition(key.group.as_bytes(), partitions),
        headers,
        body: serde_json::to_vec(body).expect("plain data").into(),
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
