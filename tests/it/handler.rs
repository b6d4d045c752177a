//! The handler in-process, over the scripted delivery: every rejection and every delivery
//! outcome with its status, ErrorCode, `Retry-After`, metric and "nothing delivered", without
//! a broker or a socket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use timbridge::core::deliver::scripted::{Outcome, Scripted};
use timbridge::core::deliver::DeliveryError;
use timbridge::ingest::report::Metrics;
use timbridge::ingest::{Handler, Rejection};

use crate::common::cases::{now, request_cases, signed, CASE_FLAGS};
use crate::common::*;

const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);
const CMD: &str = "Group.CallbackAfterSendMsg";

fn handler(default: Outcome, extra: &[&str]) -> Arc<Handler<Scripted>> {
    let mut flags = CASE_FLAGS.to_vec();
    flags.extend_from_slice(extra);
    handler_with(default, &flags)
}

/// A handler with exactly these flags.
fn handler_with(default: Outcome, flags: &[&str]) -> Arc<Handler<Scripted>> {
    Arc::new(Handler::new(
        config(flags).ingest(),
        Scripted::new(default),
        Metrics::new(&prometheus::Registry::new()).unwrap(),
    ))
}

/// What the handler answered, parsed.
struct Answered {
    status: u16,
    retry_after: Option<String>,
    connection_close: bool,
    body: serde_json::Value,
}

async fn call<B>(h: &Handler<Scripted>, method: &str, path_and_query: &str, body: B) -> Answered
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let request = http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", "bridge.example")
        .body(body)
        .unwrap();
    call_request(h, request).await
}

async fn call_request<B>(h: &Handler<Scripted>, request: http::Request<B>) -> Answered
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let response = h.handle(request, PEER).await;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let connection_close = response
        .headers()
        .get("connection")
        .is_some_and(|v| v == "close");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answered {
        status,
        retry_after,
        connection_close,
        body: serde_json::from_slice(&bytes).expect("a JSON answer"),
    }
}

async fn post(h: &Handler<Scripted>, body: Bytes) -> Answered {
    let path = format!("/callback?{}", signed(CMD, now()));
    call(h, "POST", &path, Full::new(body)).await
}

fn counter(h: &Handler<Scripted>, series: &str) -> f64 {
    metric(&String::from_utf8(h.metrics().encode()).unwrap(), series)
}

fn rejections(h: &Handler<Scripted>, reason: &str) -> f64 {
    counter(
        h,
        &format!("timbridge_rejections_total{{reason=\"{reason}\"}}"),
    )
}

/// A FAIL answer with `status` and `code`; `Retry-After: 1` exactly when the status is 503.
fn assert_refused(a: &Answered, status: u16, code: i64) {
    assert_eq!(a.status, status, "{:?}", a.body);
    assert_eq!(a.body["ActionStatus"], "FAIL");
    assert_eq!(a.body["ErrorCode"], code, "{:?}", a.body);
    assert!(!a.body["ErrorInfo"].as_str().unwrap().is_empty());
    let expected = (status == 503).then(|| "1".to_owned());
    assert_eq!(a.retry_after, expected, "Retry-After of a {status}");
}

