//! The ordered stream (`timbridge audit --ordered-subject` / `--ordered-topic`): each group's
//! MsgSeqs once, strictly in order, every seq a message or a marker, across replicas,
//! outages, holes of every kind and a SIGKILLed auditor; on a real nats-server and tansu.

use std::collections::BTreeMap;

use super::*;

const ORDERED: &str = "TIM_ORDERED";
const ORDERED_SUBJECT: &str = "tim-ordered.{partition}";

/// One entry of the ordered stream: (seq, `Some(reason)` for a marker, from a backfill).
type Seen = (u64, Option<String>, bool);

/// The ordered stream's group entries, per group, in stream order.
fn ordered_by_group(stored: &[Stored]) -> BTreeMap<String, Vec<Seen>> {
    let mut out: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    for record in stored {
        if record.header("tim-callback-command") != Some("Group.CallbackAfterSendMsg") {
            continue;
        }
        let group = record.header("tim-group-id").unwrap().to_string();
        let seq: u64 = record.header("tim-msg-seq").unwrap().parse().unwrap();
        let marker = (record.header("tim-ordered") == Some("skip"))
            .then(|| record.header("tim-ordered-reason").unwrap().to_string());
        let backfill = record.header("tim-source") == Some("backfill");
        out.entry(group).or_default().push((seq, marker, backfill));
    }
    out
}

/// Seqs of each entry.
fn seqs(entries: &[Seen]) -> Vec<u64> {
    entries.iter().map(|(seq, _, _)| *seq).collect()
}

/// How many records of the main stream came after a higher seq of their group.
fn regressions(stored: &[Stored]) -> usize {
    let mut highest: BTreeMap<String, u64> = BTreeMap::new();
    let mut count = 0;
    for (group, seqs) in by_group_in_stream_order(stored) {
        for seq in seqs {
            let top = highest.entry(group.clone()).or_default();
            if seq < *top {
                count += 1;
            }
            *top = (*top).max(seq);
        }
    }
    count
}

fn by_group_in_stream_order(stored: &[Stored]) -> Vec<(String, Vec<u64>)> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for record in stored {
        if record.header("tim-callback-command") != Some("Group.CallbackAfterSendMsg") {
            continue;
        }
        out.entry(record.header("tim-group-id").unwrap().to_string())
            .or_default()
            .push(record.header("tim-msg-seq").unwrap().parse().unwrap());
    }
    out.into_iter().collect()
}

/// The headers a record carries in both streams (the brokers' own left out).
fn own_headers(record: &Stored) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = record
        .headers
        .iter()
        .filter(|(name, _)| !name.starts_with("Nats-"))
        .cloned()
        .collect();
    headers.sort();
    headers
}

/// The flags turning the ordered stream on (NATS).
fn ordered_flags() -> Vec<&'static str> {
    vec!["--ordered-subject", ORDERED_SUBJECT]
}

/// Waits until every group of `want` holds exactly `want[group]` entries in the ordered
/// stream; returns the stream.
async fn ordered_become(
    reader: &crate::common::nats::Reader,
    want: &BTreeMap<String, usize>,
    deadline: Duration,
    what: &str,
) -> Vec<Stored> {
    eventually(deadline, what, || async move {
        if reader.count(ORDERED).await == 0 {
            return None;
        }
        let all = reader.all(ORDERED).await;
        let got = ordered_by_group(&all);
        want.iter()
            .all(|(group, n)| got.get(group).map_or(0, Vec::len) >= *n)
            .then_some(all)
    })
    .await
}

/// The example consumer `name` (examples/), built by `cargo test --all-targets`.
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let example = dir.join("examples").join(name);
    if !example.exists() {
        let built = Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .status()
            .expect("cargo runs");
        assert!(built.success(), "cargo build --example {name}");
    }
    example
}

/// Runs an example consumer with `args`; its JSON summary line, and whether it exited 0.
fn run_example(name: &str, args: &[&str]) -> (Value, bool) {
    let out = Command::new(example(name))
        .args(args)
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no summary from {name}: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (summary, out.status.success())
}

