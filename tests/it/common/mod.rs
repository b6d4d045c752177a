//! Shared test helpers: real brokers on ephemeral loopback ports (killed on drop), the bridge
//! in-process on port 0, an HTTP client, and polling with deadlines instead of fixed sleeps.

pub mod cases;
pub mod kafka;
pub mod nats;
pub mod process;
pub mod tencent;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use timbridge::app::cli::{Cli, Command};
use timbridge::{Bridge, Config};

pub const APP: u64 = 1400000000;

/// The order tests' load: groups, each sending this many messages one after another.
pub const ORDER_GROUPS: usize = 100;
pub const ORDER_PER_GROUP: u64 = 100;

/// The bridge's configuration from command-line flags, listening on ephemeral ports (an
/// `--sdkappid` without a token is served with `--allow-unsigned`).
pub fn config(extra: &[&str]) -> Config {
    let mut argv = vec![
        "timbridge",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    // Tests stop at once unless they measure the delay.
    if !extra.contains(&"--shutdown-delay") {
        argv.extend_from_slice(&["--shutdown-delay", "0s"]);
    }
    argv.extend_from_slice(extra);
    // The tests' apps are unsigned unless a test gives a token (the bridge refuses an
    // `--sdkappid` without one unless told).
    if extra.contains(&"--sdkappid")
        && !extra
            .iter()
            .any(|f| ["--token", "--token-file", "--allow-unsigned"].contains(f))
    {
        argv.push("--allow-unsigned");
    }
    let Command::Serve(args) = Cli::try_parse_from(argv).expect("flags parse").command else {
        panic!("serve")
    };
    args.into_config().expect("valid configuration")
}

/// Serialises the tests of one test binary that hold it. Tests that assert on timing (answers
/// within a bound) or load the machine (hundreds of senders) take it, so that on a small machine
/// one never runs beside another and sees its latency.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Bridge logs in test output when `TEST_LOG` is set (e.g. `TEST_LOG=debug`).
pub fn init_logs() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

pub async fn start(extra: &[&str]) -> Bridge {
    init_logs();
    Bridge::start(config(extra)).await.expect("bridge starts")
}

/// A free loopback port (bound then released; good enough for a test's own servers).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/readyz` on the admin address until it answers `status`, at most `deadline`.
pub async fn wait_readyz(admin: SocketAddr, status: u16, deadline: Duration) {
    let http = Http::default();
    eventually(deadline, &format!("/readyz to answer {status}"), || {
        let http = http.clone();
        async move { (http.admin(admin, "/readyz").await.0 == status).then_some(()) }
    })
    .await;
}

/// Sends message 1 of `group` until it is answered 200. A Kafka producer's first send also
/// acquires its producer id and the topic's metadata, which can outlast a test's short publish
/// timeout on a busy machine; tests whose subject comes later start with this.
pub async fn warm_up(addr: SocketAddr, group: &str) {
    let http = Http::default();
    eventually(Duration::from_secs(10), "a first 200", || {
        let http = http.clone();
        async move {
            let a = http.group_message(addr, group, 1).await;
            (a.status == 200).then_some(())
        }
    })
    .await;
}

/// Waits until something listens on the loopback `port` (a broker this test started).
pub fn wait_listening(port: u16, what: &str, deadline: Duration) {
    let end = Instant::now() + deadline;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < end,
            "{what} did not listen within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `groups` groups named `{prefix}{n:03}` send `per_group` messages each, MsgSeq 1.. one after
/// another (as Tencent sends a group's messages), the groups concurrently over many
/// connections. Every answer must be 200.
pub async fn send_groups_in_order(addr: SocketAddr, prefix: &str, groups: usize, per_group: u64) {
    let http = Http::default();
    let mut tasks = Vec::new();
    for g in 0..groups {
        let http = http.clone();
        let group = format!("{prefix}{g:03}");
        tasks.push(tokio::spawn(async move {
            for seq in 1..=per_group {
                let answer = http.group_message(addr, &group, seq).await;
                assert_eq!(answer.status, 200, "{group}/{seq}: {:?}", answer.body);
            }
        }));
    }
    for task in tasks {
        task.await.expect("sender task");
    }
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every fixture: (file name, CallbackCommand, body bytes).
pub fn fixtures() -> Vec<(String, String, Bytes)> {
    let mut out = Vec::new();
    let dir = fixtures_dir();
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("fixtures at {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let body = std::fs::read(&path).expect("fixture readable");
            let v: serde_json::Value = serde_json::from_slice(&body).expect("fixture is JSON");
            let command = v["CallbackCommand"]
                .as_str()
                .expect("has a command")
                .to_owned();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, command, Bytes::from(body)));
        }
    }
    out.sort();
    assert!(
        out.len() >= 30,
        "expected a fixture per documented command in {}, found {}",
        dir.display(),
        out.len()
    );
    out
}

