//! The wire record: what a consumer receives, built once, by one pure step, from a validated
//! callback. Every sink publishes exactly this (subject or topic, key, headers, body), so NATS,
//! Kafka and stdout agree, and the spool can store it as it is.

use super::destination::{partition, Template};
use crate::core::record::{header, Record};
use crate::tencent::callback::commands::{self, Identity, Key};
use crate::tencent::callback::Callback;
use crate::wire::apps::App;

/// What `{command}` renders as for a command not in Tencent's table: one fixed destination
/// (`tim.unknown.{partition}`, topic `tim.unknown` by default), so that a caller cannot name
/// subjects or topics by inventing commands. The record's `tim-callback-command` header keeps
/// the command itself.
pub const UNKNOWN_COMMAND: &str = "unknown";

/// Turns callbacks into records for a destination template (and the apps' own ones) and a
/// partition count.
#[derive(Debug, Clone)]
pub struct RecordBuilder {
    destination: Template,
    /// Apps with a destination of their own (a handful: a scan beats a hash).
    app_destinations: Vec<(u64, Template)>,
    partitions: u32,
}

impl RecordBuilder {
    pub fn new(destination: Template, partitions: u32) -> RecordBuilder {
        RecordBuilder {
            destination,
            app_destinations: Vec::new(),
            partitions: partitions.max(1),
        }
    }

    /// Routes each app that has a destination of its own there.
    pub fn with_apps(mut self, apps: &[App]) -> RecordBuilder {
        self.app_destinations = apps
            .iter()
            .filter_map(|app| Some((app.sdkappid, app.destination.clone()?)))
            .collect();
        self
    }

    pub fn build(&self, callback: Callback) -> Record {
        let key = partition_key(&callback).into_owned();
        let partition = partition(key.as_bytes(), self.partitions);
        let sdkappid = callback.sdkappid();
        let template = self
            .app_destinations
            .iter()
            .find(|(id, _)| *id == sdkappid)
            .map_or(&self.destination, |(_, template)| template);
        let command = callback.spec().map_or(UNKNOWN_COMMAND, |spec| spec.name);
        let destination = template.render(command, partition, sdkappid);
        let headers = headers(&callback);
        Record {
            destination,
            key,
            partition,
            headers,
            body: callback.into_body(),
        }
    }
}

/// The command table's key for this command (see [`commands`]); the app id when the field is
/// absent or the command is not in the table.
fn partition_key(callback: &Callback) -> std::borrow::Cow<'_, str> {
    let f = callback.fields();
    let key = callback.spec().map_or(Key::App, |spec| spec.key);
    let field = match key {
        Key::GroupId => f.group_id.as_deref(),
        Key::FromAccount => f.from_account.as_deref(),
        Key::ReportAccount => f.report_account.as_deref(),
        Key::StateAccount => f.state_account.as_deref(),
        Key::App => None,
    };
    match field {
        Some(value) => value.into(),
        None => callback.sdkappid().to_string().into(),
    }
}

/// The partition key of a record read back from a stream (the body already validated when it
/// was published): the command table's field, as [`partition_key`] chose it; `None` for the
/// app id.
pub fn key_field(command: &str, body: &serde_json::Value) -> Option<String> {
    let key = commands::lookup(command).map_or(Key::App, |spec| spec.key);
    let field = match key {
        Key::GroupId => body.get("GroupId"),
        Key::FromAccount => body.get("From_Account"),
        Key::ReportAccount => body.get("Report_Account"),
        Key::StateAccount => body.get("Info").and_then(|info| info.get("To_Account")),
        Key::App => None,
    };
    field.and_then(|v| v.as_str()).map(str::to_string)
}

fn headers(callback: &Callback) -> Vec<(&'static str, String)> {
    let f = callback.fields();
    let q = callback.query();
    let mut out = Vec::with_capacity(10);
    out.push((header::SDKAPPID, q.sdkappid.to_string()));
    out.push((header::COMMAND, q.command.clone()));
    let optional = [
        (header::GROUP_ID, f.group_id.clone()),
        (header::MSG_SEQ, f.msg_seq.map(|s| s.to_string())),
        (header::TOPIC_ID, f.topic_id.clone()),
        (header::MSG_ID, f.msg_id.clone()),
        (header::CLIENT_IP, q.client_ip.clone()),
        (header::OPT_PLATFORM, q.opt_platform.clone()),
    ];
    out.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v))),
    );
    if !f.msg_seq_list.is_empty() {
        let seqs: Vec<String> = f.msg_seq_list.iter().map(u64::to_string).collect();
        out.push((header::MSG_SEQ_LIST, seqs.join(",")));
    }
    out.push((header::RECEIVED_AT, callback.received_at_ms().to_string()));
    if let Some(id) = dedup_id(callback) {
        out.push((header::DEDUP_ID, id));
    }
    out
}

