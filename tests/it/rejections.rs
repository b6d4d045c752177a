//! Every way a request is refused: the right status and ErrorCode, a Tencent-format FAIL body,
//! nothing published, the rejection counter moved, and the server still serving.

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::cases::{now, request_cases, signed, CASE_FLAGS};
use crate::common::nats::{start_bridge, NatsServer};
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_has_its_status_code_and_counter_and_publishes_nothing() {
    let nats = NatsServer::start();
    let bridge = start_bridge(&nats, CASE_FLAGS).await;
    let http = Http::default();
    let admin = bridge.admin_addr();
    let reader = nats.reader().await;

    let (good, cases) = request_cases();
    let cmd = "Group.CallbackAfterSendMsg";
    let t = now();
    for case in &cases {
        let before = http.admin(admin, "/metrics").await.1;
        let answer = http
            .request(
                case.method,
                bridge.addr(),
                &case.path_and_query,
                case.body.clone(),
            )
            .await;
        assert_fail(&answer, case.status, case.code);
        if case.status == 405 {
            assert_eq!(
                answer.headers.get("allow").unwrap(),
                "POST",
                "{}",
                case.name
            );
        }
        let after = http.admin(admin, "/metrics").await.1;
        let series = format!("timbridge_rejections_total{{reason=\"{}\"}}", case.reason);
        assert_eq!(
            metric(&after, &series) - metric(&before, &series),
            1.0,
            "{}: {series}",
            case.name
        );
        assert_eq!(
            reader.count("TIM").await,
            0,
            "{}: nothing published",
            case.name
        );
    }

    // A chunked body over the limit is cut off while reading (no Content-Length to check first).
    let answer = raw_chunked(bridge.addr(), &signed(cmd, t), 3 * 1024);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"ErrorCode\":4130"), "{answer}");

    // After all that the server still serves, and a correctly signed callback is published.
    assert_ok(
        &http
            .callback(bridge.addr(), &signed(cmd, now()), good.clone())
            .await,
    );
    let stored = reader.all("TIM").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].payload, good);
    bridge.shutdown().await;
}

/// Sends a chunked POST by hand and returns the raw answer.
fn raw_chunked(addr: std::net::SocketAddr, query: &str, size: usize) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let head = format!(
        "POST /callback?{query} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b' '; 512];
    let mut sent = 0;
    while sent < size {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if stream.write_all(&frame).is_err() {
            break; // the server may close once it has answered
        }
        sent += chunk.len();
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tencents_worked_signature_example_is_accepted_end_to_end() {
    // docs/protocol.md: token xxxxyyyy, RequestTime 1669872112 → Sign 17773bc3...  The example is
    // from 2022, so the skew is widened for this one test, past the flag's 5-minute ceiling
    // (which only the flag parser enforces).
    let nats = NatsServer::start();
    let url = nats.url();
    let mut config = config(&[
        "--sink",
        "nats",
        "--nats-url",
        &url,
        "--sdkappid",
        "1400000000",
        "--token",
        "xxxxyyyy",
    ]);
    config.max_clock_skew = Duration::from_secs(36500 * 86400);
    init_logs();
    let bridge = timbridge::Bridge::start(config)
        .await
        .expect("bridge starts");
    wait_readyz(bridge.admin_addr(), 200, Duration::from_secs(10)).await;
    let http = Http::default();
    let cmd = "Group.CallbackAfterSendMsg";
    let body = group_message("@TGS#sig", 1);
    let example = format!(
        "{}&Sign=17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061&RequestTime=1669872112",
        query(cmd)
    );
    assert_ok(&http.callback(bridge.addr(), &example, body.clone()).await);
    let tampered = example.replace("RequestTime=1669872112", "RequestTime=1669872113");
    assert_fail(
        &http.callback(bridge.addr(), &tampered, body.clone()).await,
        401,
        4011,
    );
    let stored = nats.reader().await.all("TIM").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].payload, body);
    bridge.shutdown().await;
}