#[tokio::test]
async fn a_delivered_callback_is_answered_ok_with_its_record_and_metrics() {
    let h = handler(Outcome::Ok, &[]);
    let body = group_message("@TGS#ok", 7);
    let a = post(&h, body.clone()).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body,
        serde_json::json!({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})
    );
    assert_eq!(a.retry_after, None);
    let delivered = h.delivery().delivered();
    assert_eq!(delivered.len(), 1);
    let record = &delivered[0];
    assert_eq!(record.body, body);
    assert_eq!(record.key, "@TGS#ok");
    let p = timbridge::wire::partition(b"@TGS#ok", 16);
    assert_eq!(record.partition, p);
    assert_eq!(record.destination, format!("tim.{CMD}.{p}"));
    assert_eq!(
        record.dedup_id(),
        Some("g:1400000000:7:7:@TGS#ok:0::"),
        "{:?}",
        record.headers
    );
    let ok = format!("timbridge_callbacks_total{{command=\"{CMD}\",outcome=\"ok\"}}");
    assert_eq!(counter(&h, &ok), 1.0);
    assert_eq!(
        counter(
            &h,
            "timbridge_publish_duration_seconds_count{sink=\"scripted\"}"
        ),
        1.0
    );
    // The duplicates series appears with the first duplicate.
    let text = String::from_utf8(h.metrics().encode()).unwrap();
    assert_eq!(
        counted(
            &text,
            "timbridge_broker_duplicates_total{sink=\"scripted\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn the_clock_skew_of_signed_requests_is_measured() {
    let h = handler(Outcome::Ok, &[]);
    let path = |t: u64| format!("/callback?{}", signed(CMD, t));
    let body = || Full::new(group_message("@TGS#skew", 1));
    assert_eq!(
        call(&h, "POST", &path(now() - 20), body()).await.status,
        200
    );
    assert_refused(
        &call(&h, "POST", &path(now() + 500), body()).await,
        401,
        4012,
    );
    let count = "timbridge_request_time_skew_seconds_count";
    assert_eq!(counter(&h, count), 2.0);
    // 20 s lands in the bucket up to 30 s; 500 s only in the one up to 900 s.
    let bucket = |le: &str| {
        counter(
            &h,
            &format!("timbridge_request_time_skew_seconds_bucket{{le=\"{le}\"}}"),
        )
    };
    assert_eq!(bucket("10"), 0.0);
    assert_eq!(bucket("30"), 1.0);
    assert_eq!(bucket("300"), 1.0);
    assert_eq!(bucket("900"), 2.0);
}

#[tokio::test]
async fn signature_failures_are_counted_by_the_app_they_claim() {
    let h = handler(Outcome::Ok, &[]);
    let body = || Full::new(group_message("@TGS#sig", 1));
    // Unsigned, for the configured app.
    let unsigned = format!("/callback?{}", query(CMD));
    assert_refused(&call(&h, "POST", &unsigned, body()).await, 401, 4010);
    // A wrong signature claiming another app is refused for the app first (403), not counted.
    let other = unsigned.replace("SdkAppid=1400000000", "SdkAppid=1400000009");
    assert_refused(&call(&h, "POST", &other, body()).await, 403, 4030);
    let configured = "timbridge_signature_failures_total{sdkappid=\"1400000000\"}";
    assert_eq!(counter(&h, configured), 1.0);
    assert_eq!(
        counter(&h, "timbridge_signature_failures_total{sdkappid=\"other\"}"),
        0.0
    );
    // Series exist from the first scrape, for the configured app and other.
    let text = String::from_utf8(h.metrics().encode()).unwrap();
    assert!(text.contains("timbridge_signature_failures_total{sdkappid=\"other\"} 0"));
}

#[tokio::test]
async fn a_duplicate_is_answered_ok_and_counted() {
    let h = handler(Outcome::Duplicate, &[]);
    assert_eq!(post(&h, group_message("@TGS#dup", 1)).await.status, 200);
    assert_eq!(
        counter(&h, "timbridge_broker_duplicates_total{sink=\"scripted\"}"),
        1.0
    );
}

#[tokio::test]
async fn every_delivery_failure_has_its_status_code_and_counter() {
    let unavailable = DeliveryError::Unavailable("down".into());
    let cases = [
        (unavailable, 503, 5030, "sink_unavailable"),
        (
            DeliveryError::Rejected("too large".into()),
            500,
            5000,
            "sink_rejected",
        ),
        (
            DeliveryError::Backpressure("queue full".into()),
            503,
            5034,
            "backpressure",
        ),
        (DeliveryError::TimedOut, 503, 5031, "publish_timeout"),
        (
            DeliveryError::Full("--spool-max-bytes reached".into()),
            503,
            5035,
            "spool_full",
        ),
    ];
    for (err, status, code, reason) in cases {
        let h = handler(Outcome::Fail(err), &[]);
        let a = post(&h, group_message("@TGS#fail", 1)).await;
        assert_refused(&a, status, code);
        assert_eq!(rejections(&h, reason), 1.0, "{reason}");
        let failed = format!("timbridge_callbacks_total{{command=\"{CMD}\",outcome=\"failed\"}}");
        assert_eq!(counter(&h, &failed), 1.0, "{reason}");
        assert!(h.delivery().delivered().is_empty(), "{reason}");
    }
}

#[tokio::test]
async fn a_delivery_slower_than_the_publish_deadline_is_503_in_time_and_not_delivered() {
    let h = handler(
        Outcome::After(Duration::from_secs(5), Box::new(Outcome::Ok)),
        &["--publish-timeout", "200ms"],
    );
    let started = Instant::now();
    let a = post(&h, group_message("@TGS#slow", 1)).await;
    let took = started.elapsed();
    assert_refused(&a, 503, 5031);
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(rejections(&h, "publish_timeout"), 1.0);
    assert!(h.delivery().delivered().is_empty());
}

#[tokio::test]
async fn a_delivery_within_the_deadline_is_answered_ok() {
    let h = handler(
        Outcome::After(Duration::from_millis(50), Box::new(Outcome::Ok)),
        &["--publish-timeout", "1s"],
    );
    assert_eq!(post(&h, group_message("@TGS#ontime", 1)).await.status, 200);
    assert_eq!(h.delivery().delivered().len(), 1);
}

#[tokio::test]
async fn every_request_rejection_is_answered_in_process_and_delivers_nothing() {
    let h = handler(Outcome::Ok, &[]);
    let (_, cases) = request_cases();
    for case in &cases {
        let before = rejections(&h, case.reason);
        let a = call(
            &h,
            case.method,
            &case.path_and_query,
            Full::new(case.body.clone()),
        )
        .await;
        assert_refused(&a, case.status, case.code);
        // Answered before the body was read whole: the connection cannot carry another request.
        let body_read_whole = matches!(
            case.reason,
            "bad_json" | "command_mismatch" | "invalid_body"
        );
        assert_eq!(
            a.connection_close,
            !case.body.is_empty() && !body_read_whole,
            "{}: Connection: close",
            case.name
        );
        assert_eq!(
            rejections(&h, case.reason) - before,
            1.0,
            "{}: {}",
            case.name,
            case.reason
        );
    }
    assert!(h.delivery().delivered().is_empty());
}

/// A body that sends one chunk and then never ends.
fn stalled_body() -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>>
{
    let first = futures_util::stream::once(async { Ok(Frame::data(Bytes::from_static(b"{"))) });
    StreamBody::new(futures_util::StreamExt::chain(
        first,
        futures_util::stream::pending(),
    ))
}

#[tokio::test]
async fn bodies_that_stall_or_break_are_refused() {
    let h = handler(Outcome::Ok, &["--body-read-timeout", "200ms"]);
    let path = format!("/callback?{}", signed(CMD, now()));
    let a = call(&h, "POST", &path, stalled_body()).await;
    assert_refused(&a, 408, 4080);
    assert_eq!(rejections(&h, "body_timeout"), 1.0);

    let broken = StreamBody::new(futures_util::stream::iter([
        Ok(Frame::data(Bytes::from_static(b"{\"Callback"))),
        Err(std::io::Error::other("connection reset")),
    ]));
    let a = call(&h, "POST", &path, broken).await;
    assert_refused(&a, 400, 4005);
    assert_eq!(rejections(&h, "body_read"), 1.0);
    assert!(h.delivery().delivered().is_empty());
}

#[tokio::test]
async fn a_full_request_bound_sheds_at_once() {
    let h = handler(
        Outcome::After(Duration::from_millis(500), Box::new(Outcome::Ok)),
        &["--max-inflight", "1"],
    );
    let first = tokio::spawn({
        let h = h.clone();
        async move { post(&h, group_message("@TGS#busy", 1)).await.status }
    });
    eventually(
        Duration::from_secs(5),
        "the first request in flight",
        || {
            let h = h.clone();
            async move { (counter(&h, "timbridge_inflight_requests") == 1.0).then_some(()) }
        },
    )
    .await;
    let started = Instant::now();
    let a = post(&h, group_message("@TGS#busy", 2)).await;
    assert_refused(&a, 503, 5032);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "shed at once"
    );
    assert_eq!(rejections(&h, "overloaded"), 1.0);
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(h.delivery().delivered().len(), 1);
}