/// Asserts that `stored` ((group, MsgSeq) in broker order) holds `groups` groups, each with
/// MsgSeq 1 to `per_group` exactly once and in order.
pub fn assert_groups_complete_in_order(
    stored: impl IntoIterator<Item = (String, u64)>,
    groups: usize,
    per_group: u64,
) {
    let mut last: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut count = 0;
    for (group, seq) in stored {
        count += 1;
        let previous = last.insert(group.clone(), seq).unwrap_or(0);
        assert_eq!(
            seq,
            previous + 1,
            "{group}: MsgSeq {seq} after {previous} in broker order"
        );
    }
    assert_eq!(
        count,
        groups * per_group as usize,
        "nothing missing or doubled"
    );
    assert_eq!(last.len(), groups);
    assert!(last.values().all(|s| *s == per_group));
}

/// The partition key a fixture's record must have, by its command's family: a group's
/// GroupId, a read report's reader, a state change's account, a user's account, else the app.
pub fn fixture_key(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    let command = v["CallbackCommand"].as_str().unwrap();
    if command.starts_with("Group.") {
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
    .unwrap_or("1400000000")
    .to_owned()
}

/// The metadata headers every sink must give a fixture sent with [`query`]; `header` looks
/// one up in the stored message.
pub fn assert_fixture_headers<'a>(
    name: &str,
    command: &str,
    body: &[u8],
    header: impl Fn(&str) -> Option<&'a str>,
) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(header("tim-sdkappid"), Some("1400000000"), "{name}");
    assert_eq!(header("tim-callback-command"), Some(command), "{name}");
    assert_eq!(header("tim-group-id"), v["GroupId"].as_str(), "{name}");
    assert_eq!(header("tim-topic-id"), v["TopicId"].as_str(), "{name}");
    assert_eq!(header("tim-msg-id"), v["MsgId"].as_str(), "{name}");
    assert_eq!(header("tim-client-ip"), Some("127.0.0.1"), "{name}");
    assert_eq!(header("tim-opt-platform"), Some("RESTAPI"), "{name}");
    let received: u64 = header("tim-received-at").unwrap().parse().unwrap();
    assert!(
        received > 1_700_000_000_000,
        "{name}: tim-received-at in ms"
    );
    if command == "Group.CallbackAfterSendMsg" {
        let seq = v["MsgSeq"].as_u64().unwrap().to_string();
        assert_eq!(header("tim-msg-seq"), Some(seq.as_str()), "{name}");
        let group = v["GroupId"].as_str().unwrap();
        let topic = v["TopicId"].as_str().unwrap_or("");
        let msg_id = v["MsgId"].as_str().unwrap_or("");
        let id = format!(
            "g:{APP}:{seq}:{}:{group}:{}:{topic}:{msg_id}",
            group.len(),
            topic.len()
        );
        assert_eq!(header("tim-dedup-id"), Some(id.as_str()), "{name}");
    }
    if command == "Group.CallbackAfterNewMemberJoin" {
        let id = header("tim-dedup-id").unwrap_or_default();
        assert!(id.starts_with("j:1400000000:"), "{name}: {id}");
    }
    if command == "Group.CallbackBeforeSendMsg" {
        assert_eq!(header("tim-dedup-id"), None, "{name}: no stable identity");
    }
}

/// Sends every fixture with its command's query, each answered OK; returns them.
pub async fn send_every_fixture(addr: SocketAddr) -> Vec<(String, String, Bytes)> {
    let http = Http::default();
    let fixtures = fixtures();
    for (name, command, body) in &fixtures {
        let answer = http.callback(addr, &query(command), body.clone()).await;
        assert_eq!(answer.status, 200, "{name}: {:?}", answer.body);
        assert_ok(&answer);
    }
    fixtures
}

/// The query Tencent sends with a body of `command`.
pub fn query(command: &str) -> String {
    format!("SdkAppid={APP}&CallbackCommand={command}&contenttype=json&ClientIP=127.0.0.1&OptPlatform=RESTAPI")
}

