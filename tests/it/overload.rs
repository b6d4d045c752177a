//! Behaviour under pressure: overload, a broker killed and restarted, SIGTERM under load, slow
//! clients. Real brokers; faults injected by pausing (SIGSTOP) or killing them, or MockCluster.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::nats::{start_bridge, NatsServer};
use crate::common::process::{signal_pid, BridgeProcess};
use crate::common::*;

/// What one request got.
#[derive(Debug, Clone)]
struct Sent {
    group: String,
    seq: u64,
    /// `None`: no answer at all (connection refused or closed).
    status: Option<u16>,
    error_code: Option<i64>,
    retry_after: bool,
    latency: Duration,
}

/// `groups` senders, each sending its group's messages one after another (MsgSeq 1, 2, ...)
/// until `stop` is set. Each sender has its own connections.
async fn steady_load(
    addr: SocketAddr,
    prefix: &str,
    groups: usize,
    stop: Arc<AtomicBool>,
) -> Vec<Sent> {
    let mut tasks = Vec::new();
    for g in 0..groups {
        let stop = stop.clone();
        let group = format!("@TGS#{prefix}{g:03}");
        tasks.push(tokio::spawn(async move {
            let http = Http::default();
            let mut sent = Vec::new();
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let started = Instant::now();
                let answer = tokio::time::timeout(
                    Duration::from_secs(10),
                    http.try_request(
                        "POST",
                        addr,
                        &format!("/callback?{}", query("Group.CallbackAfterSendMsg")),
                        group_message(&group, seq),
                    ),
                )
                .await
                .unwrap_or_else(|_| Err("no answer within 10s".into()));
                let latency = started.elapsed();
                let (status, error_code, retry_after) = match &answer {
                    Ok(a) => (
                        Some(a.status),
                        a.body["ErrorCode"].as_i64(),
                        a.headers.contains_key("retry-after"),
                    ),
                    Err(_) => {
                        // Refused (listener closed): do not spin.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        (None, None, false)
                    }
                };
                sent.push(Sent {
                    group: group.clone(),
                    seq,
                    status,
                    error_code,
                    retry_after,
                    latency,
                });
            }
            sent
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("sender"));
    }
    all
}

/// (group, MsgSeq) of every message in the stream, in stream order.
async fn stored_ids(nats: &NatsServer) -> Vec<(String, u64)> {
    nats.reader()
        .await
        .all("TIM")
        .await
        .iter()
        .map(|m| {
            (
                m.header("tim-group-id").unwrap().to_owned(),
                m.header("tim-msg-seq").unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// Every 200'd message is stored; within each group the stored order is MsgSeq order (no
/// reordering, no doubles).
fn assert_every_200_stored_in_order(sent: &[Sent], stored: &[(String, u64)]) {
    let stored_set: HashSet<&(String, u64)> = stored.iter().collect();
    assert_eq!(stored_set.len(), stored.len(), "no message stored twice");
    for s in sent.iter().filter(|s| s.status == Some(200)) {
        assert!(
            stored_set.contains(&(s.group.clone(), s.seq)),
            "200'd {}/{} is stored",
            s.group,
            s.seq
        );
    }
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (group, seq) in stored {
        if let Some(prev) = last.insert(group, *seq) {
            assert!(*seq > prev, "{group}: {seq} stored after {prev}");
        }
    }
}

/// After an outage under steady load: every answer was 200 or 503, the outage was seen (some
/// 503), and the bridge recovered by itself (each group's last message was answered 200).
fn assert_outage_survived(sent: &[Sent]) {
    assert!(
        sent.iter()
            .all(|s| matches!(s.status, Some(200) | Some(503))),
        "only 200 or 503"
    );
    assert!(count(sent, Some(503)) > 0, "the outage was seen");
    let mut last_ok: HashMap<&str, bool> = HashMap::new();
    for s in sent {
        last_ok.insert(&s.group, s.status == Some(200));
    }
    assert!(
        last_ok.values().all(|ok| *ok),
        "every group is served again after the outage"
    );
}

fn count(sent: &[Sent], status: Option<u16>) -> usize {
    sent.iter().filter(|s| s.status == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_sheds_fast_keeps_memory_bounded_and_recovers() {
    let _serial = serial().await;
    // Offered load far above what the sink takes: NATS paused (SIGSTOP) for two seconds under
    // 300 concurrent senders, with room for only 100 callbacks in flight.
    const PUBLISH_TIMEOUT: Duration = Duration::from_millis(1000);
    const MEMORY_BOUND: u64 = 160 * 1024 * 1024;
    let nats = NatsServer::start();
    let url = nats.url();
    let bridge = BridgeProcess::start(&[
        "--sink",
        "nats",
        "--nats-url",
        &url,
        "--allow-any-sdkappid",
        "--max-inflight",
        "100",
        "--max-ack-latency",
        "300ms",
        "--publish-timeout",
        "1s",
    ])
    .await;
    let http = Http::default();
    let admin = bridge.admin;
    wait_readyz(admin, 200, Duration::from_secs(10)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(steady_load(bridge.addr, "ovl", 300, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let nats_pid = nats.pid().unwrap();
    signal_pid(nats_pid, "STOP");
    let mut saw_unready = false;
    let paused_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < paused_until {
        saw_unready |= http.admin(admin, "/readyz").await.0 == 503;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal_pid(nats_pid, "CONT");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.unwrap();

    let peak = bridge.peak_rss();
    let shed: Vec<&Sent> = sent.iter().filter(|s| s.status == Some(503)).collect();
    eprintln!(
        "overload: {} requests, {} ok, {} shed/failed, peak RSS {} MiB",
        sent.len(),
        count(&sent, Some(200)),
        shed.len(),
        peak / (1024 * 1024)
    );
    assert!(saw_unready, "/readyz turned 503 while saturated");
    assert_eq!(count(&sent, None), 0, "every request got an answer");
    for s in &sent {
        assert!(matches!(s.status, Some(200) | Some(503)), "{s:?}");
        assert!(
            s.latency < PUBLISH_TIMEOUT + Duration::from_millis(1000),
            "answered late: {s:?}"
        );
    }
    assert!(!shed.is_empty(), "the pause caused shedding");
    for s in &shed {
        assert!(s.retry_after, "503 carries Retry-After: {s:?}");
        assert!(matches!(s.error_code, Some(5031 | 5032 | 5034)), "{s:?}");
    }
    assert!(
        shed.iter().any(|s| s.error_code == Some(5032)),
        "the in-flight bound shed some"
    );
    assert!(peak < MEMORY_BOUND, "peak RSS {peak} under {MEMORY_BOUND}");

    // Serves normally once the pressure is gone.
    wait_readyz(admin, 200, Duration::from_secs(10)).await;
    for seq in 1..=20 {
        assert_ok(&http.group_message(bridge.addr, "@TGS#after", seq).await);
    }
    let stored = stored_ids(&nats).await;
    assert_every_200_stored_in_order(&sent, &stored);
    let (_, metrics) = http.admin(admin, "/metrics").await;
    assert!(
        metric(
            &metrics,
            "timbridge_rejections_total{reason=\"overloaded\"}"
        ) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted_under_load_loses_nothing_answered_200() {
    let _serial = serial().await;
    let mut nats = NatsServer::start();
    let bridge = start_bridge(
        &nats,
        &["--allow-any-sdkappid", "--publish-timeout", "800ms"],
    )
    .await;
    let admin = bridge.admin_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(steady_load(bridge.addr(), "kill", 20, stop.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    nats.stop(); // SIGKILL
    tokio::time::sleep(Duration::from_millis(1000)).await;
    nats.restart(); // same port, same file storage
    wait_readyz(admin, 200, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.unwrap();
    eprintln!(
        "kill/restart: {} sent, {} ok, {} 503",
        sent.len(),
        count(&sent, Some(200)),
        count(&sent, Some(503))
    );
    assert_outage_survived(&sent);
    let stored = stored_ids(&nats).await;
    assert_every_200_stored_in_order(&sent, &stored);
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_down_and_up_under_load_loses_nothing_answered_200() {
    let _serial = serial().await;
    use rdkafka::mocking::MockCluster;
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("tim.Group.CallbackAfterSendMsg", 4, 1)
        .expect("topic");
    let bootstrap = mock.bootstrap_servers();
    let bridge = start(&[
        "--sink",
        "kafka",
        "--kafka-brokers",
        &bootstrap,
        "--allow-any-sdkappid",
        "--publish-timeout",
        "800ms",
    ])
    .await;
    let admin = bridge.admin_addr();
    wait_readyz(admin, 200, Duration::from_secs(15)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(steady_load(bridge.addr(), "kdn", 10, stop.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    mock.broker_down(1).expect("down");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    mock.broker_up(1).expect("up");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.unwrap();
    eprintln!(
        "kafka down/up: {} sent, {} ok, {} 503",
        sent.len(),
        count(&sent, Some(200)),
        count(&sent, Some(503))
    );
    assert_outage_survived(&sent);

    let expected = count(&sent, Some(200));
    let records = tokio::task::spawn_blocking(move || {
        crate::common::kafka::consume(
            &bootstrap,
            "tim.Group.CallbackAfterSendMsg",
            4,
            expected,
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap();
    let stored: Vec<(String, u64)> = records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            (
                v["GroupId"].as_str().unwrap().to_owned(),
                v["MsgSeq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_every_200_stored_in_order(&sent, &stored);
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_accepted_request_and_exits_0() {
    let _serial = serial().await;
    let nats = NatsServer::start();
    let url = nats.url();
    let mut bridge = BridgeProcess::start(&[
        "--sink",
        "nats",
        "--nats-url",
        &url,
        "--allow-any-sdkappid",
        "--shutdown-delay",
        "1500ms",
        "--shutdown-timeout",
        "6s",
    ])
    .await;
    let http = Http::default();
    let admin = bridge.admin;
    wait_readyz(admin, 200, Duration::from_secs(10)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(steady_load(bridge.addr, "term", 30, stop.clone()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let signalled = Instant::now();
    bridge.signal("TERM");
    // Readiness goes false at once (as soon as the signal is handled), while the callback port
    // still serves during the shutdown delay.
    eventually(
        Duration::from_millis(500),
        "/readyz 503 after SIGTERM",
        || {
            let http = http.clone();
            async move { (http.admin(admin, "/readyz").await.0 == 503).then_some(()) }
        },
    )
    .await;
    let answer = http
        .group_message(bridge.addr, "@TGS#during-delay", 1)
        .await;
    assert_ok(&answer);
    let exit = bridge.wait(Duration::from_secs(8)).await;
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.unwrap();
    eprintln!(
        "sigterm: exit {exit:?} after {took:?}; {} ok, {} 503, {} unanswered",
        count(&sent, Some(200)),
        count(&sent, Some(503)),
        count(&sent, None)
    );
    assert_eq!(exit.code(), Some(0), "logs:\n{}", bridge.logs());
    assert!(
        took < Duration::from_secs(6),
        "exited within --shutdown-timeout: {took:?}"
    );
    assert!(
        bridge.logs().contains("draining requests in flight"),
        "the drain is logged"
    );
    assert!(sent
        .iter()
        .all(|s| matches!(s.status, None | Some(200) | Some(503))));
    assert!(count(&sent, Some(200)) > 0);

    // An accepted request always got its answer: a request that got none was never processed,
    // so its message is not in the stream; and every 200'd one is.
    let stored = stored_ids(&nats).await;
    let stored_set: HashSet<(String, u64)> = stored.iter().cloned().collect();
    for s in sent.iter().filter(|s| s.status.is_none()) {
        assert!(
            !stored_set.contains(&(s.group.clone(), s.seq)),
            "unanswered but published: {s:?}"
        );
    }
    assert_every_200_stored_in_order(&sent, &stored);
}

/// One sequential sender: a callback every 50 ms until `until`, recording when each was sent,
/// its status and how long it took.
async fn probe_every_50ms(
    addr: SocketAddr,
    group: &str,
    until: Instant,
) -> Vec<(Instant, u16, Duration)> {
    let http = Http::default();
    let mut probes = Vec::new();
    let mut seq = 0;
    while Instant::now() < until {
        seq += 1;
        let sent = Instant::now();
        let answer = http.group_message(addr, group, seq).await;
        probes.push((sent, answer.status, sent.elapsed()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    probes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_broker_is_shed_within_a_publish_timeout_and_served_again_at_once() {
    let _serial = serial().await;
    // The defaults: --publish-timeout 1500ms, --max-ack-latency 1s.
    const PUBLISH_TIMEOUT: Duration = Duration::from_millis(1500);
    let nats = NatsServer::start();
    let url = nats.url();
    let bridge =
        BridgeProcess::start(&["--sink", "nats", "--nats-url", &url, "--allow-any-sdkappid"]).await;
    wait_readyz(bridge.admin, 200, Duration::from_secs(10)).await;
    let watcher = async_nats::connect(&url)
        .await
        .expect("a second NATS client");

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(steady_load(bridge.addr, "stall", 20, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = nats.pid().unwrap();
    let stalled_at = Instant::now();
    let until = stalled_at + Duration::from_secs(6);
    let prober = tokio::spawn(probe_every_50ms(bridge.addr, "@TGS#probe", until));
    signal_pid(pid, "STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal_pid(pid, "CONT");
    // The broker answers normally again once a round trip to it completes.
    watcher.flush().await.expect("NATS answers after SIGCONT");
    let healthy_at = Instant::now();
    let probes = prober.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.unwrap();

    let shed_at_once = probes
        .iter()
        .find(|(at, status, took)| {
            *at > stalled_at && *status == 503 && *took < Duration::from_millis(200)
        })
        .expect("the stalled broker was shed");
    let after: Vec<_> = probes
        .iter()
        .filter(|(at, _, _)| *at >= healthy_at)
        .collect();
    let refused_after = after.iter().filter(|(_, status, _)| *status != 200).count();
    let first_ok = after
        .iter()
        .find(|(_, status, _)| *status == 200)
        .map(|(at, _, took)| *at + *took - healthy_at)
        .expect("served again after the broker resumed");
    eprintln!(
        "stall: shed {:?} after SIGSTOP; broker healthy {:?} after SIGCONT's send; first 200 {first_ok:?} after that; {refused_after} of {} probes refused after it; load {} sent, {} ok",
        shed_at_once.0 - stalled_at,
        healthy_at - stalled_at - Duration::from_secs(3),
        after.len(),
        sent.len(),
        count(&sent, Some(200)),
    );
    assert!(
        shed_at_once.0 - stalled_at < PUBLISH_TIMEOUT + Duration::from_millis(500),
        "shed within one publish timeout of the stall"
    );
    assert!(
        first_ok < Duration::from_millis(250),
        "first 200 {first_ok:?} after the broker answered"
    );
    assert!(
        refused_after <= 3,
        "{refused_after} probes refused after the broker answered again"
    );
}
