//! A 200 is never undone: the spool under operator mistakes, downgrades and disk faults. Each
//! test shows a path that lost, replayed or stalled records after their 200 in an earlier
//! build: a frame of a newer build, a position file that cannot be read, a dead letter that
//! cannot be written, a broker refusing what an operator can fix, a body the frame cannot hold.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use timbridge::core::record::header;
use timbridge::core::Record;
use timbridge::spool::frame::{encode_payload, put_frame};
use timbridge::spool::segment::Segment;

use crate::common::nats::NatsServer;
use crate::common::process::BridgeProcess;
use crate::common::*;

const GROUP: &str = "@TGS#future";

/// A record as the bridge spools a group message of `GROUP`.
fn spooled_record(seq: u64) -> Record {
    Record {
        destination: format!("tim.Group.CallbackAfterSendMsg.{}", seq % 4),
        key: GROUP.into(),
        partition: (seq % 4) as u32,
        headers: vec![
            (header::SDKAPPID, "1400000000".into()),
            (header::COMMAND, "Group.CallbackAfterSendMsg".into()),
            (header::GROUP_ID, GROUP.into()),
            (header::MSG_SEQ, seq.to_string()),
            (header::DEDUP_ID, format!("g:1400000000:{GROUP}:{seq}")),
        ],
        body: group_message(GROUP, seq),
    }
}

/// Writes a segment of records `1..=count` into `dir`; the payload of `future` says it was
/// written by a newer build (a payload version this build does not know).
fn segment_with_a_future_frame(dir: &Path, count: u64, future: u64) {
    let mut bytes = Vec::new();
    for seq in 1..=count {
        let mut payload = encode_payload(&spooled_record(seq));
        if seq == future {
            payload[0] += 1;
        }
        put_frame(&mut bytes, seq, &payload);
    }
    std::fs::write(Segment::path_for(dir, 1), bytes).unwrap();
}

fn timbridge(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_timbridge"))
        .args(args)
        .output()
        .expect("timbridge runs")
}

