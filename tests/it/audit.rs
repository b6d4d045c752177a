//! `timbridge audit` end to end: a real nats-server, the bridge in-process publishing to it, a
//! simulator of Tencent's REST API (common::tencent, a model of Tencent, not of us) holding the
//! full history, and the auditor in-process or as the binary (SIGKILLed and restarted).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use serde_json::Value;
use timbridge::app::cli::{Cli, Command as Sub};

use crate::common::nats::{start_bridge, NatsServer, Stored};

mod ordered;
use crate::common::tencent::{SimGroup, SimMessage, Tencent};
use crate::common::{counted, eventually, free_port, group_message, metric, Http, APP};

const KEY: &str = "the-apps-secret-key";
const ADMIN: &str = "administrator";
const STREAM: &str = "TIM";

/// The message Tencent's history holds at `seq` of `group`: what `group_message` sends.
fn history_message(group: &str, seq: u64, system: bool) -> SimMessage {
    let body: Value = serde_json::from_slice(&group_message(group, seq)).unwrap();
    SimMessage {
        from: format!("user{seq}"),
        random: seq * 7 + 1,
        time: 1490686222,
        body: body["MsgBody"].clone(),
        system,
        placeholder: 0,
    }
}

fn sim_group(kind: &str, id: &str, last: u64, system: impl Fn(u64) -> bool) -> SimGroup {
    SimGroup {
        kind: kind.into(),
        messages: (1..=last)
            .map(|seq| (seq, history_message(id, seq, system(seq))))
            .collect(),
        retained_from: 0,
    }
}

