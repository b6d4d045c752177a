//! Who may call, and how a refusal leaves the connection: the source allow-list (client
//! sockets bound to loopback aliases, 127.0.0.2 allowed and 127.0.0.3 not), and early refusals
//! that read a small body so that a keep-alive connection goes on serving, and destinations a
//! caller cannot name (unknown commands share one). Against a real
//! nats-server: what is refused is never published.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::nats::{start_bridge, NatsServer};
use crate::common::*;
use timbridge::tencent::callback::{sign, Token};

const TOKEN: &str = "trust-token";

pub(crate) fn signed(token: &str) -> String {
    let time = cases::now().to_string();
    let sig = sign(&Token::new(token.into()), &time);
    format!(
        "{}&RequestTime={time}&Sign={sig}",
        query("Group.CallbackAfterSendMsg")
    )
}

/// One request, head and body, on a keep-alive connection.
pub(crate) fn request(query: &str, body: &Bytes) -> Vec<u8> {
    let mut r = format!(
        "POST /callback?{query} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A connection from `source` (a loopback alias) to `addr`.
pub(crate) async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads answers until `count` have arrived or the connection ends (2 s at most); returns
/// each one's status and body, and whether the connection was closed.
pub(crate) async fn answers<S: AsyncRead + Unpin>(
    stream: &mut S,
    count: usize,
) -> (Vec<(u16, String)>, bool) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while out.len() < count {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
        // Split off every complete answer (head, then Content-Length bytes).
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() < end + 4 + len {
                break;
            }
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            buf.drain(..end + 4 + len);
            out.push((status, body));
        }
    }
    (out, closed)
}

/// `--allow-source`: a listed source is served; another gets 403 before its body is read,
/// nothing of it is published, and the refusal is counted under its own reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_sources_are_served() {
    let nats = NatsServer::start();
    let bridge = start_bridge(
        &nats,
        &["--sdkappid", "1400000000", "--allow-source", "127.0.0.2/32"],
    )
    .await;
    let body = group_message("@TGS#allowed", 1);
    let mut allowed = connect_from("127.0.0.2", bridge.addr()).await;
    allowed
        .write_all(&request(&query("Group.CallbackAfterSendMsg"), &body))
        .await
        .unwrap();
    let (got, _) = answers(&mut allowed, 1).await;
    assert_eq!(got[0].0, 200, "{got:?}");

    // The refused source sends only the head: the answer must not wait for a body.
    let mut refused = connect_from("127.0.0.3", bridge.addr()).await;
    let other = group_message("@TGS#refused", 1);
    let whole = request(&query("Group.CallbackAfterSendMsg"), &other);
    let head_len = whole.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    refused.write_all(&whole[..head_len]).await.unwrap();
    let (got, closed) = answers(&mut refused, 1).await;
    assert_eq!(got.len(), 1, "answered without the body");
    assert_eq!(got[0].0, 403);
    let v: serde_json::Value = serde_json::from_str(&got[0].1).unwrap();
    assert_eq!(v["ActionStatus"], "FAIL");
    assert_eq!(v["ErrorCode"], 4031);
    assert!(
        closed || answers(&mut refused, 1).await.1,
        "the connection is closed"
    );

    let stored = nats.reader().await.all("TIM").await;
    let groups: Vec<&str> = stored
        .iter()
        .map(|m| m.header("tim-group-id").unwrap())
        .collect();
    assert_eq!(groups, ["@TGS#allowed"]);
    let (_, text) = Http::default().admin(bridge.admin_addr(), "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "timbridge_rejections_total{reason=\"source_not_allowed\"}"
        ),
        1.0
    );
    bridge.shutdown().await;
}

/// An early refusal (a bad signature, 401) of a request with a small declared body reads and
/// discards that body: the keep-alive connection goes on, and the request pipelined behind it
/// is answered and published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_refusal_keeps_the_connection_for_the_next_request() {
    let nats = NatsServer::start();
    let bridge = start_bridge(&nats, &["--sdkappid", "1400000000", "--token", TOKEN]).await;
    let forged = group_message("@TGS#keep", 1);
    let genuine = group_message("@TGS#keep", 2);
    let mut pipelined = request(&signed("not-the-token"), &forged);
    pipelined.extend_from_slice(&request(&signed(TOKEN), &genuine));
    let mut stream = TcpStream::connect(bridge.addr()).await.unwrap();
    stream.write_all(&pipelined).await.unwrap();
    let (got, _) = answers(&mut stream, 2).await;
    let statuses: Vec<u16> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [401, 200], "{got:?}");

    // A body over 64 KiB is not read for a refusal: that connection closes.
    let big = Bytes::from(vec![b' '; 70 * 1024]);
    let mut stream = TcpStream::connect(bridge.addr()).await.unwrap();
    stream
        .write_all(&request(&signed("not-the-token"), &big))
        .await
        .unwrap();
    let (got, closed) = answers(&mut stream, 2).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, 401);
    assert!(closed, "a large unread body closes the connection");

    let stored = nats.reader().await.all("TIM").await;
    let seqs: Vec<&str> = stored
        .iter()
        .map(|m| m.header("tim-msg-seq").unwrap())
        .collect();
    assert_eq!(seqs, ["2"], "only the genuine one is published");
    bridge.shutdown().await;
}

