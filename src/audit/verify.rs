//! Forgery detection (`--verify-sample P`). A callback's body is not signed (Tencent's `Sign`
//! covers only the token and `RequestTime`), but Tencent's history is the truth: a share `P` of
//! the live group messages consumed is looked up in it, one worker per app on the app's
//! rate-limited client, and compared field by field (`From_Account`, `MsgBody`, `MsgTime`,
//! `Random`). A difference, or a seq Tencent does not have, is a `forged` event on
//! `--audit-event-subject`, counted. Deleted, recalled and expired messages cannot be compared
//! (`unverifiable`); a sample that finds the queue full is `skipped`, never waited for.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::metrics::AuditMetrics;
use super::repair::{event_record, now_ms};
use super::tracker::GroupKey;
use crate::core::deliver::Deliver;
use crate::core::record::header;
use crate::sink::Sink;
use crate::tencent::rest::group::HistoryMessage;
use crate::tencent::rest::RestClient;

/// One consumed live group message to compare with Tencent's history.
#[derive(Debug, Clone)]
pub struct Sample {
    pub key: GroupKey,
    pub seq: u64,
    pub body: Bytes,
}

/// What a sample turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The history holds this message as published.
    Genuine,
    /// The fields that differ from the history's.
    Mismatch(Vec<&'static str>),
    /// Tencent has no message at this seq.
    NotInHistory,
    /// A placeholder, system notice or expired message: nothing to compare.
    Unverifiable,
}

/// The fields of a published body that Tencent's history also holds.
#[derive(Debug, Deserialize)]
struct Claim {
    #[serde(rename = "From_Account", default)]
    from_account: String,
    #[serde(rename = "Random", default)]
    random: u64,
    #[serde(rename = "MsgTime", default)]
    msg_time: u64,
    #[serde(rename = "MsgBody", default)]
    msg_body: serde_json::Value,
}

/// Compares a published body with the history's message of its seq (`None`: the history has
/// none; `expired`: the history ends before it).
pub fn judge(body: &[u8], found: Option<&HistoryMessage>, expired: bool) -> Verdict {
    let Some(message) = found else {
        return if expired {
            Verdict::Unverifiable
        } else {
            Verdict::NotInHistory
        };
    };
    if message.is_place_msg != 0 || message.is_system_msg != 0 {
        return Verdict::Unverifiable;
    }
    let Ok(claim) = serde_json::from_slice::<Claim>(body) else {
        // The bridge validated it as JSON; a body it cannot read as a message is not genuine.
        return Verdict::Mismatch(vec!["MsgBody"]);
    };
    let mut differ = Vec::new();
    if claim.from_account != message.from_account {
        differ.push("From_Account");
    }
    if claim.msg_body != message.msg_body {
        differ.push("MsgBody");
    }
    if claim.msg_time != message.msg_time_stamp {
        differ.push("MsgTime");
    }
    if claim.random != message.msg_random {
        differ.push("Random");
    }
    if differ.is_empty() {
        Verdict::Genuine
    } else {
        Verdict::Mismatch(differ)
    }
}

pub struct Verifier {
    pub client: Arc<RestClient>,
    pub sink: Arc<Sink>,
    pub event_subject: String,
    pub partitions: u32,
    pub metrics: AuditMetrics,
}

impl Verifier {
    /// Ends when the loop is gone (its channel closed).
    pub async fn run(self, mut samples: mpsc::Receiver<Sample>) {
        while let Some(sample) = samples.recv().await {
            self.verify(&sample).await;
        }
    }

    async fn verify(&self, sample: &Sample) {
        let key = &sample.key;
        let page = match self
            .client
            .history(&key.group, key.topic.as_deref(), sample.seq, 1)
            .await
        {
            Ok(page) => page,
            Err(err) => {
                tracing::debug!(group = %key.group, seq = sample.seq, error = %err, "audit: verification lookup failed");
                self.metrics.verified("failed");
                return;
            }
        };
        let found = page.rsp_msg_list.iter().find(|m| m.msg_seq == sample.seq);
        let verdict = judge(&sample.body, found, page.is_finished == 2);
        let (reason, fields) = match &verdict {
            Verdict::Genuine => return self.metrics.verified("ok"),
            Verdict::Unverifiable => return self.metrics.verified("unverifiable"),
            Verdict::Mismatch(fields) => ("mismatch", fields.clone()),
            Verdict::NotInHistory => ("not_in_history", Vec::new()),
        };
        self.metrics.verified("forged");
        self.metrics.forged(reason);
        tracing::error!(sdkappid = key.sdkappid, group = %key.group, seq = sample.seq, reason, ?fields,
            "audit: a published group message is not what Tencent's history holds: forged");
        self.publish(key, sample.seq, reason, &fields).await;
    }

    /// The `forged` event (its own dedup id: a second detection of the same seq is dropped).
    async fn publish(&self, key: &GroupKey, seq: u64, reason: &str, fields: &[&str]) {
        let topic = key.topic.as_deref().unwrap_or("");
        let now = now_ms();
        let body = json!({
            "Event": "forged",
            "SdkAppid": key.sdkappid,
            "GroupId": key.group,
            "TopicId": key.topic,
            "MsgSeq": seq,
            "Reason": reason,
            "Fields": fields,
            "DetectedAt": now,
        });
        let dedup = format!(
            "f:{}:{seq}:{}:{}:{topic}",
            key.sdkappid,
            key.group.len(),
            key.group
        );
        let record = event_record(
            key,
            (&self.event_subject, self.partitions),
            vec![(header::MSG_SEQ, seq.to_string())],
            dedup,
            &body,
            now,
        );
        if let Err(err) = self.sink.deliver(&record).await {
            tracing::warn!(group = %key.group, seq, error = %err, "audit: publishing a forged event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(from: &str, body: serde_json::Value) -> HistoryMessage {
        serde_json::from_value(json!({
            "From_Account": from, "IsPlaceMsg": 0, "IsSystemMsg": 0, "MsgRandom": 8,
            "MsgSeq": 1, "MsgTimeStamp": 1490686222, "MsgBody": body,
        }))
        .unwrap()
    }

    const BODY: &str = r#"{"GroupId":"g","From_Account":"user1","Random":8,"MsgSeq":1,"MsgTime":1490686222,"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"hi"}}]}"#;

    #[test]
    fn a_message_as_the_history_holds_it_is_genuine() {
        let text = json!([{"MsgType":"TIMTextElem","MsgContent":{"Text":"hi"}}]);
        assert_eq!(
            judge(
                BODY.as_bytes(),
                Some(&history("user1", text.clone())),
                false
            ),
            Verdict::Genuine
        );
        let other = json!([{"MsgType":"TIMTextElem","MsgContent":{"Text":"pay me"}}]);
        assert_eq!(
            judge(BODY.as_bytes(), Some(&history("mallory", other)), false),
            Verdict::Mismatch(vec!["From_Account", "MsgBody"])
        );
        assert_eq!(judge(BODY.as_bytes(), None, false), Verdict::NotInHistory);
        assert_eq!(judge(BODY.as_bytes(), None, true), Verdict::Unverifiable);
        let mut recalled = history("user1", text);
        recalled.is_place_msg = 2;
        assert_eq!(
            judge(BODY.as_bytes(), Some(&recalled), false),
            Verdict::Unverifiable
        );
    }
}
