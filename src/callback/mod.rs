//! The Tencent IM callback protocol: query parameters, signature, body validation and the
//! answer format. Pure functions; nothing here does I/O.
//!
//! The types make the order of checks hard to get wrong: a [`VerifiedQuery`] exists only once
//! the URL passed the app id and signature checks, and a [`Callback`] (the only thing a sink
//! accepts) exists only once its body was validated against that query.

pub mod body;
pub mod query;
pub mod reply;
pub mod signature;

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;

use crate::error::Rejection;
pub use body::Fields;
pub use query::Query;
pub use signature::Token;

/// Which callbacks the bridge accepts: the app ids it serves and, when set, the token.
#[derive(Debug, Clone)]
pub struct Policy {
    pub sdkappids: AppIds,
    pub token: Option<Token>,
    pub max_clock_skew: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppIds {
    Any,
    Only(Vec<u64>),
}

/// A callback URL that passed the app id and signature checks; its body is not read yet.
#[derive(Debug)]
pub struct VerifiedQuery {
    query: Query,
}

impl VerifiedQuery {
    /// Checks the query string. `now_unix` is this server's clock, for `RequestTime`.
    pub fn verify(raw: &str, policy: &Policy, now_unix: u64) -> Result<VerifiedQuery, Rejection> {
        let query = Query::parse(raw)?;
        if let AppIds::Only(ids) = &policy.sdkappids {
            if !ids.contains(&query.sdkappid) {
                return Err(Rejection::ForbiddenAppId(query.sdkappid));
            }
        }
        if let Some(token) = &policy.token {
            signature::verify(
                token,
                query.sign.as_deref(),
                query.request_time.as_deref(),
                now_unix,
                policy.max_clock_skew,
            )?;
        }
        Ok(VerifiedQuery { query })
    }

    pub fn command(&self) -> &str {
        &self.query.command
    }

    /// Validates `body` against this query; `received_at_ms` is when the request arrived.
    pub fn accept(self, body: Bytes, received_at_ms: u64) -> Result<Callback, Rejection> {
        let fields = body::parse(&self.query.command, &body)?;
        let key = key_source(&self.query, &fields);
        Ok(Callback {
            query: self.query,
            fields,
            key,
            body,
            received_at_ms,
        })
    }
}

/// A verified, validated callback: ready to publish.
#[derive(Debug)]
pub struct Callback {
    query: Query,
    fields: Fields,
    key: KeySource,
    body: Bytes,
    received_at_ms: u64,
}

/// Header names, shared by every sink.
pub mod header {
    pub const SDKAPPID: &str = "tim-sdkappid";
    pub const COMMAND: &str = "tim-callback-command";
    pub const GROUP_ID: &str = "tim-group-id";
    pub const MSG_SEQ: &str = "tim-msg-seq";
    pub const TOPIC_ID: &str = "tim-topic-id";
    pub const MSG_ID: &str = "tim-msg-id";
    pub const CLIENT_IP: &str = "tim-client-ip";
    pub const OPT_PLATFORM: &str = "tim-opt-platform";
    pub const RECEIVED_AT: &str = "tim-received-at";
}

impl Callback {
    /// The request body, exactly as received.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub fn sdkappid(&self) -> u64 {
        self.query.sdkappid
    }

    pub fn command(&self) -> &str {
        &self.query.command
    }

    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// The key that decides the partition: everything with one key keeps its order.
    pub fn partition_key(&self) -> &str {
        match &self.key {
            KeySource::GroupId => self.fields.group_id.as_deref().unwrap_or_default(),
            KeySource::FromAccount => self.fields.from_account.as_deref().unwrap_or_default(),
            KeySource::SdkAppid(app) => app,
        }
    }