fn write_config(dir: &Path, key: &str) -> String {
    let path = dir.join("apps.yaml");
    std::fs::write(
        &path,
        format!(
            "apps:\n  - sdkappid: {APP}\n    unsigned: true\n    rest:\n      region: singapore\n      identifier: {ADMIN}\n      secret_key: {key}\n"
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

/// The auditor's flags for these tests: short grace and tail interval.
fn audit_flags(config: &str, nats_url: &str, sim: &Tencent, admin: SocketAddr) -> Vec<String> {
    [
        "--config",
        config,
        "--nats-url",
        nats_url,
        "--rest-endpoint",
        &sim.endpoint(),
        "--rest-allow-http",
        "--rest-max-rate",
        "40",
        "--gap-grace",
        "1s",
        "--tail-interval",
        "1s",
        "--tail-window",
        "1m",
        "--audit-group-idle",
        "10m",
        "--audit-checkpoint-interval",
        "200ms",
        "--admin-listen",
        &admin.to_string(),
        "--log-level",
        "info",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What every test here runs against: nats-server, the bridge publishing to it (the test app,
/// unsigned), the simulator of Tencent's REST API and an apps file with `key` as the app's
/// secret key (the simulator's is always [`KEY`]).
struct World {
    nats: NatsServer,
    bridge: timbridge::Bridge,
    sim: Tencent,
    dir: tempfile::TempDir,
    config: String,
}

impl World {
    async fn start(key: &str) -> World {
        let nats = NatsServer::start();
        let bridge = start_bridge(&nats, &[]).await;
        let sim = Tencent::start(APP, ADMIN, KEY, 200).await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), key);
        World {
            nats,
            bridge,
            sim,
            dir,
            config,
        }
    }
}

/// Starts the auditor in-process on a free admin port; it stops when the sender is dropped.
fn start_auditor(
    config: &str,
    nats: &NatsServer,
    sim: &Tencent,
    extra: &[&str],
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut argv = vec!["timbridge".to_string(), "audit".to_string()];
    let mut flags = audit_flags(config, &nats.url(), sim, admin);
    // A flag in `extra` replaces the default one (its value with it).
    for flag in extra.iter().filter(|f| f.starts_with("--")) {
        if let Some(at) = flags.iter().position(|f| f == flag) {
            flags.drain(at..at + 2);
        }
    }
    argv.extend(flags);
    argv.extend(extra.iter().map(|f| f.to_string()));
    let Sub::Audit(args) = Cli::try_parse_from(argv).expect("flags parse").command else {
        panic!("audit")
    };
    let config = args.into_config().expect("valid configuration");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        timbridge::audit::run(config, async {
            let _ = stopped.await;
        })
        .await
        .expect("the auditor runs");
    });
    (admin, stop)
}

/// Group messages in the stream, per group: seq → records.
fn by_group(stored: &[Stored]) -> BTreeMap<String, BTreeMap<u64, Vec<Stored>>> {
    let mut out: BTreeMap<String, BTreeMap<u64, Vec<Stored>>> = BTreeMap::new();
    for record in stored {
        if record.header("tim-callback-command") != Some("Group.CallbackAfterSendMsg") {
            continue;
        }
        let group = record.header("tim-group-id").unwrap().to_string();
        let seq: u64 = record.header("tim-msg-seq").unwrap().parse().unwrap();
        out.entry(group)
            .or_default()
            .entry(seq)
            .or_default()
            .push(record.clone());
    }
    out
}

/// REST attempts with `result`, history and group-info calls together.
fn rest_calls(text: &str, result: &str) -> f64 {
    ["group_msg_get_simple", "get_group_info"]
        .iter()
        .map(|c| {
            metric(text, &format!("timbridge_audit_rest_calls_total{{command=\"group_open_http_svc/{c}\",result=\"{result}\"}}"))
        })
        .sum()
}

/// The auditor's metrics; empty until its admin listener is up.
async fn admin_metrics(http: &Http, admin: SocketAddr) -> String {
    match http
        .try_request("GET", admin, "/metrics", bytes::Bytes::new())
        .await
    {
        Ok(answer) => answer.body.as_str().unwrap_or_default().to_string(),
        Err(_) => String::new(),
    }
}

/// The load skips 1% of callbacks at random (never a group's first, which is where the auditor
/// starts watching) and one group's last message; every tenth seq is a system notice and some
/// are deleted messages (placeholders in the history), which Tencent sends no callback for.
/// After the grace every message is in the stream exactly once, notices and placeholders are
/// settled (not loss), the backfills carry the documented fields, a late live callback of a
/// backfilled message is dropped as a duplicate, and the simulator saw the rate limit
/// respected and a 60007 ride out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_skipped_message_is_backfilled_once_and_system_seqs_are_settled() {
    let _serial = crate::common::serial().await;
    let World {
        nats,
        bridge,
        sim,
        dir: _dir,
        config,
    } = World::start(KEY).await;
    // Seqs without a callback: system notices (10, 20, ...) and deleted messages, which
    // Tencent's history shows as placeholders (25, 75, ...).
    let notice = |seq: u64| seq.is_multiple_of(10);
    let placeholder = |seq: u64| seq % 50 == 25;
    let system = |seq: u64| notice(seq) || placeholder(seq);
    let groups: Vec<String> = (0..8).map(|g| format!("@TGS#audit{g}")).collect();
    let last = |g: usize| if g == 0 { 205 } else { 200 };
    for (g, id) in groups.iter().enumerate() {
        let mut group = sim_group("Public", id, last(g), notice);
        for (seq, message) in group.messages.iter_mut() {
            if placeholder(*seq) {
                message.placeholder = 1;
            }
        }
        sim.set_group(id, group);
    }
    // Tencent answers the auditor's first calls "too many calls".
    sim.inject_rate_limit(5);

    let mut rng = fastrand::Rng::with_seed(13);
    let mut skipped = BTreeSet::new();
    let http = Http::default();
    for (g, id) in groups.iter().enumerate() {
        for seq in 1..=last(g) {
            let tail = g == 0 && seq == last(g);
            if system(seq) || (seq > 1 && (rng.u32(..100) == 0 || tail)) {
                if !system(seq) {
                    skipped.insert((id.clone(), seq));
                }
                continue;
            }
            let answer = http.group_message(bridge.addr(), id, seq).await;
            assert_eq!(answer.status, 200);
        }
    }
    assert!(skipped.len() >= 8, "the seed skips a handful: {skipped:?}");
    assert!(
        skipped.contains(&(groups[0].clone(), 205)),
        "the tail gap is among them"
    );

    let (admin, _auditor) = start_auditor(&config, &nats, &sim, &[]);
    let reader = nats.reader().await;
    let expected: usize = (0..groups.len())
        .map(|g| (1..=last(g)).filter(|s| !system(*s)).count())
        .sum();
    let stored = eventually(
        Duration::from_secs(60),
        "every message in the stream",
        || {
            let reader = &reader;
            async move {
                let all = reader.all(STREAM).await;
                let count = by_group(&all)
                    .values()
                    .map(|seqs| seqs.len())
                    .sum::<usize>();
                (count == expected).then_some(all)
            }
        },
    )
    .await;

    let groups_seen = by_group(&stored);
    let mut backfilled = BTreeSet::new();
    for (g, id) in groups.iter().enumerate() {
        let seqs = &groups_seen[id];
        let want: Vec<u64> = (1..=last(g)).filter(|s| !system(*s)).collect();
        assert_eq!(
            seqs.keys().copied().collect::<Vec<_>>(),
            want,
            "{id}: every message"
        );
        for (seq, records) in seqs {
            assert_eq!(records.len(), 1, "{id} seq {seq} is in the stream once");
            let record = &records[0];
            if record.header("tim-source") == Some("backfill") {
                backfilled.insert((id.clone(), *seq));
                let body: Value = serde_json::from_slice(&record.payload).unwrap();
                let live: Value = serde_json::from_slice(&group_message(id, *seq)).unwrap();
                for field in [
                    "GroupId",
                    "Type",
                    "From_Account",
                    "Random",
                    "MsgSeq",
                    "MsgTime",
                    "MsgBody",
                ] {
                    assert_eq!(body[field], live[field], "{id} seq {seq}: {field}");
                }
                assert_eq!(body["CallbackCommand"], "Group.CallbackAfterSendMsg");
                assert_eq!(
                    record.header("tim-dedup-id"),
                    Some(format!("g:{APP}:{seq}:{}:{id}:0::", id.len()).as_str()),
                    "the live record's dedup id"
                );
            }
        }
    }
    assert_eq!(
        backfilled, skipped,
        "exactly the skipped messages were backfilled"
    );
    // The live callback of a backfilled message arriving late is a duplicate JetStream drops.
    let (late_group, late_seq) = skipped.iter().next().unwrap().clone();
    let answer = http
        .group_message(bridge.addr(), &late_group, late_seq)
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        reader.count(STREAM).await as usize,
        stored.len(),
        "nothing added"
    );
    let (_, bridge_metrics) = http.admin(bridge.admin_addr(), "/metrics").await;
    assert_eq!(
        metric(
            &bridge_metrics,
            "timbridge_broker_duplicates_total{sink=\"nats\"}"
        ),
        1.0
    );

    let text = eventually(Duration::from_secs(10), "the settled count", || {
        let http = http.clone();
        async move {
            let text = admin_metrics(&http, admin).await;
            (metric(&text, "timbridge_audit_gap_seqs_total{outcome=\"settled\"}") >= 192.0)
                .then_some(text)
        }
    })
    .await;
    // 20 notices (10, 20, ... 200) and 4 placeholders (25, 75, 125, 175) per group, none
    // reported as loss.
    assert_eq!(
        metric(&text, "timbridge_audit_gap_seqs_total{outcome=\"settled\"}"),
        192.0
    );
    assert_eq!(
        metric(
            &text,
            "timbridge_audit_gap_seqs_total{outcome=\"unrecoverable\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(
            &text,
            "timbridge_audit_gap_seqs_total{outcome=\"backfilled\"}"
        ),
        skipped.len() as f64
    );
    assert_eq!(
        rest_calls(&text, "rate_limited"),
        5.0,
        "the injected 60007s, each retried"
    );
    let (calls, limited, busiest) = sim.counts();
    assert_eq!(
        limited, 5,
        "only the injected 60007s: the auditor never passed Tencent's limit"
    );
    assert!(
        busiest <= 41,
        "at most --rest-max-rate (40) calls in any second, saw {busiest}"
    );
    assert!(calls >= 100, "a lookup per gap: {calls}");
    drop(bridge);
}