#[tokio::test]
async fn a_publish_pending_past_the_ack_bound_sheds_until_it_is_answered() {
    let h = handler(
        Outcome::Ok,
        &["--max-ack-latency", "100ms", "--publish-timeout", "1s"],
    );
    h.delivery().then([Outcome::After(
        Duration::from_millis(400),
        Box::new(Outcome::Ok),
    )]);
    let slow = tokio::spawn({
        let h = h.clone();
        async move { post(&h, group_message("@TGS#lag", 1)).await.status }
    });
    // Before the bound: admitted. Past it, while the slow one is pending: shed at once.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(post(&h, group_message("@TGS#lag", 2)).await.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let a = post(&h, group_message("@TGS#lag", 3)).await;
    assert_refused(&a, 503, 5034);
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "shed at once"
    );
    assert_eq!(rejections(&h, "backpressure"), 1.0);
    // Its ack clears the verdict at once.
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(post(&h, group_message("@TGS#lag", 4)).await.status, 200);
}

#[tokio::test]
async fn after_a_timeout_one_publish_at_a_time_probes_the_broker() {
    let h = handler(Outcome::Ok, &["--publish-timeout", "150ms"]);
    let hang = || Outcome::After(Duration::from_secs(10), Box::new(Outcome::Ok));
    h.delivery().then([hang(), hang()]);
    assert_refused(&post(&h, group_message("@TGS#probe", 1)).await, 503, 5031);
    // The broker timed out: the next publish is the probe; others are shed while it is pending.
    let probe = tokio::spawn({
        let h = h.clone();
        async move { post(&h, group_message("@TGS#probe", 2)).await.status }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_refused(&post(&h, group_message("@TGS#probe", 3)).await, 503, 5034);
    assert_eq!(probe.await.unwrap(), 503);
    // The broker answers: the probe gets 200 and everything is admitted again.
    assert_eq!(post(&h, group_message("@TGS#probe", 4)).await.status, 200);
    let both = futures_util::future::join(
        post(&h, group_message("@TGS#probe", 5)),
        post(&h, group_message("@TGS#probe", 6)),
    )
    .await;
    assert_eq!((both.0.status, both.1.status), (200, 200));
}

#[tokio::test]
async fn bytes_consumers_cannot_parse_are_refused_as_bad_json() {
    let h = handler(Outcome::Ok, &[]);
    let good = String::from_utf8(group_message("@TGS#utf8", 1).to_vec()).unwrap();
    // Invalid UTF-8 inside a JSON string, where serde never looks when it skips a field.
    let mut bad = good
        .replace(
            "\"EventTime\"",
            "\"SomethingNew\":\"bad xx bytes\",\"EventTime\"",
        )
        .into_bytes();
    let at = bad.windows(6).position(|w| w == b"bad xx").unwrap() + 4;
    bad[at] = 0xff;
    bad[at + 1] = 0xfe;
    let a = post(&h, Bytes::from(bad)).await;
    assert_refused(&a, 400, 4002);
    assert!(
        a.body["ErrorInfo"].as_str().unwrap().contains("UTF-8"),
        "{:?}",
        a.body
    );
    assert_eq!(rejections(&h, "bad_json"), 1.0);
    assert!(h.delivery().delivered().is_empty());
    // The same body with valid UTF-8 (a multi-byte character) is published.
    assert_eq!(post(&h, Bytes::from(good)).await.status, 200);
}

#[tokio::test]
async fn identity_values_that_would_break_a_header_are_refused_as_invalid_body() {
    let h = handler_with(
        Outcome::Ok,
        &["--allow-any-sdkappid", "--max-body-bytes", "256KiB"],
    );
    let c2c = |from: &str, key: &str| {
        Bytes::from(
            serde_json::json!({
                "CallbackCommand": "C2C.CallbackAfterSendMsg",
                "From_Account": from, "To_Account": "jonh", "MsgKey": key,
                "MsgSeq": 1, "MsgRandom": 2, "MsgTime": 3, "MsgBody": []
            })
            .to_string(),
        )
    };
    let long_group = "G".repeat(40_000);
    let group = Bytes::from(
        String::from_utf8(group_message("@TGS#x", 1).to_vec())
            .unwrap()
            .replace("@TGS#x", &long_group),
    );
    let c2c_query = format!("/callback?{}", query("C2C.CallbackAfterSendMsg"));
    let group_query = format!("/callback?{}", query(CMD));
    let cases = [
        (&c2c_query, c2c("jared\r\nX-Forged: 1", "1_2_3")),
        (&c2c_query, c2c("jared", "1_2\n3")),
        (&c2c_query, c2c("ja\u{0}red", "1_2_3")),
        (&c2c_query, c2c(&"a".repeat(100_000), "1_2_3")),
        (&group_query, group),
    ];
    for (path, body) in cases {
        let a = call(&h, "POST", path, Full::new(body)).await;
        assert_refused(&a, 400, 4004);
    }
    assert_eq!(rejections(&h, "invalid_body"), 5.0);
    assert!(h.delivery().delivered().is_empty());
    // Tencent-sized values pass.
    let a = call(
        &h,
        "POST",
        &c2c_query,
        Full::new(c2c("jared", "48374_2837546_1557481126")),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
}

#[tokio::test]
async fn requests_http_does_not_allow_are_refused_and_the_connection_closed() {
    let h = handler(Outcome::Ok, &[]);
    let path = format!("/callback?{}", signed(CMD, now()));
    let body = group_message("@TGS#http", 1);
    let build = || {
        http::Request::builder()
            .method("POST")
            .uri(path.as_str())
            .header("content-length", body.len())
    };
    let no_host = build().body(Full::new(body.clone())).unwrap();
    let two_hosts = build()
        .header("host", "a")
        .header("host", "b")
        .body(Full::new(body.clone()))
        .unwrap();
    let both_framings = build()
        .header("host", "a")
        .header("transfer-encoding", "chunked")
        .body(Full::new(body.clone()))
        .unwrap();
    for request in [no_host, two_hosts, both_framings] {
        let a = call_request(&h, request).await;
        assert_refused(&a, 400, 4006);
        assert!(a.connection_close);
    }
    assert_eq!(rejections(&h, "bad_http"), 3.0);
    let gzip = build()
        .header("host", "a")
        .header("content-encoding", "gzip")
        .body(Full::new(body.clone()))
        .unwrap();
    let a = call_request(&h, gzip).await;
    assert_refused(&a, 415, 4150);
    assert_eq!(rejections(&h, "unsupported_encoding"), 1.0);
    assert!(h.delivery().delivered().is_empty());
    // HTTP/1.0 needs no Host; identity coding is no coding.
    let old = build()
        .version(http::Version::HTTP_10)
        .header("content-encoding", "identity")
        .body(Full::new(body.clone()))
        .unwrap();
    let a = call_request(&h, old).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert!(!a.connection_close);
}

/// Together, the tests above exercise every rejection the bridge has.
#[test]
fn every_rejection_reason_is_covered_here() {
    let (_, cases) = request_cases();
    let mut covered: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.reason).collect();
    covered.extend([
        "bad_http",
        "unsupported_encoding",
        "sink_unavailable",
        "sink_rejected",
        "backpressure",
        "publish_timeout",
        "spool_full",
        "body_timeout",
        "body_read",
        "overloaded",
    ]);
    // Answered by the connection's guard before the handler: tested in slow_clients.
    covered.insert("head_too_large");
    // Answered by the listener for a peer outside --allow-source: tested in trust.
    covered.insert("source_not_allowed");
    let all: std::collections::BTreeSet<&str> =
        Rejection::examples().iter().map(|r| r.reason()).collect();
    assert_eq!(covered, all);
}

const BEFORE: &str = "Group.CallbackBeforeSendMsg";

fn before_body() -> Bytes {
    Bytes::from(
        String::from_utf8(group_message("@TGS#before", 1).to_vec())
            .unwrap()
            .replace(CMD, BEFORE),
    )
}

async fn post_before(h: &Handler<Scripted>) -> (Answered, Duration) {
    let path = format!("/callback?{}", signed(BEFORE, now()));
    let started = Instant::now();
    let a = call(h, "POST", &path, Full::new(before_body())).await;
    (a, started.elapsed())
}

fn before_count(h: &Handler<Scripted>, outcome: &str) -> f64 {
    counter(
        h,
        &format!("timbridge_before_callbacks_total{{outcome=\"{outcome}\"}}"),
    )
}

fn assert_allowed_at_once(a: &Answered, took: Duration) {
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        a.body,
        serde_json::json!({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})
    );
    assert!(took < Duration::from_millis(50), "answered after {took:?}");
}

#[tokio::test]
async fn allow_answers_ok_at_once_and_publishes_in_the_background() {
    let h = handler(
        Outcome::After(Duration::from_millis(100), Box::new(Outcome::Ok)),
        &[],
    );
    let (a, took) = post_before(&h).await;
    assert_allowed_at_once(&a, took);
    assert_eq!(before_count(&h, "queued"), 1.0);
    let delivered = eventually(Duration::from_secs(5), "the background publish", || {
        let h = h.clone();
        async move { h.delivery().delivered().pop() }
    })
    .await;
    assert_eq!(delivered.body, before_body());
    assert_eq!(
        delivered.destination,
        format!("tim.{BEFORE}.{}", delivered.partition)
    );
    assert_eq!(before_count(&h, "published"), 1.0);
}

#[tokio::test]
async fn allow_never_says_fail_for_the_broker_and_counts_the_lost_event() {
    let h = handler(
        Outcome::Fail(DeliveryError::Unavailable("down".into())),
        &[],
    );
    let (a, took) = post_before(&h).await;
    assert_allowed_at_once(&a, took);
    eventually(
        Duration::from_secs(5),
        "the failed background publish",
        || {
            let h = h.clone();
            async move { (before_count(&h, "publish_failed") == 1.0).then_some(()) }
        },
    )
    .await;
    assert!(h.delivery().delivered().is_empty());
    // The same broker failure is a 503 for an after-callback.
    assert_refused(&post(&h, group_message("@TGS#after", 1)).await, 503, 5030);
}

#[tokio::test]
async fn allow_answers_ok_when_the_bridge_is_saturated_or_its_queue_full() {
    let hang = || Outcome::After(Duration::from_secs(10), Box::new(Outcome::Ok));
    let h = handler(
        hang(),
        &["--max-inflight", "1", "--before-callback-queue", "1"],
    );
    // An after-callback holds the only request slot.
    let _busy = tokio::spawn({
        let h = h.clone();
        async move { post(&h, group_message("@TGS#busy", 1)).await }
    });
    eventually(Duration::from_secs(5), "the request slot taken", || {
        let h = h.clone();
        async move { (counter(&h, "timbridge_inflight_requests") == 1.0).then_some(()) }
    })
    .await;
    assert_refused(&post(&h, group_message("@TGS#busy", 2)).await, 503, 5032);
    // The first before-callback takes the queue's one slot; the second finds it full.
    let (a, took) = post_before(&h).await;
    assert_allowed_at_once(&a, took);
    let (a, took) = post_before(&h).await;
    assert_allowed_at_once(&a, took);
    assert_eq!(before_count(&h, "queued"), 1.0);
    assert_eq!(before_count(&h, "dropped"), 1.0);
}

#[tokio::test]
async fn skip_answers_ok_and_publishes_nothing_and_publish_keeps_the_broker_answers() {
    let h = handler(Outcome::Ok, &["--before-callbacks", "skip"]);
    let (a, took) = post_before(&h).await;
    assert_allowed_at_once(&a, took);
    assert_eq!(before_count(&h, "skipped"), 1.0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(h.delivery().delivered().is_empty());

    let h = handler(
        Outcome::Fail(DeliveryError::Unavailable("down".into())),
        &["--before-callbacks", "publish"],
    );
    let (a, _) = post_before(&h).await;
    assert_refused(&a, 503, 5030);
    assert_eq!(before_count(&h, "queued"), 0.0);
}

#[tokio::test]
async fn a_before_callback_that_is_not_tencents_is_still_refused() {
    let h = handler(Outcome::Ok, &[]);
    let unsigned = format!("/callback?{}", query(BEFORE));
    let a = call(&h, "POST", &unsigned, Full::new(before_body())).await;
    assert_refused(&a, 401, 4010);
    let mismatch = format!("/callback?{}", signed(BEFORE, now()));
    let a = call(&h, "POST", &mismatch, Full::new(group_message("@TGS#x", 1))).await;
    assert_refused(&a, 400, 4003);
    assert_eq!(before_count(&h, "queued"), 0.0);
    assert!(h.delivery().delivered().is_empty());
}