/// A command Tencent does not document cannot name a subject: it goes to the one fixed
/// destination, `tim.unknown.{partition}`, and its header keeps the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_command_goes_to_the_fixed_destination() {
    let nats = NatsServer::start();
    let bridge = start_bridge(&nats, &["--sdkappid", "1400000000"]).await;
    let command = "Made.UpCommand";
    let body = Bytes::from(format!(
        r#"{{"CallbackCommand":"{command}","GroupId":"g"}}"#
    ));
    assert_ok(
        &Http::default()
            .callback(bridge.addr(), &query(command), body.clone())
            .await,
    );
    let stored = nats.reader().await.all("TIM").await;
    assert_eq!(stored.len(), 1);
    let p = timbridge::wire::partition(b"1400000000", 16);
    assert_eq!(stored[0].subject, format!("tim.unknown.{p}"));
    assert_eq!(stored[0].header("tim-callback-command"), Some(command));
    assert_eq!(stored[0].payload, body);
    bridge.shutdown().await;
}

/// `--trusted-proxy`: behind a trusted proxy the client is whom its PROXY header (v1 or v2) or
/// `X-Forwarded-For` names, and that client is what `--allow-source` checks; from anyone else
/// both are ignored. An unreadable PROXY header closes the connection, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_names_the_client() {
    let nats = NatsServer::start();
    let bridge = start_bridge(
        &nats,
        &[
            "--sdkappid",
            "1400000000",
            "--allow-source",
            "127.0.0.2/32",
            "--trusted-proxy",
            "127.0.0.4/32",
        ],
    )
    .await;
    let with_header = |group: &str, header: &str| {
        let body = group_message(group, 1);
        let mut r = request(&query("Group.CallbackAfterSendMsg"), &body);
        let at = r.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        r.splice(at..at, header.bytes());
        r
    };
    // (source, bytes sent first, group, expected status)
    let v2 = |client: [u8; 4]| {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        h.extend_from_slice(&client);
        h.extend_from_slice(&[127, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x90]);
        h
    };
    let cases: Vec<(&str, Vec<u8>, &str, u16)> = vec![
        ("127.0.0.4", vec![], "@TGS#xff-allowed", 200),
        ("127.0.0.4", vec![], "@TGS#xff-refused", 403),
        ("127.0.0.3", vec![], "@TGS#untrusted-xff", 403),
        ("127.0.0.4", v2([127, 0, 0, 2]), "@TGS#v2-allowed", 200),
        ("127.0.0.4", v2([127, 0, 0, 3]), "@TGS#v2-refused", 403),
        (
            "127.0.0.4",
            b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 80\r\n".to_vec(),
            "@TGS#v1-allowed",
            200,
        ),
    ];
    for (source, preamble, group, expected) in cases {
        let forwarded = match group {
            "@TGS#xff-allowed" | "@TGS#untrusted-xff" => "X-Forwarded-For: 127.0.0.2\r\n",
            "@TGS#xff-refused" => "X-Forwarded-For: 127.0.0.2, 127.0.0.3\r\n",
            _ => "",
        };
        let mut stream = connect_from(source, bridge.addr()).await;
        let mut bytes = preamble;
        bytes.extend_from_slice(&with_header(group, forwarded));
        stream.write_all(&bytes).await.unwrap();
        let (got, _) = answers(&mut stream, 1).await;
        assert_eq!(got.first().map(|a| a.0), Some(expected), "{group}: {got:?}");
    }

    // A garbled PROXY header from the trusted proxy: no answer, counted.
    let mut garbled = connect_from("127.0.0.4", bridge.addr()).await;
    garbled
        .write_all(b"PROXY TCP4 not-an-address\r\nPOST /callback HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = answers(&mut garbled, 1).await;
    assert!(got.is_empty() && closed, "{got:?}");

    let stored = nats.reader().await.all("TIM").await;
    let mut groups: Vec<&str> = stored
        .iter()
        .map(|m| m.header("tim-group-id").unwrap())
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        ["@TGS#v1-allowed", "@TGS#v2-allowed", "@TGS#xff-allowed"]
    );
    let (_, text) = Http::default().admin(bridge.admin_addr(), "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "timbridge_rejections_total{reason=\"source_not_allowed\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            "timbridge_connections_refused_total{reason=\"proxy_header\"}"
        ),
        1.0
    );
    bridge.shutdown().await;
}

