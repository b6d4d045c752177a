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
use timbridge::deliver::scripted::{Outcome, Scripted};
use timbridge::deliver::DeliveryError;
use timbridge::ingest::{Handler, Rejection};
use timbridge::metrics::Metrics;

use crate::common::cases::{now, request_cases, signed, CASE_FLAGS};
use crate::common::*;

const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);
const CMD: &str = "Group.CallbackAfterSendMsg";

fn handler(default: Outcome, extra: &[&str]) -> Arc<Handler<Scripted>> {
    let mut flags = CASE_FLAGS.to_vec();
    flags.extend_from_slice(extra);
    Arc::new(Handler::new(
        &config(&flags),
        Scripted::new(default),
        Metrics::new().unwrap(),
    ))
}

/// What the handler answered, parsed.
struct Answered {
    status: u16,
    retry_after: Option<String>,
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
        .body(body)
        .unwrap();
    let response = h.handle(request, PEER).await;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answered {
        status,
        retry_after,
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
    let p = timbridge::sink::partition::partition(b"@TGS#ok", 16);
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
    assert_eq!(
        counter(&h, "timbridge_broker_duplicates_total{sink=\"scripted\"}"),
        0.0
    );
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
            "sink_backpressure",
        ),
        (DeliveryError::TimedOut, 503, 5031, "publish_timeout"),
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
async fn slow_acks_shed_before_the_body_is_read() {
    let h = handler(
        Outcome::After(Duration::from_millis(100), Box::new(Outcome::Ok)),
        &["--max-ack-latency", "20ms"],
    );
    // The moving average (1/8 per sample) of 100 ms acks passes 20 ms after two of them.
    let mut answers = Vec::new();
    for seq in 1..=4 {
        answers.push(post(&h, group_message("@TGS#lag", seq)).await);
    }
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200, 503, 503]);
    assert_refused(&answers[2], 503, 5034);
    assert_eq!(rejections(&h, "sink_backpressure"), 2.0);
    assert_eq!(h.delivery().delivered().len(), 2);
}

/// Together, the tests above exercise every rejection the bridge has.
#[test]
fn every_rejection_reason_is_covered_here() {
    let (_, cases) = request_cases();
    let mut covered: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.reason).collect();
    covered.extend([
        "sink_unavailable",
        "sink_rejected",
        "sink_backpressure",
        "publish_timeout",
        "body_timeout",
        "body_read",
        "overloaded",
    ]);
    let all: std::collections::BTreeSet<&str> =
        Rejection::examples().iter().map(|r| r.reason()).collect();
    assert_eq!(covered, all);
}
