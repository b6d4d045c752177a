//! End to end against a real nats-server with JetStream: what is answered 200 is in the stream,
//! byte for byte, on the right subject, with the right headers, in per-group order.

use std::time::{Duration, Instant};

use crate::common::nats::{start_bridge, start_bridge_unready, NatsServer};
use crate::common::*;
use bytes::Bytes;
use timbridge::wire::partition;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_arrive_byte_identical_with_subject_and_headers() {
    let _serial = serial().await;
    let nats = NatsServer::start();
    // Every fixture, before-callbacks too, published in the order sent.
    let bridge = start_bridge(&nats, &["--before-callbacks", "publish"]).await;
    let fixtures = send_every_fixture(bridge.addr()).await;

    let stored = nats.reader().await.all("TIM").await;
    assert_eq!(stored.len(), fixtures.len());
    for ((name, command, body), msg) in fixtures.iter().zip(&stored) {
        assert_eq!(
            &msg.payload, body,
            "{name}: payload differs from the request body"
        );
        let p = partition(fixture_key(body).as_bytes(), 16);
        assert_eq!(msg.subject, format!("tim.{command}.{p}"), "{name}");
        assert_fixture_headers(name, command, body, |h| msg.header(h));
        // One dedup header name on every sink; JetStream's own is the same value.
        assert_eq!(
            msg.header("tim-dedup-id"),
            msg.header("Nats-Msg-Id"),
            "{name}"
        );
    }
    // The worked fixtures include both EventTime forms and a topic id.
    assert!(stored.iter().any(|m| m.header("tim-topic-id").is_some()));
    assert!(stored.iter().any(|m| m.header("tim-msg-id").is_some()));
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_groups_keep_their_order_and_nothing_is_lost_or_doubled() {
    let _serial = serial().await;
    let nats = NatsServer::start();
    let bridge = start_bridge(&nats, &[]).await;
    let addr = bridge.addr();
    send_groups_in_order(addr, "@TGS#order", ORDER_GROUPS, ORDER_PER_GROUP).await;

    let stored = nats.reader().await.all("TIM").await;
    for msg in &stored {
        let p = partition(msg.header("tim-group-id").unwrap().as_bytes(), 16);
        assert_eq!(msg.subject, format!("tim.Group.CallbackAfterSendMsg.{p}"));
    }
    let ids = stored.iter().map(|m| {
        (
            m.header("tim-group-id").unwrap().to_owned(),
            m.header("tim-msg-seq").unwrap().parse().unwrap(),
        )
    });
    assert_groups_complete_in_order(ids, ORDER_GROUPS, ORDER_PER_GROUP);
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_sent_twice_is_stored_once() {
    let _serial = serial().await;
    let nats = NatsServer::start();
    let bridge = start_bridge(&nats, &[]).await;
    let http = Http::default();
    let body = group_message("@TGS#dup", 42);
    for _ in 0..2 {
        assert_ok(
            &http
                .callback(
                    bridge.addr(),
                    &query("Group.CallbackAfterSendMsg"),
                    body.clone(),
                )
                .await,
        );
    }
    // A different MsgSeq of the same group, and the same MsgSeq in a topic, are different messages.
    assert_ok(&http.group_message(bridge.addr(), "@TGS#dup", 43).await);
    let topic = {
        let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["TopicId"] = "@TGS#dup@TOPIC#_t".into();
        Bytes::from(serde_json::to_vec(&v).unwrap())
    };
    assert_ok(
        &http
            .callback(bridge.addr(), &query("Group.CallbackAfterSendMsg"), topic)
            .await,
    );

    let stored = nats.reader().await.all("TIM").await;
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[0].payload, body);
    let (_, metrics) = http.admin(bridge.admin_addr(), "/metrics").await;
    assert_eq!(
        metric(&metrics, "timbridge_broker_duplicates_total{sink=\"nats\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "timbridge_callbacks_total{command=\"Group.CallbackAfterSendMsg\",outcome=\"ok\"}"
        ),
        4.0
    );
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_answers_503_in_time_and_recovers_without_restart() {
    let _serial = serial().await;
    let mut nats = NatsServer::start();
    let bridge = start_bridge(&nats, &["--publish-timeout", "500ms"]).await;
    let http = Http::default();
    let admin = bridge.admin_addr();
    let q = query("Group.CallbackAfterSendMsg");
    assert_ok(
        &http
            .callback(bridge.addr(), &q, group_message("@TGS#down", 1))
            .await,
    );

    nats.stop();
    wait_readyz(admin, 503, Duration::from_secs(10)).await;
    for seq in 2..=6 {
        let started = Instant::now();
        let answer = http
            .callback(bridge.addr(), &q, group_message("@TGS#down", seq))
            .await;
        assert_unavailable_in_time(&answer, started.elapsed(), Duration::from_millis(500 + 400));
    }
    let (_, metrics) = http.admin(admin, "/metrics").await;
    assert!(
        metrics.contains("\ntimbridge_delivery_ready{delivery=\"nats\"} 0\n"),
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "timbridge_callbacks_total{command=\"Group.CallbackAfterSendMsg\",outcome=\"failed\"}"
        ) >= 5.0
    );

    nats.restart();
    wait_readyz(admin, 200, Duration::from_secs(15)).await;
    assert_ok(
        &http
            .callback(bridge.addr(), &q, group_message("@TGS#down", 7))
            .await,
    );

    // Messages answered 503 may still reach the stream (the client had sent them): at least
    // once, never lost. What was answered 200 must be there.
    let stored = nats.reader().await.all("TIM").await;
    let seqs: Vec<u64> = stored
        .iter()
        .map(|m| m.header("tim-msg-seq").unwrap().parse().unwrap())
        .collect();
    assert!(seqs.contains(&1) && seqs.contains(&7), "stored: {seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order kept: {seqs:?}");
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_nats_and_becomes_ready_when_it_appears() {
    let _serial = serial().await;
    let mut nats = NatsServer::start();
    nats.stop();
    let bridge = start_bridge_unready(&nats, &["--publish-timeout", "300ms"]).await;
    let http = Http::default();
    assert_eq!(http.admin(bridge.admin_addr(), "/readyz").await.0, 503);
    assert_eq!(http.admin(bridge.admin_addr(), "/healthz").await.0, 200);
    let answer = http.group_message(bridge.addr(), "@TGS#late", 1).await;
    assert_eq!(answer.status, 503);

    nats.restart();
    let admin = bridge.admin_addr();
    wait_readyz(admin, 200, Duration::from_secs(15)).await;
    assert_ok(&http.group_message(bridge.addr(), "@TGS#late", 2).await);
    assert!(nats.reader().await.count("TIM").await >= 1);
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_callbacks_are_allowed_at_once_with_nats_up_or_down() {
    let _serial = serial().await;
    let mut nats = NatsServer::start();
    let bridge = start_bridge(&nats, &["--publish-timeout", "500ms"]).await;
    let http = Http::default();
    let command = "Group.CallbackBeforeSendMsg";
    let body = |seq: u64| {
        Bytes::from(
            String::from_utf8(group_message("@TGS#before", seq).to_vec())
                .unwrap()
                .replace("Group.CallbackAfterSendMsg", command),
        )
    };
    // Broker up: OK at once, and the event arrives in the stream in the background.
    let started = Instant::now();
    assert_ok(&http.callback(bridge.addr(), &query(command), body(1)).await);
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    let reader = nats.reader().await;
    eventually(
        Duration::from_secs(5),
        "the before-callback in the stream",
        || {
            let reader = &reader;
            async move { (reader.count("TIM").await == 1).then_some(()) }
        },
    )
    .await;
    assert_eq!(reader.all("TIM").await[0].payload, body(1));

    // Broker down: still OK at once (the user's message goes ahead); an after-callback is 503.
    nats.stop();
    wait_readyz(bridge.admin_addr(), 503, Duration::from_secs(10)).await;
    for seq in 2..=6 {
        let started = Instant::now();
        assert_ok(
            &http
                .callback(bridge.addr(), &query(command), body(seq))
                .await,
        );
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "{:?}",
            started.elapsed()
        );
    }
    let after = http.group_message(bridge.addr(), "@TGS#before", 7).await;
    assert_eq!(after.status, 503);
    let (_, metrics) = http.admin(bridge.admin_addr(), "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "timbridge_before_callbacks_total{outcome=\"queued\"}"
        ),
        6.0
    );
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_recalls_member_joins_and_c2c_recalls_are_stored_once() {
    let nats = NatsServer::start();
    let bridge = start_bridge(&nats, &[]).await;
    let http = Http::default();
    let fixtures = fixtures();
    let redelivered = [
        "Group.CallbackAfterRecallMsg",
        "Group.CallbackAfterNewMemberJoin",
        "Group.CallbackAfterMemberExit",
        "C2C.CallbackAfterMsgWithDraw",
    ];
    for command in redelivered {
        let (_, _, body) = fixtures
            .iter()
            .find(|(_, c, _)| c == command)
            .unwrap_or_else(|| panic!("a fixture of {command}"));
        for _ in 0..2 {
            assert_ok(
                &http
                    .callback(bridge.addr(), &query(command), body.clone())
                    .await,
            );
        }
    }
    let stored = nats.reader().await.all("TIM").await;
    assert_eq!(stored.len(), redelivered.len(), "each stored once");
    for (msg, command) in stored.iter().zip(redelivered) {
        assert_eq!(msg.header("tim-callback-command"), Some(command));
        assert!(msg.header("Nats-Msg-Id").is_some(), "{command}");
    }
    let (_, metrics) = http.admin(bridge.admin_addr(), "/metrics").await;
    assert_eq!(
        metric(&metrics, "timbridge_broker_duplicates_total{sink=\"nats\"}"),
        4.0
    );
    bridge.shutdown().await;
}
