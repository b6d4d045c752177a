//! What the ordered stream holds: the main stream's records as they were (headers and body),
//! and markers standing for seqs that are gone, with why.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::resolve::{Gone, Reason, Settled};
use crate::audit::tracker::GroupKey;
use crate::core::record::header;

/// Marker header names; the value of [`ORDERED`] is always `skip`.
pub const ORDERED: &str = "tim-ordered";
pub const ORDERED_REASON: &str = "tim-ordered-reason";

/// Why a seq of a group has no message in the ordered stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    /// A system notice (`IsSystemMsg` 1): a member joined, the group was renamed, ...
    System,
    /// A placeholder (`IsPlaceMsg` 1 or 2): deleted, expired, failed or recalled.
    Deleted,
    NoHistory,
    Expired,
    NotFound,
    GroupGone,
    Refused,
}

impl Skip {
    pub const ALL: [Skip; 7] = [
        Skip::System,
        Skip::Deleted,
        Skip::NoHistory,
        Skip::Expired,
        Skip::NotFound,
        Skip::GroupGone,
        Skip::Refused,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Skip::System => "system",
            Skip::Deleted => "deleted",
            Skip::NoHistory => Reason::NoHistory.label(),
            Skip::Expired => Reason::Expired.label(),
            Skip::NotFound => Reason::NotFound.label(),
            Skip::GroupGone => Reason::GroupGone.label(),
            Skip::Refused => Reason::Refused.label(),
        }
    }
}

impl From<Reason> for Skip {
    fn from(reason: Reason) -> Skip {
        match reason {
            Reason::NoHistory => Skip::NoHistory,
            Reason::Expired => Skip::Expired,
            Reason::NotFound => Skip::NotFound,
            Reason::GroupGone => Skip::GroupGone,
            Reason::Refused => Skip::Refused,
        }
    }
}

impl From<Settled> for Skip {
    fn from(settled: Settled) -> Skip {
        match settled {
            Settled::System => Skip::System,
            Settled::Placeholder => Skip::Deleted,
        }
    }
}

impl From<Gone> for Skip {
    fn from(gone: Gone) -> Skip {
        match gone {
            Gone::Settled(settled) => settled.into(),
            Gone::Unrecoverable(reason) => reason.into(),
        }
    }
}

/// Where the main stream keeps a record, to read it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Position {
    Nats {
        stream_seq: u64,
    },
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
}

/// A record's headers as its broker gave them: a JetStream message's map, kept as it is (it
/// is published again with one header changed), or name-value pairs (Kafka, and what the
/// auditor makes itself).
#[derive(Debug, Clone)]
pub enum Headers {
    Nats(async_nats::HeaderMap),
    Pairs(Vec<(String, String)>),
}

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        match self {
            Headers::Nats(map) => map.get(name).map(|v| v.as_str()),
            Headers::Pairs(pairs) => pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
        }
    }

    /// Every header but the broker's own (`Nats-*`), in no particular order.
    pub fn pairs(&self) -> Vec<(&str, &str)> {
        match self {
            Headers::Nats(map) => map
                .iter()
                .filter(|(name, _)| !AsRef::<str>::as_ref(*name).starts_with("Nats-"))
                .flat_map(|(name, values)| values.iter().map(move |v| (name.as_ref(), v.as_str())))
                .collect(),
            Headers::Pairs(pairs) => pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Headers::Nats(map) => map
                .iter()
                .map(|(name, values)| {
                    let name: &str = name.as_ref();
                    values
                        .iter()
                        .map(|v| name.len() + v.as_str().len())
                        .sum::<usize>()
                })
                .sum(),
            Headers::Pairs(pairs) => pairs.iter().map(|(k, v)| k.len() + v.len()).sum(),
        }
    }
}

/// A main-stream record as consumed: its headers, body and, on Kafka, its key.
#[derive(Debug, Clone)]
pub struct Raw {
    pub headers: Headers,
    pub body: Bytes,
    pub key: Option<String>,
}

impl Raw {
    pub fn bytes(&self) -> usize {
        self.body.len() + self.headers.bytes()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The key the bridge partitioned the record by: the Kafka key, else the command table's
    /// field of the body (the app id when it has none), as `sink::record` chose it.
    pub fn partition_key(&self) -> String {
        if let Some(key) = &self.key {
            return key.clone();
        }
        let command = self.header(header::COMMAND).unwrap_or("");
        let sdkappid = self.header(header::SDKAPPID).unwrap_or("").to_string();
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&self.body) else {
            return sdkappid;
        };
        crate::wire::build::key_field(command, &body).unwrap_or(sdkappid)
    }
}

/// One record of the ordered stream.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Ordered per key: the GroupId of group messages.
    pub key: String,
    pub sdkappid: u64,
    pub headers: Headers,
    pub body: Bytes,
    /// NATS: `Nats-Msg-Id`, so a republished entry is dropped within the duplicate window.
    pub msg_id: Option<String>,
    /// When the main stream appended it (ms); markers have none.
    pub appended_ms: Option<u64>,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message,
    Marker(Skip),
    Passthrough,
}