/// The replica scenario of the issue, end to end: two spooled bridges on one nats-server,
/// 20 groups × 60 seqs sent one after another, seq i to pod i % 2, NATS down (SIGKILL) for
/// seqs 11–50. The main stream holds every 200 but many records after a higher seq of their
/// group; the ordered stream holds each group exactly 1..60, in order, every record as the
/// main stream has it (body and headers), soon after the last one reached the main stream.
/// The example consumer agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_spooled_replicas_and_an_outage_still_give_each_group_in_order() {
    replica_scenario(false).await;
}

/// The same with the auditor SIGKILLed half-way through the ordered stream and started
/// again: no seq twice, none skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_scenario_with_the_auditor_killed_half_way() {
    replica_scenario(true).await;
}

async fn replica_scenario(kill: bool) {
    let _serial = crate::common::serial().await;
    let mut nats = NatsServer::start();
    let spools = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut pods = Vec::new();
    for spool in &spools {
        let dir = spool.path().to_str().unwrap().to_string();
        pods.push(start_bridge(&nats, &["--spool-dir", &dir]).await);
    }
    let sim = Tencent::start(APP, ADMIN, KEY, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), KEY);
    let groups: Vec<String> = (0..20).map(|g| format!("@TGS#replica{g}")).collect();
    for id in &groups {
        sim.set_group(id, sim_group("Public", id, 60, |_| false));
    }
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut flags = audit_flags(&config, &nats.url(), &sim, admin);
    flags.extend(ordered_flags().into_iter().map(String::from));
    let mut auditor = AuditProcess::start(&flags);
    let http = Http::default();
    let reader = nats.reader().await;
    let send = |seq: u64| {
        let http = &http;
        let groups = &groups;
        let pod = pods[(seq % 2) as usize].addr();
        async move {
            for id in groups {
                assert_eq!(http.group_message(pod, id, seq).await.status, 200);
            }
        }
    };
    // Each group's first seq reaches the stream first: the auditor audits from there.
    send(1).await;
    eventually(Duration::from_secs(10), "every group's seq 1", || {
        let reader = &reader;
        async move { (reader.count(STREAM).await >= 20).then_some(()) }
    })
    .await;
    for seq in 2..=60 {
        if seq == 11 {
            nats.stop();
        }
        send(seq).await;
        if seq == 50 {
            nats.restart();
        }
    }
    let reader = nats.reader().await;
    if kill {
        let at = eventually(Duration::from_secs(30), "half the ordered stream", || {
            let reader = &reader;
            async move {
                let n = reader.count(ORDERED).await;
                (n >= 600).then_some(n)
            }
        })
        .await;
        auditor.kill();
        eprintln!("auditor killed with {at} of 1200 ordered");
        auditor = AuditProcess::start(&flags);
    }
    let main = eventually(
        Duration::from_secs(60),
        "every 200 in the main stream",
        || {
            let reader = &reader;
            async move {
                let all = reader.all(STREAM).await;
                let n: usize = by_group(&all).values().map(|s| s.len()).sum();
                (n == 20 * 60).then_some(all)
            }
        },
    )
    .await;
    let out_of_place = regressions(&main);
    eprintln!("main stream: {out_of_place} of 1200 records after a higher seq of their group");
    let want: BTreeMap<String, usize> = groups.iter().map(|g| (g.clone(), 60)).collect();
    let ordered = ordered_become(
        &reader,
        &want,
        Duration::from_secs(30),
        "each group 1..60 in the ordered stream within 30 s",
    )
    .await;
    let by = ordered_by_group(&ordered);
    for id in &groups {
        assert_eq!(seqs(&by[id]), (1..=60).collect::<Vec<_>>(), "{id}");
        assert!(
            by[id].iter().all(|(_, m, _)| m.is_none()),
            "{id}: no marker"
        );
    }
    // Every ordered record is the main stream's, body and headers.
    let main_records: BTreeMap<(String, u64), &Stored> = main
        .iter()
        .filter(|r| r.header("tim-msg-seq").is_some())
        .map(|r| {
            let key = (
                r.header("tim-group-id").unwrap().to_string(),
                r.header("tim-msg-seq").unwrap().parse().unwrap(),
            );
            (key, r)
        })
        .collect();
    for record in &ordered {
        let key = (
            record.header("tim-group-id").unwrap().to_string(),
            record.header("tim-msg-seq").unwrap().parse().unwrap(),
        );
        let original = main_records[&key];
        assert_eq!(record.payload, original.payload, "{key:?}: the body");
        assert_eq!(own_headers(record), own_headers(original), "{key:?}");
        let partition = timbridge::wire::partition(key.0.as_bytes(), 16);
        assert_eq!(record.subject, format!("tim-ordered.{partition}"));
    }
    assert_eq!(ordered.len(), 1200, "nothing twice");
    let text = admin_metrics(&http, admin).await;
    let released = metric(
        &text,
        "timbridge_audit_ordered_released_total{kind=\"message\"}",
    );
    // After a restart, what the checkpoint had not covered is published again (and dropped
    // by the ordered stream's duplicate window): counted again by the new process.
    if !kill {
        assert_eq!(released, 1200.0);
    }
    assert_eq!(metric(&text, "timbridge_audit_ordered_held_records"), 0.0);
    let url = nats.url();
    let (summary, ok) = run_example(
        "ordered_nats",
        &["--nats-url", &url, "--expect", "1200", "--idle", "5s"],
    );
    assert!(ok, "{summary}");
    assert_eq!(summary["records"], 1200, "{summary}");
    assert_eq!(summary["out_of_order"], 0, "{summary}");
    drop((pods, auditor));
}

