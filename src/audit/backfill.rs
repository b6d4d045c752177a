//! A message from Tencent's history turned into the callback Tencent would have sent, and that
//! callback into the record the bridge would have published: the same validation, partition,
//! headers and dedup id as the live one (so a late live callback is dropped as a duplicate),
//! plus `tim-source: backfill`.
//!
//! Field mapping (docs/auditor.md): `From_Account` → `From_Account` and `Operator_Account`
//! (history does not say who operated), `MsgRandom` → `Random`, `MsgSeq` → `MsgSeq`,
//! `MsgTimeStamp` → `MsgTime`, `MsgBody` → `MsgBody`, `CloudCustomData` → `CloudCustomData`;
//! `GroupId`, `TopicId` from the gap; `Type` from the group's live callbacks; `EventTime` is
//! when the backfill was made (ms); `OnlineOnlyFlag` 0 (online-only messages are not stored).

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::tracker::GroupKey;
use crate::core::record::{header, Record};
use crate::tencent::callback::{CallbackError, Policy, Signers, VerifiedQuery};
use crate::tencent::rest::group::HistoryMessage;
use crate::wire::RecordBuilder;

pub const COMMAND: &str = "Group.CallbackAfterSendMsg";
pub const SOURCE_BACKFILL: &str = "backfill";

/// The body of the `Group.CallbackAfterSendMsg` Tencent would have sent for `message`.
pub fn body(key: &GroupKey, kind: &str, message: &HistoryMessage, now_ms: u64) -> Vec<u8> {
    let mut body = Map::new();
    body.insert("CallbackCommand".into(), json!(COMMAND));
    body.insert("GroupId".into(), json!(key.group));
    body.insert(
        "Type".into(),
        json!(if kind.is_empty() { "Public" } else { kind }),
    );
    body.insert("From_Account".into(), json!(message.from_account));
    body.insert("Operator_Account".into(), json!(message.from_account));
    body.insert("Random".into(), json!(message.msg_random));
    body.insert("MsgSeq".into(), json!(message.msg_seq));
    body.insert("MsgTime".into(), json!(message.msg_time_stamp));
    body.insert("OnlineOnlyFlag".into(), json!(0));
    let elements = match &message.msg_body {
        Value::Array(_) => message.msg_body.clone(),
        _ => json!([]),
    };
    body.insert("MsgBody".into(), elements);
    if let Some(data) = &message.cloud_custom_data {
        body.insert("CloudCustomData".into(), json!(data));
    }
    if let Some(topic) = &key.topic {
        body.insert("TopicId".into(), json!(topic));
    }
    body.insert("EventTime".into(), json!(now_ms));
    serde_json::to_vec(&Value::Object(body)).expect("a JSON value serialises")
}

/// The record of the backfilled callback: built by the same path as a live one.
pub fn record(
    builder: &RecordBuilder,
    key: &GroupKey,
    kind: &str,
    message: &HistoryMessage,
    now_ms: u64,
) -> Result<Record, CallbackError> {
    let policy = Policy {
        signers: Signers::Any { token: None },
        max_clock_skew: std::time::Duration::MAX,
    };
    let query = format!(
        "SdkAppid={}&CallbackCommand={COMMAND}&contenttype=json",
        key.sdkappid
    );
    let callback = VerifiedQuery::verify(&query, &policy, now_ms / 1000)?
        .accept(Bytes::from(body(key, kind, message, now_ms)), now_ms)?;
    let mut record = builder.build(callback);
    // Before the dedup id, which stays last.
    let at = record
        .headers
        .iter()
        .position(|(name, _)| *name == header::DEDUP_ID)
        .unwrap_or(record.headers.len());
    record
        .headers
        .insert(at, (header::SOURCE, SOURCE_BACKFILL.to_string()));
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Template;

    #[test]
    fn a_backfill_has_the_live_records_partition_and_dedup_id() {
        let key = GroupKey {
            sdkappid: 1400000000,
            group: "@TGS#2J4SZEAEL".into(),
            topic: None,
        };
        let message = HistoryMessage {
            from_account: "jared".into(),
            is_place_msg: 0,
            is_system_msg: 0,
            msg_priority: None,
            msg_random: 42,
            msg_seq: 123,
            msg_time_stamp: 1_700_000_000,
            msg_body: json!([{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}]),
            cloud_custom_data: Some("x".into()),
        };
        let builder = RecordBuilder::new(
            Template::parse("k", "tim.{command}.{partition}").unwrap(),
            16,
        );
        let r = record(&builder, &key, "Public", &message, 1_700_000_001_000).unwrap();
        let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            headers,
            vec![
                ("tim-sdkappid", "1400000000"),
                ("tim-callback-command", "Group.CallbackAfterSendMsg"),
                ("tim-group-id", "@TGS#2J4SZEAEL"),
                ("tim-msg-seq", "123"),
                ("tim-received-at", "1700000001000"),
                ("tim-source", "backfill"),
                // The live record's id for the same message (sink::record's test).
                ("tim-dedup-id", "g:1400000000:123:14:@TGS#2J4SZEAEL:0::"),
            ]
        );
        assert_eq!(r.key, "@TGS#2J4SZEAEL");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["MsgTime"], 1_700_000_000);
        assert_eq!(body["Random"], 42);
        assert_eq!(body["From_Account"], "jared");
        assert_eq!(body["CloudCustomData"], "x");
        assert_eq!(body["MsgBody"][0]["MsgContent"]["Text"], "hi");
    }
}