    /// The metadata headers, in a fixed order; absent values are left out.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, Cow<'_, str>)> {
        let f = &self.fields;
        let q = &self.query;
        fn borrowed<'a>(
            name: &'static str,
            v: &'a Option<String>,
        ) -> Option<(&'static str, Cow<'a, str>)> {
            v.as_deref().map(|v| (name, Cow::Borrowed(v)))
        }
        [
            Some((header::SDKAPPID, Cow::Owned(q.sdkappid.to_string()))),
            Some((header::COMMAND, Cow::Borrowed(q.command.as_str()))),
            borrowed(header::GROUP_ID, &f.group_id),
            f.msg_seq
                .map(|s| (header::MSG_SEQ, Cow::Owned(s.to_string()))),
            borrowed(header::TOPIC_ID, &f.topic_id),
            borrowed(header::MSG_ID, &f.msg_id),
            borrowed(header::CLIENT_IP, &q.client_ip),
            borrowed(header::OPT_PLATFORM, &q.opt_platform),
            Some((
                header::RECEIVED_AT,
                Cow::Owned(self.received_at_ms.to_string()),
            )),
        ]
        .into_iter()
        .flatten()
    }

    /// A stable identity for brokers that drop duplicates (JetStream's `Nats-Msg-Id`), for the
    /// callbacks that have one: group messages by (SdkAppid, GroupId, TopicId, MsgSeq) plus the
    /// room `MsgId` when there is one, C2C messages by (SdkAppid, From_Account, To_Account,
    /// MsgKey). Lengths prefix the free-form parts so that no two identities spell the same id.
    ///
    /// Adding `MsgId` can only make two ids differ, never collide: a retried callback carries
    /// the same `MsgId`, while two room messages that share a MsgSeq are not both dropped.
    pub fn dedup_id(&self) -> Option<String> {
        let f = &self.fields;
        let app = self.query.sdkappid;
        match self.query.command.as_str() {
            body::GROUP_AFTER_SEND_MSG => {
                let group = f.group_id.as_deref()?;
                let seq = f.msg_seq?;
                let topic = f.topic_id.as_deref().unwrap_or("");
                let msg_id = f.msg_id.as_deref().unwrap_or("");
                Some(format!(
                    "g:{app}:{seq}:{}:{group}:{}:{topic}:{msg_id}",
                    group.len(),
                    topic.len()
                ))
            }
            body::C2C_AFTER_SEND_MSG => {
                let from = f.from_account.as_deref()?;
                let to = f.to_account.as_deref()?;
                let key = f.msg_key.as_deref()?;
                Some(format!(
                    "c:{app}:{}:{from}:{}:{to}:{key}",
                    from.len(),
                    to.len()
                ))
            }
            _ => None,
        }
    }
}

/// Where the partition key comes from: GroupId for group callbacks (per-group order);
/// otherwise the sender (C2C, profile and friend callbacks, so one user's events stay in order);
/// otherwise the app id, which puts the remaining app-wide events in one partition, in order.
/// Kept as a choice rather than a copy of the string: the fields already own it.
#[derive(Debug, Clone)]
enum KeySource {
    GroupId,
    FromAccount,
    SdkAppid(String),
}

fn key_source(query: &Query, fields: &Fields) -> KeySource {
    if fields.group_id.is_some() {
        KeySource::GroupId
    } else if fields.from_account.is_some() {
        KeySource::FromAccount
    } else {
        KeySource::SdkAppid(query.sdkappid.to_string())
    }
}

/// The metric label for a command: the command itself when it is one Tencent documents,
/// `other` otherwise, so that callers cannot grow the label set.
pub fn command_label(command: &str) -> &'static str {
    KNOWN_COMMANDS
        .iter()
        .find(|known| **known == command)
        .copied()
        .unwrap_or("other")
}