/// Holes of every kind, each resolved in place: a dropped message by its backfill, a system
/// notice by a `system` marker, a deleted message by a `deleted` marker, an AVChatRoom's
/// missing seqs by `no_history` markers (and the seqs after them released), and a lost tail
/// (found by the tail check) by its backfills. Records behind each hole wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holes_of_every_kind_resolve_in_place() {
    let _serial = crate::common::serial().await;
    let World {
        nats,
        bridge,
        sim,
        dir: _dir,
        config,
    } = World::start(KEY).await;
    let (dropped, notices, room, tail) = (
        "@TGS#holes-dropped",
        "@TGS#holes-notices",
        "@TGS#holes-room",
        "@TGS#holes-tail",
    );
    sim.set_group(dropped, sim_group("Public", dropped, 10, |_| false));
    let mut with_notices = sim_group("Public", notices, 10, |seq| seq == 4);
    with_notices.messages.get_mut(&7).unwrap().placeholder = 1;
    sim.set_group(notices, with_notices);
    sim.set_group(room, sim_group("AVChatRoom", room, 6, |_| false));
    sim.set_group(tail, sim_group("Public", tail, 10, |_| false));
    let http = Http::default();
    let send = |id: &'static str, seq: u64| {
        let http = &http;
        let addr = bridge.addr();
        async move {
            let body = String::from_utf8(group_message(id, seq).to_vec()).unwrap();
            let body = if id == room {
                body.replace("\"Type\":\"Public\"", "\"Type\":\"AVChatRoom\"")
            } else {
                body
            };
            let query = crate::common::query("Group.CallbackAfterSendMsg");
            assert_eq!(http.callback(addr, &query, body.into()).await.status, 200);
        }
    };
    for seq in (1..=10).filter(|s| *s != 5) {
        send(dropped, seq).await;
    }
    for seq in (1..=10).filter(|s| ![4, 7].contains(s)) {
        send(notices, seq).await;
    }
    for seq in [1, 2, 5, 6] {
        send(room, seq).await;
    }
    for seq in 1..=8 {
        send(tail, seq).await;
    }
    let (admin, _auditor) = start_auditor(&config, &nats, &sim, &ordered_flags());
    let reader = nats.reader().await;
    let want: BTreeMap<String, usize> = [(dropped, 10), (notices, 10), (room, 6), (tail, 10)]
        .into_iter()
        .map(|(g, n)| (g.to_string(), n))
        .collect();
    let ordered = ordered_become(
        &reader,
        &want,
        Duration::from_secs(60),
        "every hole resolved",
    )
    .await;
    let by = ordered_by_group(&ordered);
    let entry = |seq: u64, marker: Option<&str>, backfill: bool| -> Seen {
        (seq, marker.map(str::to_string), backfill)
    };
    let plain = |seqs: std::ops::RangeInclusive<u64>| seqs.map(|s| entry(s, None, false));
    let mut want_dropped: Vec<Seen> = plain(1..=10).collect();
    want_dropped[4] = entry(5, None, true);
    assert_eq!(by[dropped], want_dropped, "the backfill in place");
    let mut want_notices: Vec<Seen> = plain(1..=10).collect();
    want_notices[3] = entry(4, Some("system"), false);
    want_notices[6] = entry(7, Some("deleted"), false);
    assert_eq!(by[notices], want_notices, "markers in place");
    let want_room = vec![
        entry(1, None, false),
        entry(2, None, false),
        entry(3, Some("no_history"), false),
        entry(4, Some("no_history"), false),
        entry(5, None, false),
        entry(6, None, false),
    ];
    assert_eq!(by[room], want_room, "AVChatRoom");
    let mut want_tail: Vec<Seen> = plain(1..=10).collect();
    want_tail[8] = entry(9, None, true);
    want_tail[9] = entry(10, None, true);
    assert_eq!(by[tail], want_tail, "the lost tail");
    // A marker: the group's subject and key, its seq, the reason in a header and the body.
    let marker = ordered
        .iter()
        .find(|r| r.header("tim-ordered-reason") == Some("system"))
        .unwrap();
    let partition = timbridge::wire::partition(notices.as_bytes(), 16);
    assert_eq!(marker.subject, format!("tim-ordered.{partition}"));
    let body: Value = serde_json::from_slice(&marker.payload).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"SdkAppid": APP, "GroupId": notices, "TopicId": null, "MsgSeq": 4, "Reason": "system"})
    );
    let text = admin_metrics(&http, admin).await;
    for (reason, n) in [("system", 1.0), ("deleted", 1.0), ("no_history", 2.0)] {
        assert_eq!(
            metric(
                &text,
                &format!("timbridge_audit_ordered_markers_total{{reason=\"{reason}\"}}")
            ),
            n,
            "{reason}"
        );
    }
    assert_eq!(
        metric(
            &text,
            "timbridge_audit_ordered_released_total{kind=\"marker\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(
            &text,
            "timbridge_audit_ordered_released_total{kind=\"message\"}"
        ),
        32.0
    );
    let url = nats.url();
    let (summary, ok) = run_example(
        "ordered_nats",
        &["--nats-url", &url, "--expect", "36", "--idle", "5s"],
    );
    assert!(ok, "{summary}");
    assert_eq!(summary["markers"], 4, "{summary}");
    drop(bridge);
}