/// Runs `timbridge args` (a command expected to exit by itself) and waits at most 15 s; `None`
/// when it was still running then (it is killed).
fn timbridge_exits(args: &[&str]) -> Option<(std::process::ExitStatus, String)> {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_timbridge"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .expect("timbridge runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some((status, std::fs::read_to_string(log.path()).unwrap()));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `tim-msg-seq` of every record in the stream (none when there is no stream yet).
async fn stored_seqs(nats: &NatsServer) -> Vec<u64> {
    let reader = nats.reader().await;
    if reader.count("TIM").await == 0 {
        return Vec::new();
    }
    reader
        .all("TIM")
        .await
        .iter()
        .map(|m| m.header("tim-msg-seq").unwrap().parse().unwrap())
        .collect()
}

/// A bridge process spooling to `spool` in front of `nats`, started through `wrapper` (empty:
/// directly), with `extra` flags.
async fn spooled_bridge(
    nats: &NatsServer,
    spool: &str,
    wrapper: &[&str],
    extra: &[&str],
) -> BridgeProcess {
    let url = nats.url();
    let mut flags = vec![
        "--sdkappid",
        "1400000000",
        "--allow-unsigned",
        "--sink",
        "nats",
        "--nats-url",
        &url,
        "--spool-dir",
        spool,
    ];
    flags.extend_from_slice(extra);
    BridgeProcess::start_via(wrapper, &flags).await
}

/// Waits until the stream holds exactly `expected` (by `tim-msg-seq`, in stream order).
async fn stored_become(nats: &NatsServer, expected: &[u64], what: &str) {
    eventually(Duration::from_secs(20), what, || async move {
        (stored_seqs(nats).await == expected).then_some(())
    })
    .await;
}

/// A rollback during a backlog: the older build meets a record of the newer build's format.
/// It forwards what comes before, stops there (never skips it, never counts it corrupt), and
/// `spool forward` exits non-zero saying how many are left. An earlier build skipped the record
/// as corrupt, forwarded the rest, deleted the segment and reported success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_builds_record_stops_forwarding_and_spool_forward_says_what_is_left() {
    let _serial = serial().await;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    segment_with_a_future_frame(dir.path(), 6, 4);
    let spool = dir.path().to_str().unwrap();
    let url = nats.url();
    let forward = tokio::task::spawn_blocking({
        let (spool, url) = (spool.to_owned(), url.clone());
        move || {
            timbridge(&[
                "spool",
                "forward",
                &spool,
                "--sink",
                "nats",
                "--nats-url",
                &url,
            ])
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&forward.stderr);
    assert!(
        !forward.status.success(),
        "spool forward reported success: {stderr}"
    );
    assert!(
        stderr.contains("3 records are still in the spool"),
        "{stderr}"
    );
    assert!(stderr.contains("payload version 2"), "{stderr}");
    assert_eq!(stored_seqs(&nats).await, [1, 2, 3]);
    // The segment is kept whole, and inspect names the record.
    assert!(Segment::path_for(dir.path(), 1).exists());
    let inspect = timbridge(&["spool", "inspect", spool]);
    let report = String::from_utf8_lossy(&inspect.stdout);
    assert!(report.contains("unforwarded records: 3"), "{report}");
    assert!(
        report.contains("newer build's format: 1 (the first, seq 4"),
        "{report}"
    );

    // The serving bridge of the older build is not ready (a rollback halts at its first pod)
    // and says why; the metric names the reason.
    let bridge = spooled_bridge(&nats, spool, &[], &[]).await;
    let http = Http::default();
    let (status, body) = eventually(Duration::from_secs(10), "readyz to say why", || {
        let http = http.clone();
        async move {
            let (status, body) = http.admin(bridge.admin, "/readyz").await;
            body.contains("newer build").then_some((status, body))
        }
    })
    .await;
    assert_eq!(status, 503, "{body}");
    let (_, metrics) = http.admin(bridge.admin, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "timbridge_spool_forward_stopped{reason=\"newer_version\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&metrics, "timbridge_spool_corrupt_records_total"),
        0.0
    );
    assert_eq!(stored_seqs(&nats).await, [1, 2, 3]);
}

/// Only a missing position file means "nothing forwarded yet". One that cannot be read (here
/// a directory: EISDIR) stops the bridge with the I/O exit code and is left as it is; an
/// earlier build read 0 and forwarded the whole spool again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_file_that_cannot_be_read_stops_the_start_and_nothing_is_replayed() {
    let _serial = serial().await;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().to_str().unwrap();
    let mut bytes = Vec::new();
    for seq in 1..=5 {
        put_frame(&mut bytes, seq, &encode_payload(&spooled_record(seq)));
    }
    std::fs::write(Segment::path_for(dir.path(), 1), bytes).unwrap();
    std::fs::create_dir(dir.path().join("position")).unwrap();
    let url = nats.url();
    let serve = tokio::task::spawn_blocking({
        let (spool, url) = (spool.to_owned(), url.clone());
        move || {
            timbridge_exits(&[
                "serve",
                "--sdkappid",
                "1400000000",
                "--allow-unsigned",
                "--sink",
                "nats",
                "--nats-url",
                &url,
                "--spool-dir",
                &spool,
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
        }
    })
    .await
    .unwrap();
    let (status, _) = serve.expect("the bridge exits by itself");
    assert_eq!(status.code(), Some(74));
    assert!(dir.path().join("position").is_dir());
    assert!(stored_seqs(&nats).await.is_empty());
}

/// A body larger than a spool frame holds would be answered 200 and never read back: such a
/// `--max-body-bytes` is refused at start-up (exit 64).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_limit_the_spool_frame_cannot_hold_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().to_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        timbridge_exits(&[
            "serve",
            "--sdkappid",
            "1400000000",
            "--allow-unsigned",
            "--spool-dir",
            &spool,
            "--max-body-bytes",
            "100MiB",
            "--max-inflight-bytes",
            "1GiB",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
    })
    .await
    .unwrap();
    let (status, stderr) = out.expect("refused at start, not served");
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--max-body-bytes"), "{stderr}");
}