/// `--max-peer-inflight-bytes`: one client's slow chunked uploads hold only what has arrived,
/// and at most their share; another client is still served. (Before, each chunked body
/// reserved the whole `--max-body-bytes` at once: four slow requests took the whole budget.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_slow_uploads_do_not_starve_another() {
    let nats = NatsServer::start();
    let bridge = start_bridge(
        &nats,
        &[
            "--sdkappid",
            "1400000000",
            "--max-body-bytes",
            "64KiB",
            "--max-inflight-bytes",
            "256KiB",
            "--max-peer-inflight-bytes",
            "128KiB",
            "--body-read-timeout",
            "30s",
        ],
    )
    .await;
    let head = format!(
        "POST /callback?{} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        query("Group.CallbackAfterSendMsg")
    );
    // Eight uploads of one 20 KiB chunk each, then silence (the body never ends).
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut stream = connect_from("127.0.0.2", bridge.addr()).await;
        let mut bytes = head.clone().into_bytes();
        bytes.extend_from_slice(b"5000\r\n");
        bytes.extend_from_slice(&[b' '; 0x5000]);
        bytes.extend_from_slice(b"\r\n");
        stream.write_all(&bytes).await.unwrap();
        slow.push(stream);
    }
    let admin = bridge.admin_addr();
    let held = eventually(
        Duration::from_secs(5),
        "the slow uploads held",
        || async move {
            let (_, text) = Http::default().admin(admin, "/metrics").await;
            let held = metric(&text, "timbridge_inflight_body_bytes");
            (held >= 100.0 * 1024.0).then_some(held)
        },
    )
    .await;
    assert!(held <= 128.0 * 1024.0, "one client holds {held} bytes");

    // Another client is served meanwhile.
    let mut other = connect_from("127.0.0.3", bridge.addr()).await;
    let body = group_message("@TGS#other-client", 1);
    other
        .write_all(&request(&query("Group.CallbackAfterSendMsg"), &body))
        .await
        .unwrap();
    let (got, _) = answers(&mut other, 1).await;
    assert_eq!(got.first().map(|a| a.0), Some(200), "{got:?}");

    // The uploads past the client's share were refused as overload.
    let mut refused = 0;
    let got = futures_util::future::join_all(slow.iter_mut().map(|s| answers(s, 1))).await;
    for (got, _) in got {
        if let Some((status, body)) = got.first() {
            assert_eq!(*status, 503, "{body}");
            assert!(body.contains("max-peer-inflight-bytes"), "{body}");
            refused += 1;
        }
    }
    assert!((1..=2).contains(&refused), "{refused} refused");
    assert_eq!(nats.reader().await.count("TIM").await, 1);
    bridge.shutdown().await;
}

/// `--replay-cache-entries`: the same signed request sent again is answered 200 and not
/// published again (the broker never sees it: no broker duplicate either); a different body
/// under the same `Sign` is a new callback and is published. With the cache off, the replay
/// reaches the broker (which drops it by its dedup id: counted as a broker duplicate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_signed_request_is_stored_once() {
    for (entries, replays, duplicates) in [("100000", 1.0, 0.0), ("0", 0.0, 1.0)] {
        let nats = NatsServer::start();
        let bridge = start_bridge(
            &nats,
            &[
                "--sdkappid",
                "1400000000",
                "--token",
                TOKEN,
                "--replay-cache-entries",
                entries,
            ],
        )
        .await;
        let query = signed(TOKEN);
        let http = Http::default();
        let first = group_message("@TGS#replay", 1);
        for _ in 0..2 {
            assert_ok(&http.callback(bridge.addr(), &query, first.clone()).await);
        }
        let other = group_message("@TGS#replay", 2);
        assert_ok(&http.callback(bridge.addr(), &query, other).await);

        let seqs: Vec<String> = nats
            .reader()
            .await
            .all("TIM")
            .await
            .iter()
            .map(|m| m.header("tim-msg-seq").unwrap().to_owned())
            .collect();
        assert_eq!(seqs, ["1", "2"], "cache {entries}");
        let (_, text) = http.admin(bridge.admin_addr(), "/metrics").await;
        assert_eq!(metric(&text, "timbridge_replays_total"), replays);
        assert_eq!(
            counted(&text, "timbridge_broker_duplicates_total{sink=\"nats\"}"),
            duplicates,
            "cache {entries}"
        );
        bridge.shutdown().await;
    }
}