pub const KNOWN_COMMANDS: &[&str] = &[
    "Group.CallbackAfterSendMsg",
    "Group.CallbackBeforeSendMsg",
    "Group.CallbackAfterRecallMsg",
    "Group.CallbackSendMsgException",
    "Group.CallbackAfterReadReceipt",
    "Group.CallbackAfterGroupMsgExtension",
    "Group.CallbackBeforeCreateGroup",
    "Group.CallbackAfterCreateGroup",
    "Group.CallbackBeforeApplyJoinGroup",
    "Group.CallbackBeforeInviteJoinGroup",
    "Group.CallbackAfterNewMemberJoin",
    "Group.CallbackAfterMemberExit",
    "Group.CallbackAfterGroupDestroyed",
    "Group.CallbackAfterGroupInfoChanged",
    "Group.CallbackOnMemberStateChange",
    "Group.CallbackAfterCreateTopic",
    "Group.CallbackAfterDestroyTopic",
    "Group.CallbackAfterTopicInfoChanged",
    "C2C.CallbackBeforeSendMsg",
    "C2C.CallbackAfterSendMsg",
    "C2C.CallbackAfterMsgReport",
    "C2C.CallbackAfterMsgWithDraw",
    "State.StateChange",
    "Profile.CallbackPortraitSet",
    "Sns.CallbackFriendAdd",
    "Sns.CallbackFriendDelete",
    "Sns.CallbackBlackListAdd",
    "Sns.CallbackBlackListDelete",
    "Sns.CallbackPrevFriendAdd",
    "Sns.CallbackPrevFriendResponse",
    "Alert.RequestOverLimit",
];

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: &[u8] = br#"{"CallbackCommand":"Group.CallbackAfterSendMsg","GroupId":"@TGS#2J4SZEAEL","From_Account":"jared","MsgSeq":123,"MsgBody":[]}"#;

    fn policy() -> Policy {
        Policy {
            sdkappids: AppIds::Only(vec![1400000000]),
            token: None,
            max_clock_skew: Duration::from_secs(60),
        }
    }

    fn accept(query: &str, body: &'static [u8]) -> Result<Callback, Rejection> {
        VerifiedQuery::verify(query, &policy(), 0)?.accept(Bytes::from_static(body), 1234)
    }

    #[test]
    fn refuses_other_apps() {
        let err = VerifiedQuery::verify("SdkAppid=1400000001&CallbackCommand=A.B", &policy(), 0)
            .unwrap_err();
        assert_eq!(err.reason(), "forbidden_sdkappid");
        let any = Policy {
            sdkappids: AppIds::Any,
            ..policy()
        };
        VerifiedQuery::verify("SdkAppid=1400000001&CallbackCommand=A.B", &any, 0).unwrap();
    }

    #[test]
    fn requires_the_signature_when_a_token_is_set() {
        let signed = Policy {
            token: Some(Token::new("xxxxyyyy".into())),
            ..policy()
        };
        let base = "SdkAppid=1400000000&CallbackCommand=A.B";
        let err = VerifiedQuery::verify(base, &signed, 1669872112).unwrap_err();
        assert_eq!(err.reason(), "missing_signature");
        let ok = format!("{base}&RequestTime=1669872112&Sign=17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061");
        VerifiedQuery::verify(&ok, &signed, 1669872112).unwrap();
    }

    #[test]
    fn headers_carry_the_metadata_in_order() {
        let cb = accept(
            "SdkAppid=1400000000&CallbackCommand=Group.CallbackAfterSendMsg&ClientIP=1.2.3.4&OptPlatform=iOS",
            GROUP,
        )
        .unwrap();
        let headers: Vec<(&str, String)> = cb.headers().map(|(k, v)| (k, v.into_owned())).collect();
        assert_eq!(
            headers,
            vec![
                ("tim-sdkappid", "1400000000".to_string()),
                (
                    "tim-callback-command",
                    "Group.CallbackAfterSendMsg".to_string()
                ),
                ("tim-group-id", "@TGS#2J4SZEAEL".to_string()),
                ("tim-msg-seq", "123".to_string()),
                ("tim-client-ip", "1.2.3.4".to_string()),
                ("tim-opt-platform", "iOS".to_string()),
                ("tim-received-at", "1234".to_string()),
            ]
        );
        assert_eq!(cb.partition_key(), "@TGS#2J4SZEAEL");
        assert_eq!(cb.body().as_ref(), GROUP);
        assert_eq!(
            cb.dedup_id().as_deref(),
            Some("g:1400000000:123:14:@TGS#2J4SZEAEL:0::")
        );
    }

    #[test]
    fn partition_key_falls_back_to_sender_then_app() {
        let c2c = accept(
            "SdkAppid=1400000000&CallbackCommand=C2C.CallbackAfterSendMsg",
            br#"{"CallbackCommand":"C2C.CallbackAfterSendMsg","From_Account":"jared","To_Account":"Jonh","MsgKey":"1_2_3"}"#,
        )
        .unwrap();
        assert_eq!(c2c.partition_key(), "jared");
        assert_eq!(
            c2c.dedup_id().as_deref(),
            Some("c:1400000000:5:jared:4:Jonh:1_2_3")
        );
        let state = accept(
            "SdkAppid=1400000000&CallbackCommand=State.StateChange",
            br#"{"CallbackCommand":"State.StateChange","Info":{"To_Account":"x"}}"#,
        )
        .unwrap();
        assert_eq!(state.partition_key(), "1400000000");
        assert_eq!(state.dedup_id(), None);
    }

    #[test]
    fn command_labels_are_a_fixed_set() {
        assert_eq!(
            command_label("Group.CallbackAfterSendMsg"),
            "Group.CallbackAfterSendMsg"
        );
        assert_eq!(command_label("Group.CallbackSomethingNew"), "other");
    }
}