/// A stable identity for the callbacks that have one (the command table's [`Identity`]).
/// Lengths prefix the free-form parts so that no two identities spell the same id.
///
/// Adding `MsgId` to a group message's id can only make two ids differ, never collide: a
/// retried callback carries the same `MsgId`, while two room messages that share a MsgSeq are
/// not both dropped.
fn dedup_id(callback: &Callback) -> Option<String> {
    let f = callback.fields();
    let app = callback.sdkappid();
    let identity = callback.spec().map_or(Identity::None, |s| s.identity);
    let topic = f.topic_id.as_deref().unwrap_or("");
    let listed = |items: &mut dyn Iterator<Item = String>| {
        items
            .map(|item| format!("{}:{item}", item.len()))
            .collect::<Vec<_>>()
            .join(":")
    };
    match identity {
        Identity::None => None,
        Identity::GroupMessage => {
            let group = f.group_id.as_deref()?;
            let seq = f.msg_seq?;
            let msg_id = f.msg_id.as_deref().unwrap_or("");
            Some(format!(
                "g:{app}:{seq}:{}:{group}:{}:{topic}:{msg_id}",
                group.len(),
                topic.len()
            ))
        }
        Identity::C2cMessage | Identity::C2cRecall => {
            let from = f.from_account.as_deref()?;
            let to = f.to_account.as_deref()?;
            let key = f.msg_key.as_deref()?;
            let kind = if identity == Identity::C2cMessage {
                'c'
            } else {
                'w'
            };
            Some(format!(
                "{kind}:{app}:{}:{from}:{}:{to}:{key}",
                from.len(),
                to.len()
            ))
        }
        Identity::GroupRecall => {
            let group = f.group_id.as_deref()?;
            if f.msg_seq_list.is_empty() {
                return None;
            }
            let seqs: Vec<String> = f.msg_seq_list.iter().map(u64::to_string).collect();
            Some(format!(
                "r:{app}:{}:{group}:{}:{topic}:{}",
                group.len(),
                topic.len(),
                seqs.join(",")
            ))
        }
        Identity::MemberJoin | Identity::MemberExit => {
            let group = f.group_id.as_deref()?;
            let time = f.event_time?;
            let kind = if identity == Identity::MemberJoin {
                'j'
            } else {
                'x'
            };
            let members = listed(&mut f.members.iter().cloned());
            Some(format!(
                "{kind}:{app}:{}:{group}:{time}:{members}",
                group.len()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::tencent::callback::{body, Policy, Signers, VerifiedQuery};

    fn policy() -> Policy {
        Policy {
            signers: Signers::Listed(vec![(1400000000, None)]),
            max_clock_skew: Duration::from_secs(60),
        }
    }

    const GROUP: &[u8] = br#"{"CallbackCommand":"Group.CallbackAfterSendMsg","GroupId":"@TGS#2J4SZEAEL","From_Account":"jared","MsgSeq":123,"MsgBody":[]}"#;

    fn build(query: &str, body: &'static [u8]) -> Record {
        let callback = VerifiedQuery::verify(query, &policy(), 0)
            .unwrap()
            .accept(Bytes::from_static(body), 1234)
            .unwrap();
        let template = Template::parse("--nats-subject", "tim.{command}.{partition}").unwrap();
        RecordBuilder::new(template, 16).build(callback)
    }

    #[test]
    fn an_app_with_its_own_destination_goes_there() {
        let mut staging = App::new(1400000001, None);
        staging.destination = Some(Template::parse("k", "staging.{command}").unwrap());
        let policy = Policy {
            signers: Signers::Listed(vec![(1400000000, None), (1400000001, None)]),
            max_clock_skew: Duration::from_secs(60),
        };
        let builder = RecordBuilder::new(Template::parse("k", "tim.{sdkappid}").unwrap(), 16)
            .with_apps(&[App::new(1400000000, None), staging]);
        let record = |app: u64| {
            let query = format!("SdkAppid={app}&CallbackCommand=Group.CallbackAfterSendMsg");
            let callback = VerifiedQuery::verify(&query, &policy, 0)
                .unwrap()
                .accept(Bytes::from_static(GROUP), 0)
                .unwrap();
            builder.build(callback).destination
        };
        assert_eq!(record(1400000000), "tim.1400000000");
        assert_eq!(record(1400000001), "staging.Group.CallbackAfterSendMsg");
    }

    #[test]
    fn a_group_message_carries_its_metadata_in_order() {
        let r = build(
            "SdkAppid=1400000000&CallbackCommand=Group.CallbackAfterSendMsg&ClientIP=1.2.3.4&OptPlatform=iOS",
            GROUP,
        );
        let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            headers,
            vec![
                ("tim-sdkappid", "1400000000"),
                ("tim-callback-command", "Group.CallbackAfterSendMsg"),
                ("tim-group-id", "@TGS#2J4SZEAEL"),
                ("tim-msg-seq", "123"),
                ("tim-client-ip", "1.2.3.4"),
                ("tim-opt-platform", "iOS"),
                ("tim-received-at", "1234"),
                ("tim-dedup-id", "g:1400000000:123:14:@TGS#2J4SZEAEL:0::"),
            ]
        );
        assert_eq!(r.key, "@TGS#2J4SZEAEL");
        assert_eq!(r.partition, partition(b"@TGS#2J4SZEAEL", 16));
        assert_eq!(
            r.destination,
            format!("tim.Group.CallbackAfterSendMsg.{}", r.partition)
        );
        assert_eq!(r.body.as_ref(), GROUP);
        assert_eq!(r.dedup_id(), Some("g:1400000000:123:14:@TGS#2J4SZEAEL:0::"));
    }

    /// Every fixture: the record a consumer receives, field by field, from the body alone.
    #[test]
    fn every_fixture_becomes_the_record_its_body_describes() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let name = path.display().to_string();
            let bytes = std::fs::read(&path).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let command = v["CallbackCommand"].as_str().unwrap();
            let query = format!(
                "SdkAppid=1400000000&CallbackCommand={command}&contenttype=json&ClientIP=127.0.0.1&OptPlatform=RESTAPI"
            );
            let callback = VerifiedQuery::verify(&query, &policy(), 0)
                .unwrap()
                .accept(Bytes::from(bytes.clone()), 1234)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let template = Template::parse("--nats-subject", "tim.{command}.{partition}").unwrap();
            let r = RecordBuilder::new(template, 16).build(callback);

            assert_eq!(
                r.body.as_ref(),
                bytes.as_slice(),
                "{name}: body byte for byte"
            );
            // The key, by the command's family (the table in `commands` says the same by name).
            let key = if command.starts_with("Group.") {
                v["GroupId"].as_str()
            } else if command == "C2C.CallbackAfterMsgReport" {
                v["Report_Account"].as_str()
            } else if command.starts_with("C2C.") || command.starts_with("Profile.") {
                v["From_Account"].as_str()
            } else if command.starts_with("State.") {
                v["Info"]["To_Account"].as_str()
            } else {
                None
            }
            .unwrap_or("1400000000");
            assert_eq!(r.key, key, "{name}: key");
            assert_eq!(r.partition, partition(key.as_bytes(), 16), "{name}");
            assert_eq!(
                r.destination,
                format!("tim.{command}.{}", r.partition),
                "{name}"
            );
            let h = |n: &str| {
                r.headers
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(h(header::SDKAPPID), Some("1400000000"), "{name}");
            assert_eq!(h(header::COMMAND), Some(command), "{name}");
            assert_eq!(h(header::GROUP_ID), v["GroupId"].as_str(), "{name}");
            assert_eq!(h(header::TOPIC_ID), v["TopicId"].as_str(), "{name}");
            assert_eq!(h(header::MSG_ID), v["MsgId"].as_str(), "{name}");
            let seq = v["MsgSeq"].as_u64().map(|s| s.to_string());
            assert_eq!(h(header::MSG_SEQ), seq.as_deref(), "{name}");
            assert_eq!(h(header::CLIENT_IP), Some("127.0.0.1"), "{name}");
            assert_eq!(h(header::OPT_PLATFORM), Some("RESTAPI"), "{name}");
            assert_eq!(h(header::RECEIVED_AT), Some("1234"), "{name}");
            let dedup = match command {
                body::GROUP_AFTER_SEND_MSG => {
                    let group = v["GroupId"].as_str().unwrap();
                    let topic = v["TopicId"].as_str().unwrap_or("");
                    Some(format!(
                        "g:1400000000:{}:{}:{group}:{}:{topic}:{}",
                        v["MsgSeq"],
                        group.len(),
                        topic.len(),
                        v["MsgId"].as_str().unwrap_or("")
                    ))
                }
                body::C2C_AFTER_SEND_MSG => {
                    let from = v["From_Account"].as_str().unwrap();
                    let to = v["To_Account"].as_str().unwrap();
                    Some(format!(
                        "c:1400000000:{}:{from}:{}:{to}:{}",
                        from.len(),
                        to.len(),
                        v["MsgKey"].as_str().unwrap()
                    ))
                }
                "Group.CallbackAfterRecallMsg" => {
                    Some("r:1400000000:14:@TGS#2J4SZEAEL:0::123,124".into())
                }
                "C2C.CallbackAfterMsgWithDraw" => {
                    Some("w:1400000000:5:jared:6:leckie:48374_2837546_1557481126".into())
                }
                "Group.CallbackAfterNewMemberJoin" => {
                    Some("j:1400000000:14:@TGS#2J4SZEAEL:1670574414123:5:jared:5:tommy".into())
                }
                "Group.CallbackAfterMemberExit" => {
                    Some("x:1400000000:14:@TGS#2J4SZEAEL:1670574414123:5:jared:5:tommy".into())
                }
                _ => None,
            };
            assert_eq!(r.dedup_id(), dedup.as_deref(), "{name}: dedup id");
            let seq_list = (command == "Group.CallbackAfterRecallMsg").then_some("123,124");
            assert_eq!(h(header::MSG_SEQ_LIST), seq_list, "{name}");
            seen += 1;
        }
        assert!(seen >= 30, "only {seen} fixtures in {dir}");
    }

    #[test]
    fn the_key_follows_the_command_table() {
        let c2c = build(
            "SdkAppid=1400000000&CallbackCommand=C2C.CallbackAfterSendMsg",
            br#"{"CallbackCommand":"C2C.CallbackAfterSendMsg","From_Account":"jared","To_Account":"Jonh","MsgKey":"1_2_3"}"#,
        );
        assert_eq!(c2c.key, "jared");
        assert_eq!(c2c.dedup_id(), Some("c:1400000000:5:jared:4:Jonh:1_2_3"));
        let state = build(
            "SdkAppid=1400000000&CallbackCommand=State.StateChange",
            br#"{"CallbackCommand":"State.StateChange","Info":{"To_Account":"x"}}"#,
        );
        let alert = build(
            "SdkAppid=1400000000&CallbackCommand=Alert.RequestOverLimit",
            br#"{"CallbackCommand":"Alert.RequestOverLimit","From_Account":"y"}"#,
        );
        assert_eq!(alert.key, "1400000000", "app-wide");
        // Not in the table: the app-level key, whatever the body holds.
        let unknown = build(
            "SdkAppid=1400000000&CallbackCommand=Live.CallbackAfterCreateRoom",
            br#"{"CallbackCommand":"Live.CallbackAfterCreateRoom","GroupId":"room1"}"#,
        );
        assert_eq!(unknown.key, "1400000000");
        assert_eq!(unknown.dedup_id(), None);
        // Its destination is the fixed one, not one named after the command; its header keeps
        // the command.
        let p = crate::wire::partition(b"1400000000", 16);
        assert_eq!(unknown.destination, format!("tim.unknown.{p}"));
        assert!(unknown
            .headers
            .contains(&(header::COMMAND, "Live.CallbackAfterCreateRoom".to_owned())));
        // A login state change is keyed by whose state changed.
        assert_eq!(state.key, "x");
        assert_eq!(state.dedup_id(), None);
        assert!(state.headers.iter().all(|(k, _)| *k != header::DEDUP_ID));
    }
}