/// The load tool's own check, end to end: `timbridge-load run --skip-percent 1 --system-every 10`
/// leaves out 1% of the callbacks at random and sends none for system notices; its
/// `--history-out` (every message, notices included) is what the simulator holds; after the
/// grace, `timbridge-load verify --skipped-must-arrive` finds nothing missing, nothing twice and
/// nothing out of order apart from the backfills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tools_verify_finds_nothing_missing_after_the_audit() {
    let _serial = crate::common::serial().await;
    let load = load_tool();
    let World {
        nats,
        bridge,
        sim,
        dir,
        config,
    } = World::start(KEY).await;
    let summary = dir.path().join("summary.json");
    let history = dir.path().join("history.jsonl");
    let status = Command::new(&load)
        .args([
            "run",
            "--url",
            &format!("http://{}/callback", bridge.addr()),
        ])
        .args([
            "--groups",
            "10",
            "--connections",
            "5",
            "--duration",
            "4s",
            "--rate",
            "500",
        ])
        .args([
            "--skip-percent",
            "1",
            "--system-every",
            "10",
            "--group-prefix",
            "@TGS#loadaudit-",
        ])
        .arg("--out")
        .arg(&summary)
        .arg("--history-out")
        .arg(&history)
        .stdout(Stdio::null())
        .status()
        .expect("timbridge-load runs");
    assert!(status.success());
    let ran: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    let skipped: usize = ran["skipped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_array().unwrap().len())
        .sum();
    assert!(skipped >= 5, "1% of ~2,000 callbacks: {skipped}");
    assert_eq!(
        ran["ok"], ran["sent"],
        "every callback sent was answered 200"
    );
    give_history(&sim, &history);

    let (_admin, _auditor) = start_auditor(&config, &nats, &sim, &[]);
    let reader = nats.reader().await;
    eventually(
        Duration::from_secs(60),
        "the skipped messages backfilled",
        || {
            let reader = &reader;
            async move {
                let all = reader.all(STREAM).await;
                let backfilled = all
                    .iter()
                    .filter(|r| r.header("tim-source") == Some("backfill"))
                    .count();
                (backfilled >= skipped).then_some(())
            }
        },
    )
    .await;
    let verify = Command::new(&load)
        .args([
            "verify",
            "--nats-url",
            &nats.url(),
            "--skipped-must-arrive",
            "--expect",
        ])
        .arg(&summary)
        .output()
        .expect("timbridge-load verify runs");
    let report: Value = serde_json::from_slice(&verify.stdout).unwrap_or(Value::Null);
    assert!(verify.status.success(), "{report}");
    assert_eq!(report["missing"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    assert_eq!(report["out_of_order"], 0, "{report}");
    assert_eq!(report["backfilled"], skipped as u64, "{report}");
    drop(bridge);
}

/// Gives the simulator the history `timbridge-load run --history-out` wrote: every message of
/// the run, notices included, as Tencent's history would hold them.
fn give_history(sim: &Tencent, history: &Path) {
    let mut groups: BTreeMap<String, SimGroup> = BTreeMap::new();
    for line in std::fs::read_to_string(history).unwrap().lines() {
        let item: Value = serde_json::from_str(line).unwrap();
        let group = groups
            .entry(item["GroupId"].as_str().unwrap().to_string())
            .or_insert_with(|| SimGroup {
                kind: "Public".into(),
                ..SimGroup::default()
            });
        let seq = item["MsgSeq"].as_u64().unwrap();
        group.messages.insert(
            seq,
            SimMessage {
                from: item["From_Account"].as_str().unwrap().to_string(),
                random: item["MsgRandom"].as_u64().unwrap(),
                time: item["MsgTimeStamp"].as_u64().unwrap(),
                body: item["MsgBody"].clone(),
                system: item["IsSystemMsg"] == 1,
                placeholder: 0,
            },
        );
    }
    for (id, group) in groups {
        sim.set_group(&id, group);
    }
}

/// The load generator's binary (the tools workspace member), built when missing.
fn load_tool() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let tool = dir.join("timbridge-load");
    if !tool.exists() {
        let built = Command::new(env!("CARGO"))
            .args(["build", "-p", "timbridge-tools", "--bin", "timbridge-load"])
            .status()
            .expect("cargo runs");
        assert!(built.success(), "cargo build -p timbridge-tools");
    }
    tool
}

/// An AVChatRoom group keeps no history: its gap is reported unrecoverable, with its range, on
/// the audit subject; so is a range older than the app's retention, while what is retained of
/// the same gap is backfilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_without_history_are_reported_unrecoverable_with_their_range() {
    let _serial = crate::common::serial().await;
    let World {
        nats,
        bridge,
        sim,
        dir: _dir,
        config,
    } = World::start(KEY).await;
    sim.set_group(
        "@TGS#live",
        sim_group("AVChatRoom", "@TGS#live", 5, |_| false),
    );
    let mut old = sim_group("Public", "@TGS#old", 12, |_| false);
    old.retained_from = 10;
    sim.set_group("@TGS#old", old);

    let http = Http::default();
    let live = |seq: u64| {
        let body = String::from_utf8(group_message("@TGS#live", seq).to_vec()).unwrap();
        bytes::Bytes::from(body.replace("\"Type\":\"Public\"", "\"Type\":\"AVChatRoom\""))
    };
    for seq in [1, 2, 5] {
        let answer = http
            .callback(
                bridge.addr(),
                &crate::common::query("Group.CallbackAfterSendMsg"),
                live(seq),
            )
            .await;
        assert_eq!(answer.status, 200);
    }
    for seq in [1, 2, 12] {
        assert_eq!(
            http.group_message(bridge.addr(), "@TGS#old", seq)
                .await
                .status,
            200
        );
    }

    let (admin, _auditor) = start_auditor(&config, &nats, &sim, &[]);
    let reader = nats.reader().await;
    let events = audit_events(&nats, 2).await;
    let mut ranges: Vec<(String, u64, u64, String)> = events
        .iter()
        .map(|e| {
            (
                e["GroupId"].as_str().unwrap().to_string(),
                e["FirstMsgSeq"].as_u64().unwrap(),
                e["LastMsgSeq"].as_u64().unwrap(),
                e["Reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    ranges.sort();
    assert_eq!(
        ranges,
        vec![
            ("@TGS#live".into(), 3, 4, "no_history".into()),
            ("@TGS#old".into(), 3, 9, "expired".into()),
        ]
    );
    // Seqs 10 and 11 of the old group are retained: backfilled.
    let stored = eventually(
        Duration::from_secs(10),
        "the retained part backfilled",
        || {
            let reader = &reader;
            async move {
                let all = reader.all(STREAM).await;
                let old = by_group(&all).remove("@TGS#old").unwrap_or_default();
                (old.len() == 5).then_some(old)
            }
        },
    )
    .await;
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 10, 11, 12]
    );
    let text = admin_metrics(&http, admin).await;
    assert_eq!(
        metric(
            &text,
            "timbridge_audit_unrecoverable_seqs_total{reason=\"no_history\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "timbridge_audit_unrecoverable_seqs_total{reason=\"expired\"}"
        ),
        7.0
    );
    drop(bridge);
}

/// Tencent refusing the app's key (70009) makes the auditor not ready, with the metric, and
/// nothing is published for the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_key_makes_the_auditor_not_ready() {
    let _serial = crate::common::serial().await;
    let World {
        nats,
        bridge,
        sim,
        dir: _dir,
        config,
    } = World::start("not-the-key").await;
    sim.set_group("@TGS#g", sim_group("Public", "@TGS#g", 3, |_| false));
    let http = Http::default();
    for seq in [1, 3] {
        assert_eq!(
            http.group_message(bridge.addr(), "@TGS#g", seq)
                .await
                .status,
            200
        );
    }
    let (admin, _auditor) = start_auditor(&config, &nats, &sim, &[]);
    let text = eventually(Duration::from_secs(20), "the credentials refused", || {
        let http = http.clone();
        async move {
            let text = admin_metrics(&http, admin).await;
            let refused = text.contains("timbridge_audit_rest_credentials_ok 0");
            refused.then_some(text)
        }
    })
    .await;
    let (status, body) = http.admin(admin, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("REST credentials"), "{body}");
    assert!(rest_calls(&text, "credentials") >= 1.0);
    let reader = nats.reader().await;
    assert_eq!(
        by_group(&reader.all(STREAM).await)["@TGS#g"].len(),
        2,
        "nothing backfilled"
    );
    drop(bridge);
}

struct AuditProcess {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl AuditProcess {
    fn start(flags: &[String]) -> AuditProcess {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_timbridge"))
            .arg("audit")
            .args(flags)
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("timbridge audit starts");
        AuditProcess { child, log }
    }

    fn kill(&mut self) {
        crate::common::process::signal_pid(self.child.id(), "KILL");
        let _ = self.child.wait();
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for AuditProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The auditor binary SIGKILLed in the middle of its repairs and started again resumes from
/// its checkpoint (the groups it knew come back) and finishes: every message once in the
/// stream; a backfill repeated after the kill carries the same dedup id, which JetStream drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_auditor_resumes_from_its_checkpoint() {
    let _serial = crate::common::serial().await;
    let World {
        nats,
        bridge,
        sim,
        dir: _dir,
        config,
    } = World::start(KEY).await;
    let groups: Vec<String> = (0..6).map(|g| format!("@TGS#kill{g}")).collect();
    for id in &groups {
        sim.set_group(id, sim_group("Public", id, 60, |_| false));
    }
    // Every fourth message lost: 14 gaps per group, more than the auditor repairs at 5/s
    // before the kill.
    let http = Http::default();
    for id in &groups {
        for seq in (1..=60).filter(|s: &u64| *s == 1 || !s.is_multiple_of(4)) {
            assert_eq!(http.group_message(bridge.addr(), id, seq).await.status, 200);
        }
    }
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut flags = audit_flags(&config, &nats.url(), &sim, admin);
    let rate = flags.iter().position(|f| f == "--rest-max-rate").unwrap() + 1;
    flags[rate] = "5".into();
    let mut auditor = AuditProcess::start(&flags);
    let reader = nats.reader().await;
    let backfills = |all: &[Stored]| {
        all.iter()
            .filter(|r| r.header("tim-source") == Some("backfill"))
            .count()
    };
    eventually(
        Duration::from_secs(30),
        "some backfills before the kill",
        || {
            let reader = &reader;
            async move { (backfills(&reader.all(STREAM).await) >= 10).then_some(()) }
        },
    )
    .await;
    auditor.kill();
    let before = backfills(&reader.all(STREAM).await);
    assert!(before < 6 * 15, "killed mid-run ({before} backfilled)");

    flags[rate] = "40".into();
    let auditor = AuditProcess::start(&flags);
    let all = eventually(Duration::from_secs(60), "every message once", || {
        let reader = &reader;
        async move {
            let all = reader.all(STREAM).await;
            let complete = by_group(&all).values().map(|s| s.len()).sum::<usize>() == 6 * 60;
            complete.then_some(all)
        }
    })
    .await;
    for (id, seqs) in by_group(&all) {
        assert_eq!(
            seqs.keys().copied().collect::<Vec<_>>(),
            (1..=60).collect::<Vec<_>>(),
            "{id}"
        );
        assert!(seqs.values().all(|r| r.len() == 1), "{id}: each seq once");
    }
    assert_eq!(backfills(&all), 6 * 15, "one backfill per lost message");
    let logs = auditor.logs();
    let loaded = logs
        .lines()
        .find(|l| l.contains("audit: checkpoint loaded"))
        .unwrap_or_else(|| panic!("no checkpoint line in {logs}"));
    assert!(
        loaded.contains("groups=6"),
        "resumed with every group: {loaded}"
    );
    drop(bridge);
}

/// The auditor on Kafka (tansu): a consumer group on the bridge's topic, backfills produced
/// with the live record's partition and dedup id, the checkpoint in a topic of its own; an
/// AVChatRoom gap reported on the event topic. Restarted, it resumes from the checkpoint topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_repairs_a_kafka_topic_too() {
    use crate::common::kafka::{consume_topics, start_bridge as start_kafka_bridge, Tansu};
    let _serial = crate::common::serial().await;
    const TOPIC: &str = "tim.Group.CallbackAfterSendMsg";
    let broker = Tansu::start();
    broker.create_topic(TOPIC, 16);
    broker.create_topic("timbridge-audit-state", 1);
    broker.create_topic("tim.audit.unrecoverable", 1);
    let bridge = start_kafka_bridge(&broker.bootstrap(), &[]).await;
    let sim = Tencent::start(APP, ADMIN, KEY, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), KEY);
    let groups = ["@TGS#kafka0", "@TGS#kafka1", "@TGS#kafka2"];
    for id in groups {
        sim.set_group(id, sim_group("Public", id, 30, |_| false));
    }
    sim.set_group(
        "@TGS#kafkalive",
        sim_group("AVChatRoom", "@TGS#kafkalive", 4, |_| false),
    );
    let lost = |seq: u64| seq.is_multiple_of(7) && seq < 30;
    let http = Http::default();
    for id in groups {
        for seq in (1..=30).filter(|s| !lost(*s)) {
            assert_eq!(http.group_message(bridge.addr(), id, seq).await.status, 200);
        }
    }
    let live = |seq: u64| {
        let body = String::from_utf8(group_message("@TGS#kafkalive", seq).to_vec()).unwrap();
        bytes::Bytes::from(body.replace("\"Type\":\"Public\"", "\"Type\":\"AVChatRoom\""))
    };
    for seq in [1, 4] {
        let query = crate::common::query("Group.CallbackAfterSendMsg");
        assert_eq!(
            http.callback(bridge.addr(), &query, live(seq)).await.status,
            200
        );
    }

    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let flags = |admin: SocketAddr| -> Vec<String> {
        // The NATS URL is not used with --sink kafka.
        let mut flags: Vec<String> = audit_flags(&config, "nats://127.0.0.1:1", &sim, admin);
        flags.extend(["--sink", "kafka", "--kafka-brokers", &broker.bootstrap()].map(String::from));
        flags
    };
    let mut auditor = AuditProcess::start(&flags(admin));
    let bootstrap = broker.bootstrap();
    // 4 lost per group (7, 14, 21, 28), 27 live records and 2 room messages before.
    let expected = 3 * 30 + 2 + 1;
    let records = tokio::task::spawn_blocking(move || {
        consume_topics(
            &bootstrap,
            &[TOPIC, "tim.audit.unrecoverable"],
            16,
            expected,
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    // Its producer's librdkafka statistics (every 5 s) are on its own /metrics.
    eventually(
        Duration::from_secs(30),
        "the auditor's Kafka gauges",
        || {
            let http = &http;
            async move {
                let text = admin_metrics(http, admin).await;
                (metric(&text, "timbridge_kafka_broker_rtt_seconds") > 0.0).then_some(())
            }
        },
    )
    .await;
    auditor.kill();
    let mut seen: BTreeMap<(String, u64), usize> = BTreeMap::new();
    let mut events = Vec::new();
    for record in &records {
        if record.topic == "tim.audit.unrecoverable" {
            events.push(serde_json::from_slice::<Value>(&record.value).unwrap());
            continue;
        }
        let group = record.header("tim-group-id").unwrap().to_string();
        let seq: u64 = record.header("tim-msg-seq").unwrap().parse().unwrap();
        *seen.entry((group.clone(), seq)).or_default() += 1;
        if record.header("tim-source") == Some("backfill") {
            assert!(lost(seq), "{group} {seq} backfilled but was not lost");
            let expected_partition = timbridge::wire::partition(group.as_bytes(), 16);
            assert_eq!(
                record.partition as u32, expected_partition,
                "the live record's partition"
            );
        }
    }
    for id in groups {
        for seq in 1..=30 {
            assert_eq!(
                seen.get(&(id.to_string(), seq)),
                Some(&1),
                "{id} seq {seq} once"
            );
        }
    }
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (
            events[0]["GroupId"].as_str(),
            events[0]["FirstMsgSeq"].as_u64(),
            events[0]["LastMsgSeq"].as_u64(),
            events[0]["Reason"].as_str()
        ),
        (Some("@TGS#kafkalive"), Some(2), Some(3), Some("no_history"))
    );
    // Started again, it finds its groups in the checkpoint topic.
    let admin2: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let again = AuditProcess::start(&flags(admin2));
    let loaded = eventually(Duration::from_secs(30), "the checkpoint loaded", || {
        let logs = again.logs();
        async move {
            logs.lines()
                .find(|l| l.contains("audit: checkpoint loaded"))
                .map(str::to_string)
        }
    })
    .await;
    assert!(loaded.contains("groups=4"), "{loaded}");
    drop(bridge);
}

/// Two auditors, `--audit-shards 2`, split the partitions: each repairs only its own groups
/// (its backfill count is exactly their lost messages), and together everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_split_the_groups_between_them() {
    let _serial = crate::common::serial().await;
    let World {
        nats,
        bridge,
        sim,
        dir: _dir,
        config,
    } = World::start(KEY).await;
    let shard_of = |g: &str| timbridge::wire::partition(g.as_bytes(), 16) % 2;
    let groups: Vec<String> = (0..40).map(|g| format!("@TGS#shard{g}")).collect();
    let mut mine: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for g in groups {
        let s = shard_of(&g) as usize;
        if mine[s].len() < 3 {
            mine[s].push(g);
        }
    }
    assert!(mine.iter().all(|m| m.len() == 3), "{mine:?}");
    let lost = |seq: u64| seq.is_multiple_of(5) && seq < 20;
    let http = Http::default();
    for id in mine.iter().flatten() {
        sim.set_group(id, sim_group("Public", id, 20, |_| false));
        for seq in (1..=20).filter(|s| !lost(*s)) {
            assert_eq!(http.group_message(bridge.addr(), id, seq).await.status, 200);
        }
    }
    let mut admins = Vec::new();
    let mut stops = Vec::new();
    for shard in ["0", "1"] {
        let flags = ["--audit-shards", "2", "--audit-shard", shard];
        let (admin, stop) = start_auditor(&config, &nats, &sim, &flags);
        admins.push(admin);
        stops.push(stop);
    }
    let reader = nats.reader().await;
    let all = eventually(Duration::from_secs(60), "every message once", || {
        let reader = &reader;
        async move {
            let all = reader.all(STREAM).await;
            let count = by_group(&all).values().map(|s| s.len()).sum::<usize>();
            (count == 6 * 20).then_some(all)
        }
    })
    .await;
    for (id, seqs) in by_group(&all) {
        assert_eq!(
            seqs.keys().copied().collect::<Vec<_>>(),
            (1..=20).collect::<Vec<_>>(),
            "{id}"
        );
        assert!(seqs.values().all(|r| r.len() == 1), "{id}: each seq once");
    }
    for (shard, admin) in admins.iter().enumerate() {
        let text = admin_metrics(&http, *admin).await;
        assert_eq!(
            metric(
                &text,
                "timbridge_audit_gap_seqs_total{outcome=\"backfilled\"}"
            ),
            9.0,
            "shard {shard}: its 3 groups' 3 lost messages each, no other"
        );
    }
    drop(stops);
    drop(bridge);
}

/// A group whose lookups keep failing waits longer after each failure (5 s, then 10 s, ...),
/// each failure counted and the group shown as backing off; once Tencent answers again its gap
/// is repaired and the group no longer backs off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_lookups_keep_failing_backs_off() {
    let _serial = crate::common::serial().await;
    let World {
        nats,
        bridge,
        sim,
        dir: _dir,
        config,
    } = World::start(KEY).await;
    let group = "@TGS#failing";
    sim.set_group(group, sim_group("Public", group, 3, |_| false));
    // Every call answered 60007, and one attempt per call: one history call per lookup.
    sim.inject_rate_limit(u32::MAX);
    let http = Http::default();
    for seq in [1, 3] {
        assert_eq!(
            http.group_message(bridge.addr(), group, seq).await.status,
            200
        );
    }
    let (admin, _auditor) = start_auditor(&config, &nats, &sim, &["--rest-attempts", "1"]);
    eventually(Duration::from_secs(20), "the first lookup", || {
        let sim = &sim;
        async move { (sim.history_calls(group) >= 1).then_some(()) }
    })
    .await;
    let first = std::time::Instant::now();
    // The third lookup comes 5 s + 10 s after the first with the backoff, 5 s + 5 s without
    // (a fixed wait): the time between them tells which.
    eventually(Duration::from_secs(40), "the third lookup", || {
        let sim = &sim;
        async move { (sim.history_calls(group) >= 3).then_some(()) }
    })
    .await;
    let took = first.elapsed();
    let calls = sim.history_calls(group);
    assert!(
        took >= Duration::from_secs(13),
        "the third lookup {took:?} after the first (15 s with the backoff, 10 s without)"
    );
    assert_eq!(calls, 3);
    eventually(Duration::from_secs(10), "the third failure counted", || {
        let http = &http;
        async move {
            let text = admin_metrics(http, admin).await;
            (metric(&text, "timbridge_audit_lookup_failures_total") == calls as f64
                && metric(&text, "timbridge_audit_groups_backing_off") == 1.0)
                .then_some(())
        }
    })
    .await;
    // Tencent answers again: the next try (20 s after the third) repairs the gap.
    sim.inject_rate_limit(0);
    eventually(Duration::from_secs(40), "the gap repaired", || {
        let http = &http;
        async move {
            let text = admin_metrics(http, admin).await;
            (metric(
                &text,
                "timbridge_audit_gap_seqs_total{outcome=\"backfilled\"}",
            ) == 1.0
                && metric(&text, "timbridge_audit_groups_backing_off") == 0.0)
                .then_some(())
        }
    })
    .await;
    drop(bridge);
}

/// A gap queued for the app's worker and filled by a late live callback before the worker
/// gets to it costs no REST call and is not backfilled: the worker asks the tracker first.
/// Tencent refuses every call at first, so the worker stays in the first group's lookup while
/// the other two groups' gaps wait in its queue, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_gap_filled_live_before_its_lookup_costs_no_call() {
    let _serial = crate::common::serial().await;
    let World {
        nats,
        bridge,
        sim,
        dir: _dir,
        config,
    } = World::start(KEY).await;
    let (busy, late, next) = ("@TGS#queued-a", "@TGS#queued-b", "@TGS#queued-c");
    for id in [busy, late, next] {
        sim.set_group(id, sim_group("Public", id, 3, |_| false));
    }
    sim.inject_rate_limit(u32::MAX);
    let http = Http::default();
    let send = |id: &'static str, seq: u64| {
        let http = &http;
        let addr = bridge.addr();
        async move { assert_eq!(http.group_message(addr, id, seq).await.status, 200) }
    };
    for (id, seq) in [(busy, 1), (busy, 3), (late, 1), (late, 3), (next, 1)] {
        send(id, seq).await;
    }
    // Attempts at most 1 s apart, many of them: the first lookup outlasts what follows.
    let flags = ["--rest-attempts", "60", "--rest-retry-max", "1s"];
    let (admin, _auditor) = start_auditor(&config, &nats, &sim, &flags);
    let found = |want: f64| {
        let http = &http;
        async move {
            let text = admin_metrics(http, admin).await;
            (counted(&text, "timbridge_audit_gap_seqs_total{outcome=\"found\"}") >= want)
                .then_some(())
        }
    };
    eventually(Duration::from_secs(20), "two gaps handed out", || {
        found(2.0)
    })
    .await;
    // Both gaps are counted when the tracker hands them out; the worker's first call may
    // still be on its way.
    eventually(
        Duration::from_secs(10),
        "the worker in the first lookup",
        || {
            let sim = &sim;
            async move { (sim.history_calls(busy) >= 1).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        sim.history_calls(late),
        0,
        "the second gap waits in the queue"
    );
    // The queued gap's seq arrives live.
    send(late, 2).await;
    eventually(
        Duration::from_secs(10),
        "the late callback consumed",
        || {
            let http = &http;
            async move {
                let text = admin_metrics(http, admin).await;
                (metric(&text, "timbridge_audit_records_total{kind=\"regression\"}") >= 1.0)
                    .then_some(())
            }
        },
    )
    .await;
    // A third gap, queued behind the filled one: once it is repaired, the worker has been past
    // the filled one.
    send(next, 3).await;
    eventually(Duration::from_secs(20), "the third gap handed out", || {
        found(3.0)
    })
    .await;
    sim.inject_rate_limit(0);
    eventually(Duration::from_secs(60), "the third gap repaired", || {
        let http = &http;
        let sim = &sim;
        async move {
            let text = admin_metrics(http, admin).await;
            (metric(
                &text,
                "timbridge_audit_gap_seqs_total{outcome=\"backfilled\"}",
            ) >= 2.0
                && sim.history_calls(next) >= 1)
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        sim.history_calls(late),
        0,
        "a gap filled while queued is not looked up"
    );
    let text = admin_metrics(&http, admin).await;
    assert_eq!(
        metric(
            &text,
            "timbridge_audit_gap_seqs_total{outcome=\"backfilled\"}"
        ),
        2.0,
        "the first and third groups' seq 2 only"
    );
    let stored = by_group(&nats.reader().await.all(STREAM).await);
    let late_seqs = &stored[late];
    assert_eq!(late_seqs.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(late_seqs
        .values()
        .flatten()
        .all(|r| r.header("tim-source") != Some("backfill")));
    drop(bridge);
}

/// The auditor's events on the audit subject, once at least `count` have arrived.
async fn audit_events(nats: &NatsServer, count: usize) -> Vec<Value> {
    let reader = nats.reader().await;
    eventually(Duration::from_secs(30), "the audit events", || {
        let reader = &reader;
        async move {
            let events: Vec<Value> = reader
                .all(STREAM)
                .await
                .into_iter()
                .filter(|r| r.subject == "tim.audit.unrecoverable")
                .map(|r| serde_json::from_slice(&r.payload).unwrap())
                .collect();
            (events.len() >= count).then_some(events)
        }
    })
    .await
}

/// `--verify-sample 1`: every live group message is compared with Tencent's history; one whose
/// body was forged under a valid request (another sender, another text) is a `forged` event
/// naming the fields that differ, and the genuine ones are counted ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_body_is_reported_by_verification_against_the_history() {
    let _serial = crate::common::serial().await;
    let World {
        nats,
        bridge,
        sim,
        dir: _dir,
        config,
    } = World::start(KEY).await;
    sim.set_group(
        "@TGS#verify",
        sim_group("Public", "@TGS#verify", 5, |_| false),
    );
    let http = Http::default();
    for seq in 1..=5 {
        let mut body = String::from_utf8(group_message("@TGS#verify", seq).to_vec()).unwrap();
        if seq == 3 {
            body = body
                .replace("\"From_Account\":\"user3\"", "\"From_Account\":\"mallory\"")
                .replace("message 3 of", "pay mallory, says");
        }
        let answer = http
            .callback(
                bridge.addr(),
                &crate::common::query("Group.CallbackAfterSendMsg"),
                body.into(),
            )
            .await;
        assert_eq!(answer.status, 200);
    }
    let (admin, _auditor) = start_auditor(&config, &nats, &sim, &["--verify-sample", "1"]);
    let events = audit_events(&nats, 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["Event"], "forged");
    assert_eq!(events[0]["MsgSeq"], 3);
    assert_eq!(events[0]["Reason"], "mismatch");
    assert_eq!(
        events[0]["Fields"],
        serde_json::json!(["From_Account", "MsgBody"])
    );
    let text = eventually(Duration::from_secs(10), "every sample judged", || {
        let http = http.clone();
        async move {
            let text = admin_metrics(&http, admin).await;
            (metric(&text, "timbridge_audit_verified_total{result=\"ok\"}") == 4.0).then_some(text)
        }
    })
    .await;
    assert_eq!(
        metric(&text, "timbridge_audit_verified_total{result=\"forged\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "timbridge_audit_forged_total{reason=\"mismatch\"}"),
        1.0
    );
    drop(bridge);
}

/// A forged record far ahead of the group (seq 1,000,000 when Tencent's NextMsgSeq is 4) opens
/// a gap that is refused, never walked: a `get_group_info` per chunk, no history call, an
/// event per chunk with its range, counted as forged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_past_tencents_next_msg_seq_is_refused_not_walked() {
    let _serial = crate::common::serial().await;
    let World {
        nats,
        bridge,
        sim,
        dir: _dir,
        config,
    } = World::start(KEY).await;
    sim.set_group(
        "@TGS#ahead",
        sim_group("Public", "@TGS#ahead", 3, |_| false),
    );
    let http = Http::default();
    for seq in [1, 2, 3, 1_000_000] {
        assert_eq!(
            http.group_message(bridge.addr(), "@TGS#ahead", seq)
                .await
                .status,
            200
        );
    }
    let (admin, _auditor) = start_auditor(&config, &nats, &sim, &[]);
    // The gap is taken in chunks of --audit-max-pending seqs: each is refused at the cost of
    // one get_group_info call.
    let events = audit_events(&nats, 2).await;
    let mut ranges: Vec<(u64, u64)> = events
        .iter()
        .map(|e| {
            assert_eq!(e["Reason"], "refused", "{e}");
            (
                e["FirstMsgSeq"].as_u64().unwrap(),
                e["LastMsgSeq"].as_u64().unwrap(),
            )
        })
        .collect();
    ranges.sort();
    assert_eq!(ranges[0].0, 4);
    assert_eq!(ranges[1].0, ranges[0].1 + 1, "{ranges:?}");
    assert_eq!(sim.history_calls("@TGS#ahead"), 0);
    let text = admin_metrics(&http, admin).await;
    assert!(
        metric(
            &text,
            "timbridge_audit_forged_total{reason=\"above_next_msg_seq\"}"
        ) >= 2.0
    );
    drop(bridge);
}
