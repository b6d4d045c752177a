//! The published stream, read back: a JetStream durable pull consumer on the bridge's stream,
//! each message turned into an [`Observation`] of (group, seq) from the record's headers (and
//! the group's `Type` from its body). Records that are not group messages are skipped.

use async_nats::jetstream::{self, consumer, Message};
use bytes::Bytes;

use super::tracker::GroupKey;
use crate::core::record::header;

/// One group message as the auditor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub key: GroupKey,
    pub seq: u64,
    /// The body's `Type`, `""` when absent.
    pub kind: String,
    /// `tim-received-at`, unix ms.
    pub received_at_ms: u64,
    /// Published by the auditor itself (`tim-source: backfill`).
    pub backfill: bool,
    /// The record's body (shared, not copied), for `--verify-sample`.
    pub body: Bytes,
}

/// The group message in a JetStream `message`, if it is one.
pub fn observe(message: &Message) -> Option<Observation> {
    let headers = message.headers.as_ref()?;
    observation(
        |name| headers.get(name).map(|v| v.as_str()),
        &message.payload,
    )
}

/// The group message of a record with these headers (`get`) and body, if it is one.
pub fn observation<'h>(
    get: impl Fn(&str) -> Option<&'h str>,
    payload: &Bytes,
) -> Option<Observation> {
    if get(header::COMMAND)? != super::backfill::COMMAND {
        return None;
    }
    let key = GroupKey {
        sdkappid: get(header::SDKAPPID)?.parse().ok()?,
        group: get(header::GROUP_ID)?.to_string(),
        topic: get(header::TOPIC_ID).map(str::to_string),
    };
    let seq = get(header::MSG_SEQ)?.parse().ok()?;
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "Type", borrow, default)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    let kind = serde_json::from_slice::<Kind>(payload)
        .ok()
        .and_then(|k| k.kind)
        .map(|k| k.into_owned())
        .unwrap_or_default();
    Some(Observation {
        key,
        seq,
        kind,
        received_at_ms: get(header::RECEIVED_AT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        backfill: get(header::SOURCE) == Some(super::backfill::SOURCE_BACKFILL),
        body: payload.clone(),
    })
}

/// The durable consumer `name` on `stream`, created when missing. Acknowledged explicitly,
/// once the state that includes a message is checkpointed.
pub async fn consumer(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    filter_subject: Option<String>,
    max_ack_pending: usize,
) -> Result<consumer::PullConsumer, String> {
    let stream = js
        .get_stream(stream)
        .await
        .map_err(|e| format!("stream {stream}: {e}"))?;
    stream
        .get_or_create_consumer(
            name,
            consumer::pull::Config {
                durable_name: Some(name.to_string()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: i64::try_from(max_ack_pending).unwrap_or(i64::MAX),
                ack_wait: std::time::Duration::from_secs(60),
                filter_subject: filter_subject.unwrap_or_default(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer {name}: {e}"))
}

/// A subject turned into a consumer-name part (names allow no `.`, `*`, `>`).
pub fn name_part(subject: &str) -> String {
    subject
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