/// The id of seq `seq` of `group` in the ordered stream, message or marker alike.
pub fn msg_id(group: &GroupKey, seq: u64) -> String {
    let topic = group.topic.as_deref().unwrap_or("");
    format!(
        "o:{}:{seq}:{}:{}:{}:{topic}",
        group.sdkappid,
        group.group.len(),
        group.group,
        topic.len()
    )
}

/// A group message's record, as the main stream holds it.
pub fn message(group: &GroupKey, seq: u64, raw: Raw, appended_ms: u64) -> Entry {
    Entry {
        key: group.group.clone(),
        sdkappid: group.sdkappid,
        headers: raw.headers,
        body: raw.body,
        msg_id: Some(msg_id(group, seq)),
        appended_ms: Some(appended_ms),
        kind: Kind::Message,
    }
}

/// The marker standing for `seq` of `group`.
pub fn marker(group: &GroupKey, seq: u64, reason: Skip) -> Entry {
    let mut headers = vec![
        (header::SDKAPPID.to_string(), group.sdkappid.to_string()),
        (
            header::COMMAND.to_string(),
            crate::audit::backfill::COMMAND.to_string(),
        ),
        (header::GROUP_ID.to_string(), group.group.clone()),
        (header::MSG_SEQ.to_string(), seq.to_string()),
    ];
    if let Some(topic) = &group.topic {
        headers.push((header::TOPIC_ID.to_string(), topic.clone()));
    }
    headers.push((ORDERED.to_string(), "skip".to_string()));
    headers.push((ORDERED_REASON.to_string(), reason.label().to_string()));
    let body = json!({
        "SdkAppid": group.sdkappid,
        "GroupId": group.group,
        "TopicId": group.topic,
        "MsgSeq": seq,
        "Reason": reason.label(),
    });
    Entry {
        key: group.group.clone(),
        sdkappid: group.sdkappid,
        headers: Headers::Pairs(headers),
        body: serde_json::to_vec(&body).expect("plain data").into(),
        msg_id: Some(msg_id(group, seq)),
        appended_ms: None,
        kind: Kind::Marker(reason),
    }
}

/// Any other record, passed through as it arrived; its own dedup id (if any) keeps a
/// republished one out within the duplicate window.
pub fn passthrough(raw: Raw, appended_ms: u64) -> Entry {
    Entry {
        key: raw.partition_key(),
        sdkappid: raw
            .header(header::SDKAPPID)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        msg_id: raw.header(header::DEDUP_ID).map(|id| format!("o:{id}")),
        headers: raw.headers,
        body: raw.body,
        appended_ms: Some(appended_ms),
        kind: Kind::Passthrough,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_has_the_groups_key_seq_and_reason() {
        let group = GroupKey {
            sdkappid: 1400000000,
            group: "@TGS#a".into(),
            topic: None,
        };
        let m = marker(&group, 7, Skip::System);
        let headers = m.headers.pairs();
        assert_eq!(
            headers,
            vec![
                ("tim-sdkappid", "1400000000"),
                ("tim-callback-command", "Group.CallbackAfterSendMsg"),
                ("tim-group-id", "@TGS#a"),
                ("tim-msg-seq", "7"),
                ("tim-ordered", "skip"),
                ("tim-ordered-reason", "system"),
            ]
        );
        assert_eq!(m.key, "@TGS#a");
        assert_eq!(m.msg_id.as_deref(), Some("o:1400000000:7:6:@TGS#a:0:"));
        let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(
            body,
            json!({"SdkAppid":1400000000,"GroupId":"@TGS#a","TopicId":null,"MsgSeq":7,"Reason":"system"})
        );
    }

    #[test]
    fn a_passed_through_record_keeps_the_bridges_key() {
        let pairs = |command: &str| {
            Headers::Pairs(vec![
                ("tim-sdkappid".into(), "1400000000".into()),
                ("tim-callback-command".into(), command.into()),
            ])
        };
        let raw = Raw {
            headers: pairs("C2C.CallbackAfterSendMsg"),
            body: Bytes::from_static(br#"{"From_Account":"alice","To_Account":"bob"}"#),
            key: None,
        };
        assert_eq!(passthrough(raw.clone(), 0).key, "alice");
        let unknown = Raw {
            headers: pairs("Some.New"),
            ..raw
        };
        assert_eq!(passthrough(unknown, 0).key, "1400000000");
    }

    #[test]
    fn every_reason_has_its_label() {
        let labels: Vec<&str> = Skip::ALL.iter().map(|s| s.label()).collect();
        assert_eq!(
            labels,
            [
                "system",
                "deleted",
                "no_history",
                "expired",
                "not_found",
                "group_gone",
                "refused"
            ]
        );
    }
}
