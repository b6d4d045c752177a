//! Parsing and validating callback bodies; a [`Callback`] is a verified URL with its validated
//! body.
//!
//! `Group.CallbackAfterSendMsg`, the message the bridge exists for, is checked field by field
//! (types, required fields). Every other command only has to be a JSON object whose
//! `CallbackCommand` matches the URL; the fields the bridge routes on are read leniently.
//! Unknown fields and unknown `MsgType`s are always accepted: Tencent adds them over time, and a
//! refused callback is a message lost for good. The body itself is never rewritten: these
//! structs only look at it.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::commands;
use super::error::CallbackError;
use super::query::Query;

pub const GROUP_AFTER_SEND_MSG: &str = "Group.CallbackAfterSendMsg";
pub const C2C_AFTER_SEND_MSG: &str = "C2C.CallbackAfterSendMsg";

/// What the bridge takes from a body to route and label it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields {
    pub group_id: Option<String>,
    pub topic_id: Option<String>,
    pub msg_id: Option<String>,
    pub msg_seq: Option<u64>,
    pub from_account: Option<String>,
    pub to_account: Option<String>,
    pub msg_key: Option<String>,
    /// `Report_Account` (C2C read reports).
    pub report_account: Option<String>,
    /// `Info.To_Account` (login state changes).
    pub state_account: Option<String>,
    /// `MsgSeqList[].MsgSeq` (group recalls).
    pub msg_seq_list: Vec<u64>,
    /// `EventTime` in ms, number or string of digits.
    pub event_time: Option<u64>,
    /// `NewMemberList[].Member_Account` or `ExitMemberList[].Member_Account`.
    pub members: Vec<String>,
}

/// Parses `body` as the callback named `url_command` in the URL.
pub fn parse(url_command: &str, body: &[u8]) -> Result<Fields, CallbackError> {
    // JSON text is UTF-8 (RFC 8259 §8.1). serde checks only the strings it reads, not those it
    // skips, so the whole body is checked first (SIMD: a small share of the parse's cost).
    if let Err(err) = simdutf8::compat::from_utf8(body) {
        return Err(CallbackError::BadJson(format!(
            "the body is not valid UTF-8 (at byte {})",
            err.valid_up_to()
        )));
    }
    // serde would also read a struct from a JSON array (positionally): only objects are callbacks.
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => return Err(CallbackError::BadJson("expected a JSON object".into())),
        None => return Err(CallbackError::BadJson("the body is empty".into())),
    }
    let fields = if url_command == GROUP_AFTER_SEND_MSG {
        match serde_json::from_slice::<GroupMsg>(body) {
            Ok(msg) => msg.check()?,
            Err(err) => {
                // A body of another command fails the strict checks with a misleading
                // "missing field": say what is really wrong when the command differs.
                let envelope = lenient(body)?;
                check_command(url_command, &envelope.command)?;
                return Err(CallbackError::InvalidBody(err.to_string()));
            }
        }
    } else {
        lenient(body)?.check(url_command)?
    };
    fields.check_identities()?;
    Ok(fields)
}

/// The longest identity field the bridge accepts. Tencent's own limits are far below it
/// (GroupId 48 bytes, accounts 32); the bound keeps a hostile body from making headers that
/// no broker takes.
pub const MAX_ID_BYTES: usize = 256;