/// Memory bounded: with `--ordered-max-held-bytes` far below what waits behind a hole, and a
/// grace of an hour, the hole is looked up at once, the held bodies are dropped from memory
/// and read back from the main stream when released, and the group still comes out in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_bodies_past_the_bound_are_read_back_and_the_hole_looked_up_at_once() {
    let _serial = crate::common::serial().await;
    let World {
        nats,
        bridge,
        sim,
        dir: _dir,
        config,
    } = World::start(KEY).await;
    let group = "@TGS#held";
    sim.set_group(group, sim_group("Public", group, 80, |_| false));
    let http = Http::default();
    for seq in (1..=80).filter(|s| *s != 2) {
        assert_eq!(
            http.group_message(bridge.addr(), group, seq).await.status,
            200
        );
    }
    let mut flags = ordered_flags();
    flags.extend(["--ordered-max-held-bytes", "4KiB", "--gap-grace", "1h"]);
    let (admin, _auditor) = start_auditor(&config, &nats, &sim, &flags);
    let reader = nats.reader().await;
    let want = BTreeMap::from([(group.to_string(), 80)]);
    let ordered = ordered_become(
        &reader,
        &want,
        Duration::from_secs(30),
        "the group released despite the hour of grace",
    )
    .await;
    let by = ordered_by_group(&ordered);
    assert_eq!(seqs(&by[group]), (1..=80).collect::<Vec<_>>());
    let text = admin_metrics(&http, admin).await;
    assert!(
        metric(&text, "timbridge_audit_ordered_refetched_total") >= 1.0,
        "bodies were read back"
    );
    assert_eq!(metric(&text, "timbridge_audit_ordered_held_bytes"), 0.0);
    drop(bridge);
}