/// A record the broker refuses for good (larger than NATS's max_payload) goes to the dead
/// letters only once that is durable. While it cannot be written (the file's place is taken
/// by a directory), the record stays in the spool and the position does not pass it; an
/// earlier build logged the failure and moved on, deleting the only copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_written_keeps_its_record() {
    let _serial = serial().await;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().to_str().unwrap();
    std::fs::create_dir(dir.path().join("dead-letters.log")).unwrap();
    let bridge = spooled_bridge(
        &nats,
        spool,
        &[],
        &[
            "--max-body-bytes",
            "2MiB",
            "--spool-segment-bytes",
            "4MiB",
            "--spool-max-bytes",
            "64MiB",
            "--forward-retry-max",
            "200ms",
        ],
    )
    .await;
    wait_readyz(bridge.admin, 200, Duration::from_secs(10)).await;
    let http = Http::default();
    let q = query("Group.CallbackAfterSendMsg");
    assert_ok(&http.group_message(bridge.addr, "@TGS#dead", 1).await);
    // 1.5 MiB: above nats-server's default max_payload (1 MiB), a permanent refusal.
    let mut big: serde_json::Value =
        serde_json::from_slice(&group_message("@TGS#dead", 2)).unwrap();
    big["CloudCustomData"] = "x".repeat(1536 << 10).into();
    let big = Bytes::from(serde_json::to_vec(&big).unwrap());
    assert_ok(&http.callback(bridge.addr, &q, big.clone()).await);
    assert_ok(&http.group_message(bridge.addr, "@TGS#dead", 3).await);
    // Other groups flow; the refused record's group waits behind it.
    assert_ok(&http.group_message(bridge.addr, "@TGS#other", 1).await);
    eventually(Duration::from_secs(10), "the other group forwarded", || {
        let nats = &nats;
        async move { stored_seqs(nats).await.contains(&1).then_some(()) }
    })
    .await;
    // The refused record was tried more than once: its dead letter could not be written.
    let admin = bridge.admin;
    eventually(
        Duration::from_secs(10),
        "the refused record tried again",
        || {
            let http = http.clone();
            async move {
                let (_, metrics) = http.admin(admin, "/metrics").await;
                (metric(&metrics, "timbridge_spool_forward_retries_total") >= 2.0).then_some(())
            }
        },
    )
    .await;
    let (_, metrics) = http.admin(bridge.admin, "/metrics").await;
    assert_eq!(metric(&metrics, "timbridge_spool_dead_letters_total"), 0.0);
    assert!(
        metric(&metrics, "timbridge_spool_unforwarded_records") >= 2.0,
        "{}",
        metric(&metrics, "timbridge_spool_unforwarded_records")
    );
    // Fixed: the dead letter is written, the group goes on.
    std::fs::remove_dir(dir.path().join("dead-letters.log")).unwrap();
    eventually(Duration::from_secs(10), "the dead letter written", || {
        let http = http.clone();
        let admin = bridge.admin;
        async move {
            let (_, metrics) = http.admin(admin, "/metrics").await;
            (metric(&metrics, "timbridge_spool_dead_letters_total") == 1.0).then_some(())
        }
    })
    .await;
    eventually(Duration::from_secs(10), "the group's next record", || {
        let nats = &nats;
        async move { (stored_seqs(nats).await.len() == 3).then_some(()) }
    })
    .await;
    drop(bridge);

    // Listed, and sent again once the broker takes it (a larger max_payload).
    let list = timbridge(&["spool", "dead-letters", spool]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{listed}");
    assert!(listed.contains("key @TGS#dead"), "{listed}");
    assert!(listed.contains("dead letters: 1"), "{listed}");
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, "max_payload: 4MB\n").unwrap();
    let mut bigger = NatsServer::start_with_args(&["-c", conf.to_str().unwrap()]);
    let url = bigger.url();
    let replay = tokio::task::spawn_blocking({
        let spool = spool.to_owned();
        move || {
            timbridge(&[
                "spool",
                "dead-letters",
                &spool,
                "replay",
                "--sink",
                "nats",
                "--nats-url",
                &url,
            ])
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&replay.stderr);
    assert!(replay.status.success(), "{stderr}");
    assert!(stderr.contains("1 sent"), "{stderr}");
    let stored = bigger.reader().await.all("TIM").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].payload, big);
    assert_eq!(stored[0].header("tim-msg-seq"), Some("2"));
    let list = timbridge(&["spool", "dead-letters", spool]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("dead letters: 0"));
    bigger.stop();
}

/// Segments `1..=4` and `5..=8` of `GROUP` in `dir`.
fn two_segments(dir: &Path) {
    for first in [1, 5] {
        let mut bytes = Vec::new();
        for seq in first..first + 4 {
            put_frame(&mut bytes, seq, &encode_payload(&spooled_record(seq)));
        }
        std::fs::write(Segment::path_for(dir, first), bytes).unwrap();
    }
}

/// Starts a bridge on `dir` (through `wrapper`) and checks that it serves, ready, with one
/// segment set aside as unreadable.
async fn serving_with_one_segment_set_aside(
    nats: &NatsServer,
    dir: &Path,
    wrapper: &[&str],
) -> (BridgeProcess, Http) {
    let bridge = spooled_bridge(nats, dir.to_str().unwrap(), wrapper, &[]).await;
    wait_readyz(bridge.admin, 200, Duration::from_secs(10)).await;
    let http = Http::default();
    let (_, metrics) = http.admin(bridge.admin, "/metrics").await;
    assert_eq!(metric(&metrics, "timbridge_spool_unreadable_segments"), 1.0);
    (bridge, http)
}