impl Fields {
    /// Every value that becomes a header, a key or part of the dedup id: a control character
    /// could split or forge a header, and an unbounded one could overflow the broker's header
    /// limit (a permanent failure that is the sender's, not the broker's).
    fn check_identities(&self) -> Result<(), CallbackError> {
        for (name, value) in [
            ("GroupId", &self.group_id),
            ("TopicId", &self.topic_id),
            ("MsgId", &self.msg_id),
            ("From_Account", &self.from_account),
            ("To_Account", &self.to_account),
            ("MsgKey", &self.msg_key),
            ("Report_Account", &self.report_account),
            ("Info.To_Account", &self.state_account),
        ] {
            let Some(value) = value.as_deref() else {
                continue;
            };
            if let Some(c) = value.chars().find(|c| c.is_control()) {
                return Err(CallbackError::InvalidBody(format!(
                    "{name} contains the control character {c:?}"
                )));
            }
            if value.len() > MAX_ID_BYTES {
                return Err(CallbackError::InvalidBody(format!(
                    "{name} is {} bytes long, more than {MAX_ID_BYTES}",
                    value.len()
                )));
            }
        }
        for member in &self.members {
            if member.len() > MAX_ID_BYTES || member.chars().any(|c| c.is_control()) {
                return Err(CallbackError::InvalidBody(
                    "a member account has a control character or is over the length bound".into(),
                ));
            }
        }
        Ok(())
    }
}

fn lenient(body: &[u8]) -> Result<Envelope<'_>, CallbackError> {
    serde_json::from_slice::<Envelope>(body).map_err(|err| {
        // serde stops at the first problem; a type error may hide broken JSON further on.
        // Checking the whole syntax costs a second pass, on the error path only.
        match serde_json::from_slice::<IgnoredAny>(body) {
            Err(syntax) => CallbackError::BadJson(syntax.to_string()),
            Ok(_) => CallbackError::InvalidBody(err.to_string()),
        }
    })
}

fn check_command(url: &str, body: &str) -> Result<(), CallbackError> {
    if url == body {
        Ok(())
    } else {
        Err(CallbackError::CommandMismatch {
            url: url.to_owned(),
            body: body.to_owned(),
        })
    }
}

/// `Group.CallbackAfterSendMsg`, as PROTOCOL.md describes it.
#[derive(Deserialize)]
struct GroupMsg<'a> {
    #[serde(rename = "CallbackCommand", borrow)]
    command: Cow<'a, str>,
    #[serde(rename = "GroupId", borrow)]
    group_id: Cow<'a, str>,
    #[serde(rename = "Type", borrow, default)]
    _group_type: Option<Cow<'a, str>>,
    #[serde(rename = "From_Account", borrow)]
    from_account: Cow<'a, str>,
    #[serde(rename = "Operator_Account", borrow, default)]
    _operator_account: Option<Cow<'a, str>>,
    #[serde(rename = "Random", default)]
    _random: Option<u64>,
    #[serde(rename = "MsgSeq")]
    msg_seq: u64,
    #[serde(rename = "MsgTime", default)]
    _msg_time: Option<u64>,
    #[serde(rename = "OnlineOnlyFlag", default)]
    online_only_flag: Option<u64>,
    #[serde(rename = "MsgBody")]
    _msg_body: Vec<MsgElement<'a>>,
    #[serde(rename = "CloudCustomData", borrow, default)]
    _cloud_custom_data: Option<Cow<'a, str>>,
    #[serde(rename = "TopicId", borrow, default)]
    topic_id: Option<Cow<'a, str>>,
    #[serde(rename = "MsgId", borrow, default)]
    msg_id: Option<Cow<'a, str>>,
    #[serde(rename = "EventTime", default)]
    _event_time: Option<EventTime>,
    #[serde(rename = "GroupAtInfo", default)]
    _group_at_info: Option<Vec<GroupAt<'a>>>,
}

#[derive(Deserialize)]
struct MsgElement<'a> {
    #[serde(rename = "MsgType", borrow)]
    _msg_type: Cow<'a, str>,
    #[serde(rename = "MsgContent")]
    _msg_content: JsonObject,
}

#[derive(Deserialize)]
struct GroupAt<'a> {
    #[serde(rename = "GroupAtAllFlag", default)]
    _all: Option<u64>,
    #[serde(rename = "GroupAt_Account", borrow, default)]
    _account: Option<Cow<'a, str>>,
}

