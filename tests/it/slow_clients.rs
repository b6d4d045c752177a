//! Slow and idle clients on the callback listener: each bounded by its own deadline, none
//! delaying the others. The stdout sink writes into the void here: these are about the HTTP side.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::common::*;

/// A bridge with a 2 s header deadline, a 1 s body deadline and a 3 s idle timeout.
async fn start_http_bridge() -> timbridge::Bridge<timbridge::sink::Sink> {
    let config = config(&[
        "--allow-any-sdkappid",
        "--header-read-timeout",
        "2s",
        "--body-read-timeout",
        "1s",
        "--idle-timeout",
        "3s",
    ]);
    let sink = timbridge::sink::StdoutSink::with_writer(Box::new(std::io::sink()));
    timbridge::Bridge::start_with(config, timbridge::sink::Sink::Stdout(sink))
        .await
        .expect("bridge starts")
}

fn connect(addr: SocketAddr, read_timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(read_timeout)).unwrap();
    stream
}

/// A whole request for a group message, head and body.
fn raw_request(body: &Bytes) -> Vec<u8> {
    let mut r = format!(
        "POST /callback?{} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        query("Group.CallbackAfterSendMsg"),
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn read_answer(stream: &mut TcpStream) -> String {
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Trickles a request head one byte every 900 ms until the server answers or closes;
/// returns when that happened and what it said.
fn trickle_head(addr: SocketAddr) -> (Duration, String) {
    let mut stream = connect(addr, Duration::from_millis(100));
    let head = format!(
        "POST /callback?{} HTTP/1.1\r\nHost: x\r\n",
        query("Group.CallbackAfterSendMsg")
    );
    let started = Instant::now();
    for byte in head.bytes() {
        if stream.write_all(&[byte]).is_err() {
            return (started.elapsed(), String::new());
        }
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            Ok(0) => return (started.elapsed(), String::new()),
            Ok(n) => {
                return (
                    started.elapsed(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                )
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (started.elapsed(), String::new()),
        }
        std::thread::sleep(Duration::from_millis(900));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "slow-loris never cut off"
        );
    }
    (started.elapsed(), "sent the whole head".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_head_is_cut_off_without_delaying_others() {
    let _serial = serial().await;
    let bridge = start_http_bridge().await;
    let addr = bridge.addr();
    let loris = std::thread::spawn(move || trickle_head(addr));

    // Meanwhile, normal callbacks are answered promptly.
    let http = Http::default();
    let started = Instant::now();
    let mut seq = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        seq += 1;
        let t = Instant::now();
        assert_ok(&http.group_message(addr, "@TGS#fast", seq).await);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "a normal callback took {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (cut_after, answer) = tokio::task::spawn_blocking(move || loris.join().unwrap())
        .await
        .unwrap();
    assert!(
        !answer.contains("200 OK"),
        "the slow client got no 200: {answer}"
    );
    assert!(
        cut_after >= Duration::from_millis(1500) && cut_after < Duration::from_secs(4),
        "cut off after {cut_after:?}"
    );
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_408_after_the_body_timeout() {
    let _serial = serial().await;
    let bridge = start_http_bridge().await;
    let mut stream = connect(bridge.addr(), Duration::from_secs(5));
    let head = format!(
        "POST /callback?{} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"Callback",
        query("Group.CallbackAfterSendMsg")
    );
    stream.write_all(head.as_bytes()).unwrap();
    let t = Instant::now();
    let answer = read_answer(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"ErrorCode\":4080"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(3));
    let (_, metrics) = Http::default().admin(bridge.admin_addr(), "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "timbridge_rejections_total{reason=\"body_timeout\"}"
        ),
        1.0
    );
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_outlives_the_header_timeout_and_closes_after_the_idle_timeout(
) {
    let _serial = serial().await;
    let bridge = start_http_bridge().await;
    let mut stream = connect(bridge.addr(), Duration::from_secs(10));
    stream
        .write_all(&raw_request(&group_message("@TGS#idle", 1)))
        .unwrap();
    assert!(read_answer(&mut stream).starts_with("HTTP/1.1 200"));
    // Idle longer than the 2 s header deadline: still open (the idle timeout is separate).
    std::thread::sleep(Duration::from_millis(2500));
    stream
        .write_all(&raw_request(&group_message("@TGS#idle", 2)))
        .unwrap();
    assert!(
        read_answer(&mut stream).starts_with("HTTP/1.1 200"),
        "kept alive past the header timeout"
    );
    // Idle longer than the 3 s idle timeout: closed by the server.
    let t = Instant::now();
    assert_eq!(read_answer(&mut stream), "", "closed by the server");
    assert!(
        t.elapsed() >= Duration::from_secs(2) && t.elapsed() < Duration::from_secs(8),
        "idle close after {:?}",
        t.elapsed()
    );
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_the_header_timeout_counted_from_accept() {
    let _serial = serial().await;
    let bridge = start_http_bridge().await;
    let mut stream = connect(bridge.addr(), Duration::from_secs(10));
    let t = Instant::now();
    assert_eq!(read_answer(&mut stream), "", "closed without an answer");
    let took = t.elapsed();
    // The 2 s header timeout, not the 3 s idle timeout plus it.
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(3500),
        "closed after {took:?}"
    );
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_64_kib_is_answered_431_and_the_connection_closed() {
    let _serial = serial().await;
    let bridge = start_http_bridge().await;
    let mut stream = connect(bridge.addr(), Duration::from_secs(5));
    let head = format!(
        "POST /callback?{} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        query("Group.CallbackAfterSendMsg"),
        "a".repeat(70 * 1024)
    );
    // The server may close before the whole head is written.
    let _ = stream.write_all(head.as_bytes());
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(answer.contains("\"ErrorCode\":4310"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // Counted when the server side of the connection has ended, a moment after the client
    // saw it close.
    let admin = bridge.admin_addr();
    eventually(Duration::from_secs(5), "the 431 counted", || async move {
        let (_, metrics) = Http::default().admin(admin, "/metrics").await;
        let series = "timbridge_rejections_total{reason=\"head_too_large\"}";
        (metric(&metrics, series) == 1.0).then_some(())
    })
    .await;
    // A large head within the bound is still served.
    let mut stream = connect(bridge.addr(), Duration::from_secs(5));
    let body = group_message("@TGS#bighead", 1);
    let mut request = format!(
        "POST /callback?{} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nContent-Length: {}\r\n\r\n",
        query("Group.CallbackAfterSendMsg"),
        "a".repeat(32 * 1024),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    stream.write_all(&request).unwrap();
    assert!(read_answer(&mut stream).starts_with("HTTP/1.1 200"));
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_at_the_limit_make_room_for_a_callback() {
    let _serial = serial().await;
    // The default 2,048 connections; a header timeout long enough that no silent connection
    // is closed by it while the test runs (what makes room is the eviction).
    let config = config(&["--allow-any-sdkappid", "--header-read-timeout", "60s"]);
    let sink = timbridge::sink::StdoutSink::with_writer(Box::new(std::io::sink()));
    let bridge = timbridge::Bridge::start_with(config, timbridge::sink::Sink::Stdout(sink))
        .await
        .expect("bridge starts");
    let addr = bridge.addr();
    let silent: Vec<TcpStream> = (0..2048)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let http = Http::default();
    let admin = bridge.admin_addr();
    eventually(
        Duration::from_secs(10),
        "every silent connection accepted",
        || {
            let http = http.clone();
            async move {
                let (_, m) = http.admin(admin, "/metrics").await;
                (metric(&m, "timbridge_open_connections") >= 2048.0).then_some(())
            }
        },
    )
    .await;
    let t = Instant::now();
    let answer = http.group_message(addr, "@TGS#room", 1).await;
    let took = t.elapsed();
    assert_ok(&answer);
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    let (_, m) = http.admin(admin, "/metrics").await;
    assert!(metric(&m, "timbridge_connections_evicted_total") >= 1.0);
    drop(silent);
    bridge.shutdown().await;
}