/// Where recovery sets `segment` aside when it cannot be read.
fn set_aside_as(segment: std::path::PathBuf) -> std::path::PathBuf {
    let mut aside = segment.into_os_string();
    aside.push(".unreadable");
    aside.into()
}

/// A segment that cannot be read (here a directory in its place: EISDIR) is set aside and the
/// rest is served; an earlier build exited 74 at every start (a crash loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_in_a_segments_place_is_set_aside_and_the_rest_served() {
    let _serial = serial().await;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    two_segments(dir.path());
    let blocked = Segment::path_for(dir.path(), 5);
    std::fs::remove_file(&blocked).unwrap();
    std::fs::create_dir(&blocked).unwrap();
    let (bridge, http) = serving_with_one_segment_set_aside(&nats, dir.path(), &[]).await;
    assert_ok(&http.group_message(bridge.addr, GROUP, 9).await);
    stored_become(
        &nats,
        &[1, 2, 3, 4, 9],
        "the readable records and the new one",
    )
    .await;
    assert!(set_aside_as(blocked).is_dir());
}

/// The same for a segment of mode 000 under a non-root user (EACCES): set aside, the rest
/// forwarded, the process serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_without_read_permission_is_set_aside_under_a_non_root_user() {
    use std::os::unix::fs::PermissionsExt as _;
    let _serial = serial().await;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    two_segments(dir.path());
    let locked = Segment::path_for(dir.path(), 1);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let status = std::process::Command::new("chown")
        .args(["65534:65534", dir.path().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "chown (the tests run as root)");
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let (_bridge, _) = serving_with_one_segment_set_aside(&nats, dir.path(), &nobody).await;
    stored_become(&nats, &[5, 6, 7, 8], "the readable segment forwarded").await;
    assert!(set_aside_as(locked).exists());
}

/// NATS, checked the same way: a publish the server's permissions refuse gets no
/// acknowledgement, so the spooled record times out and is retried, never dead-lettered; once
/// the permission is given, every record arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_permission_refusal_makes_spooled_records_wait_and_they_arrive_once_allowed() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    // An account of its own with JetStream (users in the global account get none).
    let users = |deny: &str| {
        format!(
            "accounts {{ APP {{ jetstream: enabled, users: [\n\
             {{ user: bridge, password: secret, permissions: {{ publish: {{ deny: [{deny}] }} }} }}\n\
             {{ user: reader, password: reader }}\n] }} }}\nno_auth_user: reader\n"
        )
    };
    std::fs::write(&conf, users("\"tim.Group.>\"")).unwrap();
    let mut nats = NatsServer::start_with_args(&["-c", conf.to_str().unwrap()]);
    let spool = dir.path().join("spool");
    let url = nats.url();
    let bridge = start(&[
        "--sdkappid",
        "1400000000",
        "--allow-unsigned",
        "--sink",
        "nats",
        "--nats-url",
        &url,
        "--nats-user",
        "bridge",
        "--nats-password",
        "secret",
        "--spool-dir",
        spool.to_str().unwrap(),
        "--publish-timeout",
        "500ms",
        "--forward-retry-max",
        "200ms",
    ])
    .await;
    wait_readyz(bridge.admin_addr(), 200, Duration::from_secs(10)).await;
    let http = Http::default();
    for seq in 1..=10 {
        assert_ok(&http.group_message(bridge.addr(), "@TGS#perm", seq).await);
    }
    let admin = bridge.admin_addr();
    eventually(
        Duration::from_secs(10),
        "retries of the refused publishes",
        || {
            let http = http.clone();
            async move {
                let (_, metrics) = http.admin(admin, "/metrics").await;
                (metric(&metrics, "timbridge_spool_forward_retries_total") >= 3.0).then_some(())
            }
        },
    )
    .await;
    assert!(stored_seqs(&nats).await.is_empty());
    assert_eq!(http.admin(admin, "/readyz").await.0, 200);
    // The operator gives the permission (nats-server 2.9 loses an account's JetStream on a
    // config reload, so the server is restarted with the new file instead).
    std::fs::write(&conf, users("\"nothing.here\"")).unwrap();
    nats.restart();
    let all: Vec<u64> = (1..=10).collect();
    stored_become(&nats, &all, "every record once allowed").await;
    let (_, metrics) = http.admin(admin, "/metrics").await;
    assert_eq!(metric(&metrics, "timbridge_spool_dead_letters_total"), 0.0);
    bridge.shutdown().await;
}
