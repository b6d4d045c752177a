//! Every way a request is refused: the right status and ErrorCode, a Tencent-format FAIL body,
//! nothing published, the rejection counter moved, and the server still serving.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::nats::NatsServer;
use common::*;
use timbridge::callback::signature::sign;
use timbridge::callback::Token;

const TOKEN: &str = "s3cret-token";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signed(command: &str, time: u64) -> String {
    let sig = sign(&Token::new(TOKEN.into()), &time.to_string());
    format!("{}&RequestTime={time}&Sign={sig}", query(command))
}

struct Case {
    name: &'static str,
    method: &'static str,
    path_and_query: String,
    body: Bytes,
    status: u16,
    code: i64,
    reason: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_has_its_status_code_and_counter_and_publishes_nothing() {
    let nats = NatsServer::start();
    let url = nats.url();
    let bridge = start(&[
        "--sink",
        "nats",
        "--nats-url",
        &url,
        "--sdkappid",
        "1400000000",
        "--token",
        TOKEN,
        "--max-body-bytes",
        "2KiB",
    ])
    .await;
    let http = Http::default();
    let admin = bridge.admin_addr();
    wait_readyz(admin, 200, Duration::from_secs(10)).await;
    let reader = nats.reader().await;

    let cmd = "Group.CallbackAfterSendMsg";
    let good = group_message("@TGS#rej", 1);
    let t = now();
    // Flip the last hex digit: always a different signature.
    let mut wrong_sign = signed(cmd, t);
    let last = wrong_sign.pop().unwrap();
    wrong_sign.push(if last == '0' { '1' } else { '0' });
    let invalid = Bytes::from(
        String::from_utf8(good.to_vec())
            .unwrap()
            .replace("\"MsgSeq\":1", "\"MsgSeq\":\"1\""),
    );
    let big = Bytes::from(vec![b' '; 3 * 1024]);
    let cases = vec![
        Case {
            name: "unknown path",
            method: "POST",
            path_and_query: format!("/other?{}", signed(cmd, t)),
            body: good.clone(),
            status: 404,
            code: 4040,
            reason: "not_found",
        },
        Case {
            name: "GET",
            method: "GET",
            path_and_query: format!("/callback?{}", signed(cmd, t)),
            body: Bytes::new(),
            status: 405,
            code: 4050,
            reason: "method_not_allowed",
        },
        Case {
            name: "no SdkAppid",
            method: "POST",
            path_and_query: format!("/callback?CallbackCommand={cmd}"),
            body: good.clone(),
            status: 400,
            code: 4000,
            reason: "bad_query",
        },
        Case {
            name: "contenttype xml",
            method: "POST",
            path_and_query: format!(
                "/callback?{}",
                signed(cmd, t).replace("contenttype=json", "contenttype=xml")
            ),
            body: good.clone(),
            status: 400,
            code: 4001,
            reason: "bad_content_type",
        },
        Case {
            name: "other app",
            method: "POST",
            path_and_query: format!(
                "/callback?{}",
                signed(cmd, t).replace("SdkAppid=1400000000", "SdkAppid=1400000001")
            ),
            body: good.clone(),
            status: 403,
            code: 4030,
            reason: "forbidden_sdkappid",
        },
        Case {
            name: "unsigned",
            method: "POST",
            path_and_query: format!("/callback?{}", query(cmd)),
            body: good.clone(),
            status: 401,
            code: 4010,
            reason: "missing_signature",
        },
        Case {
            name: "wrong sign",
            method: "POST",
            path_and_query: format!("/callback?{wrong_sign}"),
            body: good.clone(),
            status: 401,
            code: 4011,
            reason: "bad_signature",
        },
        Case {
            name: "stale time",
            method: "POST",
            path_and_query: format!("/callback?{}", signed(cmd, t - 120)),
            body: good.clone(),
            status: 401,
            code: 4012,
            reason: "stale_request_time",
        },
        Case {
            name: "future time",
            method: "POST",
            path_and_query: format!("/callback?{}", signed(cmd, t + 120)),
            body: good.clone(),
            status: 401,
            code: 4012,
            reason: "stale_request_time",
        },
        Case {
            name: "too large",
            method: "POST",
            path_and_query: format!("/callback?{}", signed(cmd, t)),
            body: big,
            status: 413,
            code: 4130,
            reason: "body_too_large",
        },
        Case {
            name: "not JSON",
            method: "POST",
            path_and_query: format!("/callback?{}", signed(cmd, t)),
            body: Bytes::from_static(b"{\"CallbackCommand\": nope"),
            status: 400,
            code: 4002,
            reason: "bad_json",
        },
        Case {
            name: "command mismatch",
            method: "POST",
            path_and_query: format!("/callback?{}", signed("Group.CallbackBeforeSendMsg", t)),
            body: good.clone(),
            status: 400,
            code: 4003,
            reason: "command_mismatch",
        },
        Case {
            name: "invalid body",
            method: "POST",
            path_and_query: format!("/callback?{}", signed(cmd, t)),
            body: invalid,
            status: 400,
            code: 4004,
            reason: "invalid_body",
        },
    ];
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
    // PROTOCOL.md: token xxxxyyyy, RequestTime 1669872112 → Sign 17773bc3...  The example is
    // from 2022, so the skew is widened for this one test.
    let nats = NatsServer::start();
    let url = nats.url();
    let bridge = start(&[
        "--sink",
        "nats",
        "--nats-url",
        &url,
        "--sdkappid",
        "1400000000",
        "--token",
        "xxxxyyyy",
        "--max-clock-skew",
        "36500days",
    ])
    .await;
    let http = Http::default();
    let admin = bridge.admin_addr();
    wait_readyz(admin, 200, Duration::from_secs(10)).await;
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