impl GroupMsg<'_> {
    fn check(self) -> Result<Fields, CallbackError> {
        check_command(GROUP_AFTER_SEND_MSG, &self.command)?;
        if self.group_id.is_empty() {
            return Err(CallbackError::InvalidBody("GroupId is empty".into()));
        }
        if let Some(flag) = self.online_only_flag.filter(|f| *f > 1) {
            return Err(CallbackError::InvalidBody(format!(
                "OnlineOnlyFlag is {flag}, expected 0 or 1"
            )));
        }
        Ok(Fields {
            group_id: Some(self.group_id.into_owned()),
            topic_id: self.topic_id.map(Cow::into_owned),
            msg_id: self.msg_id.map(Cow::into_owned),
            msg_seq: Some(self.msg_seq),
            from_account: Some(self.from_account.into_owned()),
            ..Fields::default()
        })
    }
}

/// Any other command: the routing fields are taken when they have the expected type and
/// ignored otherwise, so that an unusual body is still published rather than lost.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "CallbackCommand", borrow)]
    command: Cow<'a, str>,
    #[serde(rename = "GroupId", borrow, default)]
    group_id: LooseStr<'a>,
    #[serde(rename = "TopicId", borrow, default)]
    topic_id: LooseStr<'a>,
    #[serde(rename = "MsgId", borrow, default)]
    msg_id: LooseStr<'a>,
    #[serde(rename = "MsgSeq", default)]
    msg_seq: LooseU64,
    #[serde(rename = "From_Account", borrow, default)]
    from_account: LooseStr<'a>,
    #[serde(rename = "To_Account", borrow, default)]
    to_account: LooseStr<'a>,
    #[serde(rename = "MsgKey", borrow, default)]
    msg_key: LooseStr<'a>,
    #[serde(rename = "Report_Account", borrow, default)]
    report_account: LooseStr<'a>,
    // The fields below are read only for the commands that carry them, and leniently: they
    // identify an event, they never decide whether it is accepted.
    #[serde(rename = "Info", default)]
    info: Option<serde_json::Value>,
    #[serde(rename = "MsgSeqList", default)]
    msg_seq_list: Option<serde_json::Value>,
    #[serde(rename = "EventTime", default)]
    event_time: Option<serde_json::Value>,
    #[serde(rename = "NewMemberList", default)]
    new_members: Option<serde_json::Value>,
    #[serde(rename = "ExitMemberList", default)]
    exit_members: Option<serde_json::Value>,
}

impl Envelope<'_> {
    fn check(self, url_command: &str) -> Result<Fields, CallbackError> {
        check_command(url_command, &self.command)?;
        let owned = |s: LooseStr<'_>| s.0.filter(|s| !s.is_empty()).map(Cow::into_owned);
        Ok(Fields {
            group_id: owned(self.group_id),
            topic_id: owned(self.topic_id),
            msg_id: owned(self.msg_id),
            msg_seq: self.msg_seq.0,
            from_account: owned(self.from_account),
            to_account: owned(self.to_account),
            msg_key: owned(self.msg_key),
            report_account: owned(self.report_account),
            state_account: self
                .info
                .as_ref()
                .and_then(|info| info["To_Account"].as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            msg_seq_list: self
                .msg_seq_list
                .as_ref()
                .and_then(|v| v.as_array())
                .map(|items| items.iter().filter_map(|i| i["MsgSeq"].as_u64()).collect())
                .unwrap_or_default(),
            event_time: self.event_time.as_ref().and_then(|t| {
                t.as_u64()
                    .or_else(|| t.as_str().and_then(|s| s.parse().ok()))
            }),
            members: self
                .new_members
                .as_ref()
                .or(self.exit_members.as_ref())
                .and_then(|v| v.as_array())
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i["Member_Account"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// `EventTime` in milliseconds: a number in some of Tencent's samples, a string of digits in
/// others.
struct EventTime;

impl<'de> Deserialize<'de> for EventTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EventTime;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("milliseconds as an unsigned integer or a string of digits")
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<EventTime, E> {
                Ok(EventTime)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EventTime, E> {
                if !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) {
                    Ok(EventTime)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON object whose contents are not inspected (but still syntax-checked).
struct JsonObject;

impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(JsonObject)
            }
        }
        d.deserialize_map(V)
    }
}

/// A string if the value is one, nothing otherwise.
#[derive(Default)]
struct LooseStr<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for LooseStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Loose::<LooseStr<'a>>(std::marker::PhantomData))
    }
}

/// An unsigned integer if the value is one, nothing otherwise.
#[derive(Default)]
struct LooseU64(Option<u64>);

impl<'de> Deserialize<'de> for LooseU64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Loose::<LooseU64>(std::marker::PhantomData))
    }
}