/// The auditor binary SIGKILLed three times while it orders groups full of holes (lookups at
/// 5 a second), and started again each time: the ordered stream holds every seq of every group
/// once, in order, with nothing skipped (the Nats-Msg-Id of a republished entry is dropped by
/// the ordered stream's duplicate window; the released point comes from the checkpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_auditor_neither_repeats_nor_skips_a_seq_on_nats() {
    let _serial = crate::common::serial().await;
    let World {
        nats,
        bridge,
        sim,
        dir: _dir,
        config,
    } = World::start(KEY).await;
    let groups: Vec<String> = (0..6).map(|g| format!("@TGS#okill{g}")).collect();
    for id in &groups {
        sim.set_group(id, sim_group("Public", id, 60, |_| false));
    }
    let http = Http::default();
    for id in &groups {
        for seq in (1..=60).filter(|s: &u64| *s == 1 || !s.is_multiple_of(4)) {
            assert_eq!(http.group_message(bridge.addr(), id, seq).await.status, 200);
        }
    }
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut flags = audit_flags(&config, &nats.url(), &sim, admin);
    flags.extend(ordered_flags().into_iter().map(String::from));
    let rate = flags.iter().position(|f| f == "--rest-max-rate").unwrap() + 1;
    flags[rate] = "5".into();
    let reader = nats.reader().await;
    let mut last = 0;
    for round in 0..3 {
        let mut auditor = AuditProcess::start(&flags);
        let grown = eventually(
            Duration::from_secs(30),
            "the ordered stream grows before the kill",
            || {
                let reader = &reader;
                async move {
                    let n = reader.count(ORDERED).await;
                    (n >= last + 20).then_some(n)
                }
            },
        )
        .await;
        auditor.kill();
        eprintln!("round {round}: killed with {grown} entries ordered");
        last = grown;
    }
    flags[rate] = "40".into();
    let _auditor = AuditProcess::start(&flags);
    let want: BTreeMap<String, usize> = groups.iter().map(|g| (g.clone(), 60)).collect();
    // Well within JetStream's ack wait (60 s): nothing here waits for a redelivery.
    let ordered = ordered_become(&reader, &want, Duration::from_secs(30), "every seq").await;
    let by = ordered_by_group(&ordered);
    for id in &groups {
        assert_eq!(
            seqs(&by[id]),
            (1..=60).collect::<Vec<_>>(),
            "{id}: once, in order"
        );
    }
    assert_eq!(ordered.len(), 6 * 60, "nothing else, nothing twice");
    drop(bridge);
}

/// Kafka topics for the auditor: the bridge's, the ordered one, the checkpoint and events.
const KAFKA_TOPIC: &str = "tim.Group.CallbackAfterSendMsg";
const ORDERED_TOPIC: &str = "tim-ordered";

/// Sends `groups` × 1..=`last` to the bridge, every fourth seq lost (and `system` a system
/// notice), each group's history in the simulator.
async fn send_with_holes(
    bridge: SocketAddr,
    sim: &Tencent,
    groups: &[String],
    last: u64,
    system: u64,
) {
    let http = Http::default();
    for id in groups {
        sim.set_group(id, sim_group("Public", id, last, |seq| seq == system));
        for seq in (1..=last).filter(|s: &u64| *s == 1 || (!s.is_multiple_of(4) && *s != system)) {
            assert_eq!(http.group_message(bridge, id, seq).await.status, 200);
        }
    }
}

