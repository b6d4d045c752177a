//! A simulator of **Tencent's** REST API (not of timbridge): the part the auditor calls, as
//! Tencent's public pages describe it (docs/protocol.md section 9), because Tencent cannot be
//! reached from the tests. It models:
//! - the calling convention: `sdkappid`, `identifier`, `usersig`, `random`, `contenttype` on the
//!   URL; every answer HTTP 200 with `ActionStatus`/`ErrorCode`/`ErrorInfo`;
//! - the UserSig, decoded and verified (70009 another key, 70001 expired, 70003 another
//!   identifier);
//! - `group_msg_get_simple`: seqs ≤ `ReqMsgSeq` newest first, at most 20 (and `ReqMsgNumber`),
//!   `IsFinished` 1 at the group's first seq, 2 when the rest is past retention; system notices
//!   (`IsSystemMsg` 1) and placeholders (`IsPlaceMsg`); AVChatRoom groups refused (the error
//!   code for that, 10004 here, is the simulator's choice: Tencent's pages only say the type is
//!   not supported);
//! - `get_group_info`: `Type` and `NextMsgSeq` of up to 50 groups;
//! - `ConfigSvc/GetIPList`: the list of the URL's `nettype`, as set by the test, or an error
//!   on demand;
//! - a calls-per-second limit per app answered with 60007, and 60007 injected on demand.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use timbridge::core::secret::Secret;
use timbridge::tencent::rest::usersig;

#[derive(Debug, Clone)]
pub struct SimMessage {
    pub from: String,
    pub random: u64,
    pub time: u64,
    pub body: Value,
    pub system: bool,
    pub placeholder: u8,
}

#[derive(Debug, Clone, Default)]
pub struct SimGroup {
    pub kind: String,
    pub messages: BTreeMap<u64, SimMessage>,
    /// Seqs below this are past retention.
    pub retained_from: u64,
}

#[derive(Default)]
struct State {
    groups: HashMap<String, SimGroup>,
    /// Calls per whole second (since the simulator started).
    per_second: BTreeMap<u64, u32>,
    calls: u64,
    /// `group_msg_get_simple` calls per `GroupId`, answered or not.
    history_calls: HashMap<String, u64>,
    rate_limited: u64,
    inject_60007: u32,
    /// GetIPList's answer per `nettype`; `None`: answered with an error.
    ip_lists: Option<HashMap<u8, Vec<String>>>,
}

#[derive(Clone)]
pub struct Tencent {
    pub addr: SocketAddr,
    pub sdkappid: u64,
    pub identifier: String,
    pub key: Secret,
    /// Tencent's limit, per app per second.
    pub limit: u32,
    state: Arc<Mutex<State>>,
    started: Instant,
}

