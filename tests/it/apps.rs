//! Several apps on one bridge (`--config FILE`), against real brokers: each request verified
//! with its own app's token (another app's valid signature is refused), routed to its app's
//! subject or topic, and counted under its app's label, whose series exist from the start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::common::kafka::{self, consume_topics, Tansu};
use crate::common::nats::{start_bridge, NatsServer};
use crate::common::*;
use timbridge::tencent::callback::sign;
use timbridge::tencent::callback::Token;
use timbridge::wire::partition;

const PROD: u64 = APP;
const STAGING: u64 = 1400000002;
const COMMAND: &str = "Group.CallbackAfterSendMsg";

/// The two apps: production with the sink's destination, staging with its own, and each its
/// own token (staging's from the environment, as the chart passes it).
fn apps_file(dir: &tempfile::TempDir, destination_key: &str) -> PathBuf {
    std::env::set_var("TIMBRIDGE_TEST_STAGING_TOKEN", "staging-token");
    let path = dir.path().join("apps.yaml");
    std::fs::write(
        &path,
        format!(
            "apps:
  - sdkappid: {PROD}
    token: prod-token
  - sdkappid: {STAGING}
    token_env: TIMBRIDGE_TEST_STAGING_TOKEN
    {destination_key}: staging.{{command}}
"
        ),
    )
    .unwrap();
    path
}

fn signed_query(app: u64, token: &str) -> String {
    let time = cases::now().to_string();
    let sig = sign(&Token::new(token.into()), &time);
    format!(
        "SdkAppid={app}&CallbackCommand={COMMAND}&contenttype=json&RequestTime={time}&Sign={sig}"
    )
}

/// Sends one message of each app with its own token and one of staging signed with
/// production's token (refused); checks the per-app counters before and after.
async fn send_as_each_app(addr: SocketAddr, admin: SocketAddr) {
    let http = Http::default();
    let series = |app: u64, outcome: &str| {
        format!("timbridge_app_callbacks_total{{outcome=\"{outcome}\",sdkappid=\"{app}\"}}")
    };
    // Every configured app's series exist before its first callback.
    let (_, before) = http.admin(admin, "/metrics").await;
    for app in [PROD, STAGING] {
        for outcome in ["ok", "rejected", "failed"] {
            assert!(
                before.contains(&format!("{} 0", series(app, outcome))),
                "{app} {outcome}"
            );
        }
    }
    for (app, token, group) in [
        (PROD, "prod-token", "@TGS#prod"),
        (STAGING, "staging-token", "@TGS#staging"),
    ] {
        let answer = http
            .callback(addr, &signed_query(app, token), group_message(group, 1))
            .await;
        assert_ok(&answer);
    }
    // Production's token makes a valid signature, but not for staging.
    let forged = http
        .callback(
            addr,
            &signed_query(STAGING, "prod-token"),
            group_message("@TGS#forged", 1),
        )
        .await;
    assert_fail(&forged, 401, 4011);

    let (_, text) = http.admin(admin, "/metrics").await;
    assert_eq!(metric(&text, &series(PROD, "ok")), 1.0);
    assert_eq!(metric(&text, &series(STAGING, "ok")), 1.0);
    assert_eq!(metric(&text, &series(STAGING, "rejected")), 1.0);
    assert_eq!(metric(&text, &series(PROD, "rejected")), 0.0);
    assert_eq!(
        metric(
            &text,
            &format!("timbridge_signature_failures_total{{sdkappid=\"{STAGING}\"}}")
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apps_on_nats_each_verified_routed_and_counted_as_itself() {
    let _serial = serial().await;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = apps_file(&dir, "nats_subject");
    let bridge = start_bridge(
        &nats,
        &[
            "--config",
            file.to_str().unwrap(),
            "--nats-stream-subjects",
            "tim.>,staging.>",
        ],
    )
    .await;
    send_as_each_app(bridge.addr(), bridge.admin_addr()).await;

    let stored = nats.reader().await.all("TIM").await;
    let routed: Vec<(&str, &str, &str)> = stored
        .iter()
        .map(|m| {
            (
                m.subject.as_str(),
                m.header("tim-sdkappid").unwrap(),
                m.header("tim-group-id").unwrap(),
            )
        })
        .collect();
    let prod_subject = format!("tim.{COMMAND}.{}", partition(b"@TGS#prod", 16));
    let staging_subject = format!("staging.{COMMAND}");
    assert_eq!(
        routed,
        vec![
            (prod_subject.as_str(), "1400000000", "@TGS#prod"),
            (staging_subject.as_str(), "1400000002", "@TGS#staging"),
        ],
        "the forged one is not published"
    );
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apps_on_kafka_each_verified_routed_and_counted_as_itself() {
    let _serial = serial().await;
    let broker = Tansu::start();
    let topics = [format!("tim.{COMMAND}"), format!("staging.{COMMAND}")];
    for topic in &topics {
        broker.create_topic(topic, 16);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = apps_file(&dir, "kafka_topic");
    let bridge =
        kafka::start_bridge(&broker.bootstrap(), &["--config", file.to_str().unwrap()]).await;
    send_as_each_app(bridge.addr(), bridge.admin_addr()).await;

    let bootstrap = broker.bootstrap();
    let records = tokio::task::spawn_blocking(move || {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consume_topics(&bootstrap, &names, 16, 2, Duration::from_secs(30))
    })
    .await
    .unwrap();
    let mut routed: Vec<(String, String, Vec<u8>)> = records
        .iter()
        .map(|r| {
            (
                r.topic.clone(),
                r.header("tim-sdkappid").unwrap().to_owned(),
                r.key.clone(),
            )
        })
        .collect();
    routed.sort();
    assert_eq!(
        routed,
        vec![
            (
                format!("staging.{COMMAND}"),
                "1400000002".to_owned(),
                b"@TGS#staging".to_vec()
            ),
            (
                format!("tim.{COMMAND}"),
                "1400000000".to_owned(),
                b"@TGS#prod".to_vec()
            ),
        ],
        "the forged one is not published"
    );
    bridge.shutdown().await;
}

/// Each app says whether its callbacks are signed: a gauge per configured app, and `other`
/// for any SdkAppid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_app_says_whether_its_callbacks_are_signed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apps.yaml");
    std::fs::write(
        &path,
        format!("apps:\n  - sdkappid: {PROD}\n    token: prod-token\n  - sdkappid: {STAGING}\n    unsigned: true\n"),
    )
    .unwrap();
    let signed = |app: &str| format!("timbridge_app_signed{{sdkappid=\"{app}\"}}");
    let http = Http::default();
    for (flags, expected) in [
        (
            vec!["--config", path.to_str().unwrap()],
            vec![(PROD.to_string(), 1.0), (STAGING.to_string(), 0.0)],
        ),
        (
            vec!["--sdkappid", "1400000000", "--allow-unsigned"],
            vec![(PROD.to_string(), 0.0)],
        ),
        (
            vec!["--sdkappid", "1400000000", "--token", "t"],
            vec![(PROD.to_string(), 1.0)],
        ),
        (
            vec!["--allow-any-sdkappid"],
            vec![("other".to_owned(), 0.0)],
        ),
    ] {
        let bridge = start(&flags).await;
        let (_, text) = http.admin(bridge.admin_addr(), "/metrics").await;
        for (app, value) in expected {
            assert_eq!(metric(&text, &signed(&app)), value, "{flags:?}: {app}");
        }
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("timbridge_app_signed{"))
                .count(),
            if flags[0] == "--config" { 2 } else { 1 },
            "{flags:?}: one series per app"
        );
        bridge.shutdown().await;
    }
}