/// The auditor's flags for Kafka at `bootstrap`, the ordered topic on, REST at 5 a second.
fn kafka_flags(config: &str, sim: &Tencent, bootstrap: &str, extra: &[&str]) -> Vec<String> {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut flags: Vec<String> = audit_flags(config, "nats://127.0.0.1:1", sim, admin);
    let rate = flags.iter().position(|f| f == "--rest-max-rate").unwrap() + 1;
    flags[rate] = "5".into();
    flags.extend(
        [
            "--sink",
            "kafka",
            "--kafka-brokers",
            bootstrap,
            "--ordered-topic",
            ORDERED_TOPIC,
        ]
        .map(String::from),
    );
    // A flag in `extra` replaces the one set here (its value with it).
    let mut extra = extra.iter();
    while let Some(flag) = extra.next() {
        match flags.iter().position(|f| f == flag) {
            Some(at) => flags[at + 1] = extra.next().unwrap().to_string(),
            None => flags.push(flag.to_string()),
        }
    }
    flags
}

/// The ordered topic's group entries as a `read_committed` consumer sees them, per group in
/// offset order: (seq, marker reason); each on the live record's partition.
async fn ordered_topic(
    bootstrap: &str,
    expected: usize,
) -> BTreeMap<String, Vec<(u64, Option<String>)>> {
    let bootstrap = bootstrap.to_string();
    let records = tokio::task::spawn_blocking(move || {
        crate::common::kafka::consume_committed(
            &bootstrap,
            &[ORDERED_TOPIC],
            expected,
            Duration::from_secs(90),
        )
    })
    .await
    .unwrap();
    let mut by: BTreeMap<String, Vec<(u64, Option<String>)>> = BTreeMap::new();
    for record in &records {
        let group = record.header("tim-group-id").unwrap().to_string();
        let seq: u64 = record.header("tim-msg-seq").unwrap().parse().unwrap();
        assert_eq!(
            record.partition as u32,
            timbridge::wire::partition(group.as_bytes(), 16),
            "the live record's partition"
        );
        by.entry(group)
            .or_default()
            .push((seq, record.header("tim-ordered-reason").map(str::to_string)));
    }
    by
}

/// Kafka on a real broker (tansu 0.6, which has no EndTxn, so `--ordered-no-transactions`):
/// the auditor SIGKILLed twice mid-run and started again. Each group's entries, read back, are
/// 1..=40 in order with nothing skipped; what a restart repeats is a run of seqs the consumer
/// already saw (each at or below the group's last one), never a seq out of place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_auditor_never_skips_or_reorders_a_seq_on_kafka() {
    use crate::common::kafka::{start_bridge as start_kafka_bridge, Tansu};
    let _serial = crate::common::serial().await;
    let broker = Tansu::start();
    broker.create_topic(KAFKA_TOPIC, 16);
    broker.create_topic(ORDERED_TOPIC, 16);
    broker.create_topic("timbridge-audit-state", 1);
    broker.create_topic("tim.audit.unrecoverable", 1);
    let bridge = start_kafka_bridge(&broker.bootstrap(), &[]).await;
    let sim = Tencent::start(APP, ADMIN, KEY, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), KEY);
    let groups: Vec<String> = (0..4).map(|g| format!("@TGS#kokill{g}")).collect();
    send_with_holes(bridge.addr(), &sim, &groups, 40, 20).await;
    let mut flags = kafka_flags(
        &config,
        &sim,
        &broker.bootstrap(),
        &["--ordered-no-transactions"],
    );
    let http = Http::default();
    for round in 0..2 {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let at = flags.iter().position(|f| f == "--admin-listen").unwrap() + 1;
        flags[at] = admin.to_string();
        let mut auditor = AuditProcess::start(&flags);
        eventually(
            Duration::from_secs(60),
            "some entries ordered before the kill",
            || {
                let http = &http;
                async move {
                    let text = admin_metrics(http, admin).await;
                    let n = counted(
                        &text,
                        "timbridge_audit_ordered_released_total{kind=\"message\"}",
                    ) + counted(
                        &text,
                        "timbridge_audit_ordered_released_total{kind=\"marker\"}",
                    );
                    (n >= 15.0).then_some(())
                }
            },
        )
        .await;
        auditor.kill();
        eprintln!("round {round}: killed");
    }
    let rate = flags.iter().position(|f| f == "--rest-max-rate").unwrap() + 1;
    flags[rate] = "40".into();
    let _auditor = AuditProcess::start(&flags);
    let by = ordered_topic(&broker.bootstrap(), groups.len() * 40).await;
    let mut repeats = 0;
    for id in &groups {
        let mut last = 0;
        let mut firsts = Vec::new();
        for (seq, marker) in &by[id] {
            if *seq <= last {
                repeats += 1;
                continue;
            }
            assert_eq!(*seq, last + 1, "{id}: {:?}", by[id]);
            last = *seq;
            firsts.push((*seq, marker.clone()));
        }
        assert_eq!(last, 40, "{id}: every seq");
        assert_eq!(firsts[19].1.as_deref(), Some("system"), "{id}: seq 20");
    }
    eprintln!("{repeats} entries repeated after the kills (at or below their group's last)");
    drop(bridge);
}