/// `--allow-tencent-egress`: the allow-list is Tencent's egress list from GetIPList (here the
/// REST simulator's), asked with the app's REST credentials; a refresh that changes it changes
/// who is served, and a refresh that fails, or answers an empty list, keeps the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tencent_egress_list_is_learnt_refreshed_and_kept_when_a_refresh_fails() {
    use crate::common::tencent::Tencent;
    const APP: u64 = 1400000077;
    let sim = Tencent::start(APP, "administrator", "egress-key", 200).await;
    sim.set_ip_list(5, &["127.0.0.2"]);
    sim.set_ip_list(6, &["192.0.2.0/24"]);
    let dir = tempfile::tempdir().unwrap();
    let apps = dir.path().join("apps.yaml");
    std::fs::write(
        &apps,
        format!(
            "apps:\n  - sdkappid: {APP}\n    token: {TOKEN}\n    rest:\n      region: singapore\n      identifier: administrator\n      secret_key: egress-key\n"
        ),
    )
    .unwrap();
    let nats = NatsServer::start();
    let endpoint = sim.endpoint();
    let bridge = start_bridge(
        &nats,
        &[
            "--config",
            apps.to_str().unwrap(),
            "--allow-tencent-egress",
            "--egress-refresh",
            "200ms",
            "--rest-endpoint",
            &endpoint,
            "--rest-allow-http",
        ],
    )
    .await;
    let query = || {
        let time = cases::now().to_string();
        let sig = sign(&Token::new(TOKEN.into()), &time);
        format!(
            "SdkAppid={APP}&CallbackCommand=Group.CallbackAfterSendMsg&contenttype=json&RequestTime={time}&Sign={sig}"
        )
    };
    let addr = bridge.addr();
    let status_from = |source: &'static str, seq: u64| {
        let query = query();
        async move {
            let mut stream = connect_from(source, addr).await;
            let body = group_message("@TGS#egress", seq);
            stream.write_all(&request(&query, &body)).await.unwrap();
            answers(&mut stream, 1).await.0.first().map(|a| a.0)
        }
    };
    assert_eq!(status_from("127.0.0.2", 1).await, Some(200));
    assert_eq!(status_from("127.0.0.3", 2).await, Some(403));

    // Tencent's list changes: .3 in, .2 out.
    sim.set_ip_list(5, &["127.0.0.3/32"]);
    eventually(Duration::from_secs(10), "the new list served", || async {
        (status_from("127.0.0.3", 3).await == Some(200)).then_some(())
    })
    .await;
    assert_eq!(status_from("127.0.0.2", 4).await, Some(403));

    // Refreshes fail, then answer nothing: the last list stays.
    sim.fail_ip_list();
    let admin = bridge.admin_addr();
    let failed = || async move {
        let (_, text) = Http::default().admin(admin, "/metrics").await;
        metric(&text, "timbridge_egress_refreshes_total{result=\"failed\"}")
    };
    eventually(Duration::from_secs(10), "a failed refresh", || async {
        (failed().await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(status_from("127.0.0.3", 5).await, Some(200));
    sim.set_ip_list(5, &[]);
    let before = failed().await;
    // Two more failures: at least one refresh was answered with the empty list.
    eventually(
        Duration::from_secs(10),
        "an empty answer refused",
        || async { (failed().await >= before + 2.0).then_some(()) },
    )
    .await;
    assert_eq!(status_from("127.0.0.3", 6).await, Some(200));
    assert_eq!(status_from("127.0.0.2", 7).await, Some(403));
    let (_, text) = Http::default().admin(admin, "/metrics").await;
    // 127.0.0.3/32 and 192.0.2.0/24.
    assert_eq!(metric(&text, "timbridge_allowed_source_ranges"), 2.0);

    let seqs: Vec<String> = nats
        .reader()
        .await
        .all("TIM")
        .await
        .iter()
        .map(|m| m.header("tim-msg-seq").unwrap().to_owned())
        .collect();
    assert_eq!(seqs, ["1", "3", "5", "6"]);
    bridge.shutdown().await;
}