impl Tencent {
    pub async fn start(sdkappid: u64, identifier: &str, key: &str, limit: u32) -> Tencent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = Tencent {
            addr: listener.local_addr().unwrap(),
            sdkappid,
            identifier: identifier.into(),
            key: Secret::new(key),
            limit,
            state: Arc::default(),
            started: Instant::now(),
        };
        let server = sim.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let sim = server.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let sim = sim.clone();
                            async move {
                                let query = request.uri().query().unwrap_or("").to_string();
                                let path = request.uri().path().to_string();
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let answer = sim.answer(&path, &query, &body);
                                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                                    answer.to_string(),
                                ))))
                            }
                        });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        sim
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_group(&self, id: &str, group: SimGroup) {
        self.state.lock().unwrap().groups.insert(id.into(), group);
    }

    /// What GetIPList answers for `nettype`.
    pub fn set_ip_list(&self, nettype: u8, list: &[&str]) {
        let mut state = self.state.lock().unwrap();
        state
            .ip_lists
            .get_or_insert_with(HashMap::new)
            .insert(nettype, list.iter().map(|s| s.to_string()).collect());
    }

    /// GetIPList fails until a list is set again.
    pub fn fail_ip_list(&self) {
        self.state.lock().unwrap().ip_lists = None;
    }

    /// The next `n` calls are answered 60007 whatever the rate.
    pub fn inject_rate_limit(&self, n: u32) {
        self.state.lock().unwrap().inject_60007 = n;
    }

    /// `group_msg_get_simple` calls naming `group`, whatever they were answered.
    pub fn history_calls(&self, group: &str) -> u64 {
        let s = self.state.lock().unwrap();
        s.history_calls.get(group).copied().unwrap_or(0)
    }

    /// (calls, answered 60007, most calls in one second).
    pub fn counts(&self) -> (u64, u64, u32) {
        let s = self.state.lock().unwrap();
        (
            s.calls,
            s.rate_limited,
            s.per_second.values().copied().max().unwrap_or(0),
        )
    }

    fn answer(&self, path: &str, query: &str, body: &[u8]) -> Value {
        let fail = |code: i64, info: &str| json!({"ActionStatus": "FAIL", "ErrorCode": code, "ErrorInfo": info});
        let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let mut state = self.state.lock().unwrap();
        state.calls += 1;
        if path.ends_with("/group_msg_get_simple") {
            let group = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|b| b["GroupId"].as_str().map(str::to_string))
                .unwrap_or_default();
            *state.history_calls.entry(group).or_default() += 1;
        }
        let second = self.started.elapsed().as_secs();
        let count = {
            let c = state.per_second.entry(second).or_insert(0);
            *c += 1;
            *c
        };
        if state.inject_60007 > 0 {
            state.inject_60007 -= 1;
            state.rate_limited += 1;
            return fail(60007, "injected: too many calls");
        }
        if count > self.limit {
            state.rate_limited += 1;
            return fail(60007, "too many calls per second");
        }
        if params.get("sdkappid").map(String::as_str) != Some(&self.sdkappid.to_string())
            || params.get("contenttype").map(String::as_str) != Some("json")
            || params
                .get("random")
                .and_then(|r| r.parse::<u32>().ok())
                .is_none()
        {
            return fail(10003, "bad sdkappid, contenttype or random");
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        match usersig::verify(
            &self.key,
            params.get("usersig").map_or("", String::as_str),
            now,
        ) {
            Ok(claims)
                if claims.identifier != self.identifier
                    || Some(&claims.identifier) != params.get("identifier") =>
            {
                return fail(70003, "UserSig identifier mismatch")
            }
            Ok(claims) if claims.sdkappid != self.sdkappid => {
                return fail(70003, "UserSig sdkappid mismatch")
            }
            Ok(_) => {}
            Err(usersig::VerifyError::Expired(_)) => return fail(70001, "UserSig expired"),
            Err(usersig::VerifyError::WrongKey) => {
                return fail(70009, "UserSig signed with another key")
            }
            Err(usersig::VerifyError::Malformed(_)) => return fail(70003, "UserSig invalid"),
        }
        let Ok(request) = serde_json::from_slice::<Value>(body) else {
            return fail(10004, "body is not JSON");
        };
        match path {
            "/v4/group_open_http_svc/group_msg_get_simple" => {
                history(&state.groups, &request).unwrap_or_else(|(c, i)| fail(c, &i))
            }
            "/v4/group_open_http_svc/get_group_info" => group_info(&state.groups, &request),
            "/v4/ConfigSvc/GetIPList" => {
                let nettype = params.get("nettype").and_then(|n| n.parse::<u8>().ok());
                match (&state.ip_lists, nettype) {
                    (Some(lists), Some(nettype)) => json!({
                        "ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": "",
                        "IPList": lists.get(&nettype).cloned().unwrap_or_default(),
                    }),
                    (None, _) => fail(10003, "injected: no list"),
                    (_, None) => fail(10004, "nettype missing"),
                }
            }
            _ => fail(10004, "unknown command"),
        }
    }
}

fn history(groups: &HashMap<String, SimGroup>, request: &Value) -> Result<Value, (i64, String)> {
    let id = request["GroupId"]
        .as_str()
        .ok_or((10004, "GroupId".to_string()))?;
    let group = groups
        .get(id)
        .ok_or((10010, "group does not exist".to_string()))?;
    if group.kind == "AVChatRoom" {
        return Err((10004, "AVChatRoom groups keep no history".into()));
    }
    let number = request["ReqMsgNumber"]
        .as_u64()
        .ok_or((10004, "ReqMsgNumber".to_string()))?
        .min(20) as usize;
    let top = request["ReqMsgSeq"].as_u64().unwrap_or(u64::MAX);
    let first = group.messages.keys().next().copied().unwrap_or(1);
    let mut list = Vec::new();
    let mut is_finished = 0;
    for (&seq, m) in group.messages.range(..=top).rev() {
        if list.len() == number {
            break;
        }
        if seq < group.retained_from {
            is_finished = 2;
            break;
        }
        list.push(json!({
            "From_Account": m.from,
            "IsPlaceMsg": m.placeholder,
            "IsSystemMsg": u8::from(m.system),
            "MsgPriority": 1,
            "MsgRandom": m.random,
            "MsgSeq": seq,
            "MsgTimeStamp": m.time,
            "MsgBody": if m.system || m.placeholder == 1 { json!([]) } else { m.body.clone() },
        }));
        if seq == first {
            is_finished = 1;
        }
    }
    if list.is_empty() && is_finished == 0 {
        is_finished = if top < group.retained_from { 2 } else { 1 };
    }
    Ok(
        json!({"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": "", "GroupId": id, "IsFinished": is_finished, "RspMsgList": list}),
    )
}

fn group_info(groups: &HashMap<String, SimGroup>, request: &Value) -> Value {
    let ids = request["GroupIdList"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let infos: Vec<Value> = ids
        .iter()
        .take(50)
        .filter_map(Value::as_str)
        .map(|id| match groups.get(id) {
            Some(g) => json!({"GroupId": id, "ErrorCode": 0, "Type": g.kind,
                "NextMsgSeq": g.messages.keys().next_back().map_or(1, |s| s + 1)}),
            None => json!({"GroupId": id, "ErrorCode": 10010, "ErrorInfo": "group does not exist"}),
        })
        .collect();
    json!({"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": "", "GroupInfo": infos})
}