/// The example Kafka consumer against a real broker (tansu, so without transactions): the
/// auditor orders three groups full of holes, and `ordered_kafka` reads each group 1..=30 in
/// order, markers included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_example_reads_the_ordered_topic_on_tansu() {
    use crate::common::kafka::{start_bridge as start_kafka_bridge, Tansu};
    let _serial = crate::common::serial().await;
    let broker = Tansu::start();
    broker.create_topic(KAFKA_TOPIC, 16);
    broker.create_topic(ORDERED_TOPIC, 16);
    broker.create_topic("timbridge-audit-state", 1);
    broker.create_topic("tim.audit.unrecoverable", 1);
    let bridge = start_kafka_bridge(&broker.bootstrap(), &[]).await;
    let sim = Tencent::start(APP, ADMIN, KEY, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), KEY);
    let groups: Vec<String> = (0..3).map(|g| format!("@TGS#kexample{g}")).collect();
    send_with_holes(bridge.addr(), &sim, &groups, 30, 10).await;
    let flags = kafka_flags(
        &config,
        &sim,
        &broker.bootstrap(),
        &["--ordered-no-transactions", "--rest-max-rate", "40"],
    );
    let _auditor = AuditProcess::start(&flags);
    let by = ordered_topic(&broker.bootstrap(), groups.len() * 30).await;
    for id in &groups {
        let seqs: Vec<u64> = by[id].iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=30).collect::<Vec<_>>(), "{id}");
    }
    let bootstrap = broker.bootstrap();
    let (summary, ok) = run_example(
        "ordered_kafka",
        &[
            "--brokers",
            &bootstrap,
            "--topic",
            ORDERED_TOPIC,
            "--group",
            "example-check",
            "--expect",
            "90",
            "--idle",
            "10s",
        ],
    );
    assert!(ok, "{summary}");
    assert_eq!(summary["records"], 87, "{summary}");
    assert_eq!(summary["markers"], 3, "{summary}");
    assert_eq!(summary["out_of_order"], 0, "{summary}");
    drop(bridge);
}

/// Kafka with transactions (rdkafka's MockCluster, which has the transaction coordinator tansu
/// lacks): the ordered records, the checkpoint and the consumed offsets commit together. A
/// `read_committed` consumer (the example consumer too) sees each group 1..=40 once, in
/// order; the auditor stopped and started again resumes from the committed offsets and
/// checkpoint, and a second batch follows with nothing repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ordered_topic_commits_in_transactions() {
    use crate::common::kafka::start_bridge as start_kafka_bridge;
    use rdkafka::mocking::MockCluster;
    let _serial = crate::common::serial().await;
    let mock = MockCluster::new(1).expect("mock cluster");
    for (topic, partitions) in [
        (KAFKA_TOPIC, 16),
        (ORDERED_TOPIC, 16),
        ("timbridge-audit-state", 1),
        ("tim.audit.unrecoverable", 1),
    ] {
        mock.create_topic(topic, partitions, 1).expect("topic");
    }
    let bootstrap = mock.bootstrap_servers();
    let bridge = start_kafka_bridge(&bootstrap, &[]).await;
    let sim = Tencent::start(APP, ADMIN, KEY, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), KEY);
    let first: Vec<String> = (0..3).map(|g| format!("@TGS#txn{g}")).collect();
    send_with_holes(bridge.addr(), &sim, &first, 40, 20).await;
    let flags = kafka_flags(&config, &sim, &bootstrap, &["--rest-max-rate", "40"]);
    let mut auditor = AuditProcess::start(&flags);
    let by = ordered_topic(&bootstrap, first.len() * 40).await;
    for id in &first {
        let seqs: Vec<u64> = by[id].iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>(), "{id}: once, in order");
    }
    // Stopped (SIGTERM: the last transaction commits) and started again.
    crate::common::process::signal_pid(auditor.child.id(), "TERM");
    let _ = auditor.child.wait();
    let second: Vec<String> = (3..5).map(|g| format!("@TGS#txn{g}")).collect();
    send_with_holes(bridge.addr(), &sim, &second, 40, 20).await;
    let _auditor = AuditProcess::start(&flags);
    let by = ordered_topic(&bootstrap, (first.len() + second.len()) * 40).await;
    for id in first.iter().chain(&second) {
        let seqs: Vec<u64> = by[id].iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (1..=40).collect::<Vec<_>>(),
            "{id}: once, in order, after a restart"
        );
    }
    let expected = ((first.len() + second.len()) * 40).to_string();
    let (summary, ok) = run_example(
        "ordered_kafka",
        &[
            "--brokers",
            &bootstrap,
            "--topic",
            ORDERED_TOPIC,
            "--group",
            "example-check",
            "--expect",
            &expected,
            "--idle",
            "10s",
        ],
    );
    assert!(ok, "{summary}");
    assert_eq!(summary["markers"], 5, "{summary}");
    drop(bridge);
}