/// One visitor for both loose types: it accepts every JSON value, keeps the kind it wants and
/// drains the rest.
struct Loose<T>(std::marker::PhantomData<T>);

trait LooseValue<'de>: Default {
    fn from_borrowed_str(_: &'de str) -> Self {
        Self::default()
    }
    fn from_string(_: String) -> Self {
        Self::default()
    }
    fn from_u64(_: u64) -> Self {
        Self::default()
    }
}

impl<'de: 'a, 'a> LooseValue<'de> for LooseStr<'a> {
    fn from_borrowed_str(s: &'de str) -> Self {
        LooseStr(Some(Cow::Borrowed(s)))
    }
    fn from_string(s: String) -> Self {
        LooseStr(Some(Cow::Owned(s)))
    }
}

impl LooseValue<'_> for LooseU64 {
    fn from_u64(v: u64) -> Self {
        LooseU64(Some(v))
    }
}

impl<'de, T: LooseValue<'de>> Visitor<'de> for Loose<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<T, E> {
        Ok(T::from_borrowed_str(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok(T::from_string(v.to_owned()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Ok(T::from_u64(v))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(T::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(T::default())
    }
}

/// A verified, validated callback: ready to publish.
#[derive(Debug)]
pub struct Callback {
    pub(super) query: Query,
    pub(super) spec: Option<&'static commands::Spec>,
    pub(super) fields: Fields,
    pub(super) body: Bytes,
    pub(super) received_at_ms: u64,
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

    /// The command's entry in Tencent's table, `None` when unlisted.
    pub fn spec(&self) -> Option<&'static commands::Spec> {
        self.spec
    }

    pub fn query(&self) -> &Query {
        &self.query
    }

    /// When the request arrived, unix milliseconds.
    pub fn received_at_ms(&self) -> u64 {
        self.received_at_ms
    }

    pub fn into_body(self) -> Bytes {
        self.body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP_TEXT: &str = r#"{"CallbackCommand":"Group.CallbackAfterSendMsg","GroupId":"@TGS#2J4SZEAEL","Type":"Public","From_Account":"jared","Operator_Account":"admin","Random":123456,"MsgSeq":123,"MsgTime":1490686222,"OnlineOnlyFlag":1,"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"red packet"}}],"CloudCustomData":"x","EventTime":1670574414123}"#;

    fn group(patch: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_str(GROUP_TEXT).unwrap();
        patch(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    fn reason(command: &str, body: &[u8]) -> &'static str {
        parse(command, body).unwrap_err().reason()
    }

    #[test]
    fn reads_the_routing_fields_of_a_group_message() {
        let f = parse(GROUP_AFTER_SEND_MSG, GROUP_TEXT.as_bytes()).unwrap();
        assert_eq!(f.group_id.as_deref(), Some("@TGS#2J4SZEAEL"));
        assert_eq!(f.msg_seq, Some(123));
        assert_eq!(f.from_account.as_deref(), Some("jared"));
        assert_eq!(f.topic_id, None);
    }

    #[test]
    fn every_fixture_parses_and_every_known_command_has_one() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
        let mut commands = std::collections::BTreeSet::new();
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let body = std::fs::read(&path).unwrap();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let command = v["CallbackCommand"].as_str().unwrap();
                parse(command, &body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                commands.insert(command.to_owned());
            }
        }
        assert!(!commands.is_empty(), "no fixtures in {dir}");
        for known in super::super::commands::COMMANDS {
            assert!(
                commands.contains(known.name),
                "no fixture of {} in {dir}",
                known.name
            );
        }
    }

    #[test]
    fn accepts_unknown_fields_types_and_eventtime_strings() {
        let body = group(|v| {
            v["SomethingNew"] = serde_json::json!({"nested": [1, 2]});
            v["Type"] = "FutureRoomType".into();
            v["EventTime"] = "1670574414123".into();
            v["MsgBody"][0]["MsgType"] = "TIMFutureElem".into();
            v["MsgBody"][0]["MsgContent"] = serde_json::json!({"Whatever": [true]});
            v["GroupAtInfo"] = serde_json::json!([{"GroupAtAllFlag": 1}, {"GroupAtAllFlag": 0, "GroupAt_Account": "peter"}]);
            v["TopicId"] = "@TGS#_@TGS#cQVLVHIM62CJ@TOPIC#_TestTopic".into();
            v["MsgId"] = "144115233406643804-1727580296-4026038328".into();
        });
        let f = parse(GROUP_AFTER_SEND_MSG, &body).unwrap();
        assert_eq!(
            f.topic_id.as_deref(),
            Some("@TGS#_@TGS#cQVLVHIM62CJ@TOPIC#_TestTopic")
        );
        assert_eq!(
            f.msg_id.as_deref(),
            Some("144115233406643804-1727580296-4026038328")
        );
    }

    #[test]
    fn accepts_a_u64_msgseq() {
        let body = group(|v| v["MsgSeq"] = u64::MAX.into());
        assert_eq!(
            parse(GROUP_AFTER_SEND_MSG, &body).unwrap().msg_seq,
            Some(u64::MAX)
        );
    }

    #[test]
    fn refuses_wrong_types_and_missing_fields() {
        type Patch = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Patch)> = vec![
            ("MsgSeq string", Box::new(|v| v["MsgSeq"] = "123".into())),
            ("MsgSeq negative", Box::new(|v| v["MsgSeq"] = (-1).into())),
            ("MsgSeq float", Box::new(|v| v["MsgSeq"] = 1.5.into())),
            (
                "MsgSeq missing",
                Box::new(|v| drop(v.as_object_mut().unwrap().remove("MsgSeq"))),
            ),
            (
                "GroupId missing",
                Box::new(|v| drop(v.as_object_mut().unwrap().remove("GroupId"))),
            ),
            ("GroupId number", Box::new(|v| v["GroupId"] = 5.into())),
            ("GroupId empty", Box::new(|v| v["GroupId"] = "".into())),
            (
                "GroupId newline",
                Box::new(|v| v["GroupId"] = "a\r\nb".into()),
            ),
            (
                "From_Account missing",
                Box::new(|v| drop(v.as_object_mut().unwrap().remove("From_Account"))),
            ),
            (
                "MsgBody object",
                Box::new(|v| v["MsgBody"] = serde_json::json!({})),
            ),
            (
                "MsgBody element string",
                Box::new(|v| v["MsgBody"] = serde_json::json!(["x"])),
            ),
            (
                "MsgType number",
                Box::new(|v| v["MsgBody"][0]["MsgType"] = 1.into()),
            ),
            (
                "MsgContent array",
                Box::new(|v| v["MsgBody"][0]["MsgContent"] = serde_json::json!([])),
            ),
            (
                "EventTime letters",
                Box::new(|v| v["EventTime"] = "soon".into()),
            ),
            (
                "EventTime negative",
                Box::new(|v| v["EventTime"] = (-5).into()),
            ),
            (
                "OnlineOnlyFlag 2",
                Box::new(|v| v["OnlineOnlyFlag"] = 2.into()),
            ),
            (
                "GroupAtInfo object",
                Box::new(|v| v["GroupAtInfo"] = serde_json::json!({})),
            ),
            ("TopicId number", Box::new(|v| v["TopicId"] = 1.into())),
        ];
        for (name, patch) in cases {
            let body = group(|v| patch(v));
            assert_eq!(
                reason(GROUP_AFTER_SEND_MSG, &body),
                "invalid_body",
                "{name}"
            );
        }
    }

    #[test]
    fn refuses_what_is_not_a_json_object() {
        for body in [
            "",
            "  ",
            "[]",
            "null",
            "\"x\"",
            "{",
            "{\"CallbackCommand\":",
            "{} x",
        ] {
            assert_eq!(
                reason(GROUP_AFTER_SEND_MSG, body.as_bytes()),
                "bad_json",
                "{body:?}"
            );
            assert_eq!(
                reason("State.StateChange", body.as_bytes()),
                "bad_json",
                "{body:?}"
            );
        }
        let array = format!("[{GROUP_TEXT}]");
        assert_eq!(reason(GROUP_AFTER_SEND_MSG, array.as_bytes()), "bad_json");
        let mut truncated = GROUP_TEXT.as_bytes().to_vec();
        truncated.truncate(truncated.len() - 3);
        assert_eq!(reason(GROUP_AFTER_SEND_MSG, &truncated), "bad_json");
    }

    #[test]
    fn refuses_a_command_that_differs_from_the_url() {
        assert_eq!(
            reason("Group.CallbackBeforeSendMsg", GROUP_TEXT.as_bytes()),
            "command_mismatch"
        );
        let member_join =
            br#"{"CallbackCommand":"Group.CallbackAfterNewMemberJoin","GroupId":"g"}"#;
        assert_eq!(
            reason(GROUP_AFTER_SEND_MSG, member_join),
            "command_mismatch"
        );
        assert_eq!(
            reason(GROUP_AFTER_SEND_MSG, br#"{"GroupId":"g"}"#),
            "invalid_body"
        );
        assert_eq!(
            reason("State.StateChange", br#"{"Info":{}}"#),
            "invalid_body"
        );
    }

    #[test]
    fn other_commands_are_read_leniently() {
        let body = br#"{"CallbackCommand":"Group.CallbackAfterRecallMsg","GroupId":"@TGS#1","MsgSeqList":[{"MsgSeq":1}],"MsgSeq":"not a number","From_Account":7}"#;
        let f = parse("Group.CallbackAfterRecallMsg", body).unwrap();
        assert_eq!(f.group_id.as_deref(), Some("@TGS#1"));
        assert_eq!(f.msg_seq, None);
        assert_eq!(f.from_account, None);

        let c2c = br#"{"CallbackCommand":"C2C.CallbackAfterSendMsg","From_Account":"jared","To_Account":"Jonh","MsgKey":"48374_2837546_1557481126","MsgSeq":48374}"#;
        let f = parse(C2C_AFTER_SEND_MSG, c2c).unwrap();
        assert_eq!(f.group_id, None);
        assert_eq!(f.from_account.as_deref(), Some("jared"));
        assert_eq!(f.to_account.as_deref(), Some("Jonh"));
        assert_eq!(f.msg_key.as_deref(), Some("48374_2837546_1557481126"));

        let escaped = br#"{"CallbackCommand":"State.StateChange","GroupId":"a\u0041b"}"#;
        assert_eq!(
            parse("State.StateChange", escaped)
                .unwrap()
                .group_id
                .as_deref(),
            Some("aAb")
        );
    }

    #[test]
    fn refuses_duplicate_routing_fields() {
        let body = br#"{"CallbackCommand":"Group.CallbackAfterSendMsg","CallbackCommand":"Group.CallbackAfterSendMsg","GroupId":"g","From_Account":"a","MsgSeq":1,"MsgBody":[]}"#;
        assert_eq!(reason(GROUP_AFTER_SEND_MSG, body), "invalid_body");
    }
}
