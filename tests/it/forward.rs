//! `--before-callbacks forward` against a real moderation service started here (hyper on a
//! loopback port): it allows, denies, rewrites, hangs and crashes, and the bridge answers Tencent
//! with its verdict, or allow when it hangs or fails; the callback is published with the verdict.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use timbridge::core::deliver::scripted::{Outcome, Scripted};
use timbridge::ingest::report::Metrics;
use timbridge::ingest::Handler;

use crate::common::*;

const BEFORE: &str = "Group.CallbackBeforeSendMsg";
const DENY: &str = r#"{"ActionStatus":"FAIL","ErrorInfo":"not allowed here","ErrorCode":1}"#;
const REWRITE: &str = r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0,"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"***"}}]}"#;

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// What the service saw: (query, body) of each request.
type Seen = Arc<Mutex<Vec<(String, Bytes)>>>;

/// A moderation service on a free loopback port; it answers by the body's text: "deny",
/// "rewrite", "hang" (never answers), "crash" (closes the connection), else allow.
async fn moderation_service() -> (SocketAddr, Seen) {
    moderation_service_over(None).await
}

/// As [`moderation_service`], over TLS when `tls` is given.
async fn moderation_service_over(tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = log.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let stream: Box<dyn Io> = match tls {
                    None => Box::new(stream),
                    Some(tls) => match tls.accept(stream).await {
                        Ok(stream) => Box::new(stream),
                        Err(_) => return,
                    },
                };
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let query = request.uri().query().unwrap_or("").to_owned();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        log.lock().unwrap().push((query, body.clone()));
                        let text = String::from_utf8_lossy(&body);
                        let answer = if text.contains("deny") {
                            DENY
                        } else if text.contains("rewrite") {
                            REWRITE
                        } else if text.contains("hang") {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            DENY
                        } else if text.contains("crash") {
                            return Err(std::io::Error::other("crashed"));
                        } else {
                            r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#
                        };
                        Ok::<_, std::io::Error>(http::Response::new(Full::new(Bytes::from(answer))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn handler(service: SocketAddr) -> Arc<Handler<Scripted>> {
    handler_at(&format!("http://{service}/moderate"), &[])
}

fn handler_at(url: &str, extra: &[&str]) -> Arc<Handler<Scripted>> {
    let mut flags = vec![
        "--sdkappid",
        "1400000000",
        "--token",
        cases::TOKEN,
        "--before-callbacks",
        "forward",
        "--before-callback-url",
        url,
        "--before-callback-timeout",
        "300ms",
    ];
    flags.extend_from_slice(extra);
    let config = config(&flags);
    Arc::new(Handler::new(
        config.ingest(),
        Scripted::new(Outcome::Ok),
        Metrics::new(&prometheus::Registry::new()).unwrap(),
    ))
}

fn before_body(text: &str) -> Bytes {
    Bytes::from(
        String::from_utf8(group_message("@TGS#mod", 1).to_vec())
            .unwrap()
            .replace("Group.CallbackAfterSendMsg", BEFORE)
            .replace("message 1 of @TGS#mod", text),
    )
}

async fn send(h: &Handler<Scripted>, text: &str) -> (u16, serde_json::Value, Duration) {
    let request = http::Request::post(format!("/callback?{}", cases::signed(BEFORE, cases::now())))
        .header("host", "bridge")
        .body(Full::new(before_body(text)))
        .unwrap();
    let started = Instant::now();
    let response = h.handle(request, "127.0.0.1:1".parse().unwrap()).await;
    let took = started.elapsed();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap(), took)
}

fn verdicts(h: &Handler<Scripted>, verdict: &str) -> f64 {
    let text = String::from_utf8(h.metrics().encode()).unwrap();
    metric(
        &text,
        &format!("timbridge_before_verdicts_total{{verdict=\"{verdict}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_verdict_is_tencents_answer_and_is_published_with_the_callback() {
    let (service, seen) = moderation_service().await;
    let h = handler(service);
    let ok = serde_json::json!({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0});

    let (status, answer, _) = send(&h, "hello").await;
    assert_eq!((status, &answer), (200, &ok));
    let (status, answer, _) = send(&h, "please deny").await;
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        serde_json::from_str::<serde_json::Value>(DENY).unwrap()
    );
    let (_, answer, _) = send(&h, "please rewrite").await;
    assert_eq!(
        answer,
        serde_json::from_str::<serde_json::Value>(REWRITE).unwrap()
    );
    // A service that hangs or crashes: allow (Tencent's default), within the timeout.
    let (status, answer, took) = send(&h, "hang").await;
    assert_eq!((status, &answer), (200, &ok));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(800),
        "{took:?}"
    );
    let (status, answer, took) = send(&h, "crash").await;
    assert_eq!((status, &answer), (200, &ok));
    assert!(took < Duration::from_millis(300), "{took:?}");
    for (verdict, n) in [
        ("allow", 1.0),
        ("deny", 1.0),
        ("rewrite", 1.0),
        ("timeout", 1.0),
        ("error", 1.0),
    ] {
        assert_eq!(verdicts(&h, verdict), n, "{verdict}");
    }

    // The service saw Tencent's query and body as they came, without the signature: a signed
    // URL it could replay at the bridge.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[0].0, query(BEFORE));
    assert!(!seen[0].0.contains("Sign=") && !seen[0].0.contains("RequestTime="));
    assert_eq!(seen[0].1, before_body("hello"));

    // Each callback is published in the background with the verdict.
    let records = eventually(Duration::from_secs(5), "five records published", || {
        let h = h.clone();
        async move {
            let records = h.delivery().delivered();
            (records.len() == 5).then_some(records)
        }
    })
    .await;
    let verdict_of = |text: &str| {
        let record = records
            .iter()
            .find(|r| r.body == before_body(text))
            .unwrap_or_else(|| panic!("{text} published"));
        record
            .headers
            .iter()
            .find(|(name, _)| *name == "tim-before-verdict")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(verdict_of("hello").as_deref(), Some("allow"));
    assert_eq!(verdict_of("please deny").as_deref(), Some("deny"));
    assert_eq!(verdict_of("please rewrite").as_deref(), Some("rewrite"));
    assert_eq!(verdict_of("hang").as_deref(), Some("timeout"));
    assert_eq!(verdict_of("crash").as_deref(), Some("error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_is_not_there_means_allow() {
    // A port nobody listens on: connection refused.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let h = handler(addr);
    let (status, answer, took) = send(&h, "hello").await;
    assert_eq!(status, 200);
    assert_eq!(answer["ErrorCode"], 0);
    assert!(took < Duration::from_millis(300), "{took:?}");
    assert_eq!(verdicts(&h, "error"), 1.0);
}

/// An https:// moderation service whose certificate chains to `--before-callback-ca` is
/// relayed to (and gets no Sign); without that CA the handshake fails and the bridge allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_moderation_service_is_relayed_to_when_its_ca_is_trusted() {
    let ca = crate::tls::Ca::new("moderation CA");
    let (service, seen) = moderation_service_over(Some(ca.acceptor("127.0.0.1"))).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let url = format!("https://{service}/moderate");

    let trusting = handler_at(&url, &["--before-callback-ca", ca_file.to_str().unwrap()]);
    let (status, answer, _) = send(&trusting, "deny this").await;
    assert_eq!(status, 200);
    assert_eq!(answer["ErrorCode"], 1, "{answer}");
    assert_eq!(verdicts(&trusting, "deny"), 1.0);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(!seen[0].0.contains("Sign="), "{}", seen[0].0);
    }

    let strange = handler_at(&url, &[]);
    let (status, answer, _) = send(&strange, "deny this").await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["ErrorCode"], 0,
        "an unverified service is not asked: allow"
    );
    assert_eq!(verdicts(&strange, "error"), 1.0);
    assert_eq!(seen.lock().unwrap().len(), 1);
}