/// Tencent-like traffic: `timbridge-load run --spread` deals each group's callbacks over 8
/// connections to two bridges, so several of a group are in flight at once, 1% left out and
/// every tenth seq a system notice. (A group's seqs are 50 ms apart, 20 groups at 400/s: its
/// seq 1, where the auditor starts, reaches the stream before its seq 2.) `timbridge-load verify --ordered` on the ordered stream
/// finds nothing missing, nothing twice, nothing out of order, and every marker at a seq the
/// run says was a system notice or left out (and so unrecoverable from the simulator only if
/// it holds nothing there: it holds everything, so left-out seqs come back as backfills).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_over_two_bridges_verify_clean_on_the_ordered_stream() {
    let _serial = crate::common::serial().await;
    let load = load_tool();
    let World {
        nats,
        bridge,
        sim,
        dir,
        config,
    } = World::start(KEY).await;
    let second = start_bridge(&nats, &[]).await;
    let summary = dir.path().join("summary.json");
    let history = dir.path().join("history.jsonl");
    let status = Command::new(&load)
        .arg("run")
        .args(["--url", &format!("http://{}/callback", bridge.addr())])
        .args(["--url", &format!("http://{}/callback", second.addr())])
        .args(["--groups", "20", "--connections", "8", "--spread"])
        .args(["--duration", "4s", "--rate", "400"])
        .args(["--skip-percent", "1", "--system-every", "10"])
        .args(["--group-prefix", "@TGS#ordload-"])
        .arg("--out")
        .arg(&summary)
        .arg("--history-out")
        .arg(&history)
        .stdout(Stdio::null())
        .status()
        .expect("timbridge-load runs");
    assert!(status.success());
    let ran: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(ran["ok"], ran["sent"], "every callback answered 200");
    give_history(&sim, &history);
    let (_admin, _auditor) = start_auditor(&config, &nats, &sim, &ordered_flags());
    let url = nats.url();
    let verify = || {
        let out = Command::new(&load)
            .args(["verify", "--ordered", "--nats-url", &url])
            .args(["--nats-stream", ORDERED, "--expect"])
            .arg(&summary)
            .output()
            .expect("timbridge-load verify runs");
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
    };
    let report = eventually(Duration::from_secs(60), "a clean ordered stream", || {
        let report = verify();
        async move { (report["missing"] == 0).then_some(report) }
    })
    .await;
    eprintln!("verify --ordered: {report}");
    for field in [
        "missing",
        "duplicated",
        "out_of_order",
        "unexpected_markers",
    ] {
        assert_eq!(report[field], 0, "{field}: {report}");
    }
    assert!(
        report["markers_by_reason"]["system"].as_u64() >= Some(30),
        "every tenth seq a notice: {report}"
    );
    drop((bridge, second));
}