/// A group text message of `group` with sequence `seq`, shaped like Tencent's.
pub fn group_message(group: &str, seq: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"CallbackCommand":"Group.CallbackAfterSendMsg","GroupId":"{group}","Type":"Public","From_Account":"user{seq}","Operator_Account":"admin","Random":{},"MsgSeq":{seq},"MsgTime":1490686222,"OnlineOnlyFlag":0,"MsgBody":[{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"message {seq} of {group} 你好"}}}}],"CloudCustomData":"","EventTime":1670574414123}}"#,
        seq * 7 + 1
    ))
}

pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: serde_json::Value,
}

impl Answer {
    pub fn error_code(&self) -> i64 {
        self.body["ErrorCode"].as_i64().expect("ErrorCode")
    }
}

#[derive(Clone)]
pub struct Http {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Http {
    pub async fn request(
        &self,
        method: &str,
        addr: SocketAddr,
        path_and_query: &str,
        body: Bytes,
    ) -> Answer {
        self.try_request(method, addr, path_and_query, body)
            .await
            .expect("an answer")
    }

    /// As `request`, but a connection failure (no answer at all) is an `Err`.
    pub async fn try_request(
        &self,
        method: &str,
        addr: SocketAddr,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<Answer, String> {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path_and_query}"))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .expect("request");
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        });
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// POSTs a callback to `/callback?{query}`.
    pub async fn callback(&self, addr: SocketAddr, query: &str, body: Bytes) -> Answer {
        self.request("POST", addr, &format!("/callback?{query}"), body)
            .await
    }

    /// POSTs [`group_message`] `seq` of `group` as Tencent would.
    pub async fn group_message(&self, addr: SocketAddr, group: &str, seq: u64) -> Answer {
        let body = group_message(group, seq);
        self.callback(addr, &query("Group.CallbackAfterSendMsg"), body)
            .await
    }

    /// GETs an admin endpoint: (status, body text).
    pub async fn admin(&self, addr: SocketAddr, path: &str) -> (u16, String) {
        let answer = self.request("GET", addr, path, Bytes::new()).await;
        let text = match answer.body {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        (answer.status, text)
    }
}

/// Asserts a Tencent-format OK answer.
pub fn assert_ok(answer: &Answer) {
    assert_eq!(answer.status, 200, "answer: {:?}", answer.body);
    assert_eq!(
        answer.body,
        serde_json::json!({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})
    );
}

/// Asserts a Tencent-format FAIL answer with `status` and `code`.
pub fn assert_fail(answer: &Answer, status: u16, code: i64) {
    assert_eq!(answer.status, status, "answer: {:?}", answer.body);
    assert_eq!(
        answer.body["ActionStatus"], "FAIL",
        "answer: {:?}",
        answer.body
    );
    assert_eq!(answer.error_code(), code, "answer: {:?}", answer.body);
    assert!(
        !answer.body["ErrorInfo"].as_str().unwrap_or("").is_empty(),
        "a FAIL answer says why"
    );
}

/// Asserts the answer of a broker outage: 503 `sink_unavailable` or `publish_timeout`, with
/// `Retry-After: 1`, answered within `bound`.
pub fn assert_unavailable_in_time(answer: &Answer, took: Duration, bound: Duration) {
    assert_fail(answer, 503, answer.error_code());
    assert!(
        matches!(answer.error_code(), 5030 | 5031),
        "{:?}",
        answer.body
    );
    assert_eq!(
        answer
            .headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    assert!(took < bound, "answered in {took:?}, bound {bound:?}");
}

/// The value of one sample in a Prometheus text exposition, e.g.
/// `metric(&text, "timbridge_rejections_total{reason=\"bad_json\"}")`. A series that is not
/// there fails the test: read as 0 it would pass any `== 0` check (a renamed metric, a label
/// added).
pub fn metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no series {series} in the exposition:\n{exposition}"))
}

/// As [`metric`], for a labelled counter whose series appears with its first increment: 0
/// until then.
pub fn counted(exposition: &str, series: &str) -> f64 {
    let present = exposition.lines().any(|line| {
        line.strip_prefix(series)
            .is_some_and(|rest| rest.starts_with(' '))
    });
    if present {
        metric(exposition, series)
    } else {
        0.0
    }
}
