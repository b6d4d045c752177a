//! The `timbridge` binary as an operator runs it: flags, exit codes, the stdout sink, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_timbridge");

#[test]
fn version_and_help_work() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--publish-timeout",
        "--sdkappid",
        "--nats-url",
        "TIMBRIDGE_TOKEN",
    ] {
        assert!(help.contains(flag), "--help mentions {flag}");
    }
}

#[test]
fn configuration_errors_exit_64_with_one_line_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["serve"], "--sdkappid"),
        // An app without a token is served only when the operator says so.
        (&["serve", "--sdkappid", "1400000000"], "--sdkappid"),
        (
            &["serve", "--allow-any-sdkappid", "--max-clock-skew", "301s"],
            "--max-clock-skew",
        ),
        (
            &["serve", "--allow-any-sdkappid", "--publish-timeout", "soon"],
            "--publish-timeout",
        ),
        (
            &["serve", "--allow-any-sdkappid", "--max-body-bytes", "12XB"],
            "--max-body-bytes",
        ),
        (
            &[
                "serve",
                "--allow-any-sdkappid",
                "--sink",
                "nats",
                "--nats-subject",
                "tim.{nope}",
            ],
            "--nats-subject",
        ),
        (
            &[
                "serve",
                "--allow-any-sdkappid",
                "--token-file",
                "/nonexistent/token",
            ],
            "--token-file",
        ),
        (
            &["serve", "--allow-any-sdkappid", "--sink", "carrier-pigeon"],
            "--sink",
        ),
    ];
    // A configuration file's mistake names the file and the key path.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("apps.yaml");
    std::fs::write(
        &file,
        "apps:\n  - sdkappid: 1400000000\n    token: a\n  - sdkappid: 1400000001\n    tokn: b\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let apps_error = format!("{file}: apps[1].tokn: unknown field `tokn`");
    let apps_args = ["serve", "--config", file];
    let cases = [cases, &[(&apps_args[..], apps_error.as_str())]].concat();
    for (args, flag) in &cases {
        let out = Command::new(BIN).args(*args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_sink_writes_one_json_line_per_callback_and_sigterm_exits_0() {
    let port = free_port();
    let admin_port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--allow-any-sdkappid"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    eventually(
        Duration::from_secs(10),
        "the binary to listen",
        || async move { tokio::net::TcpStream::connect(admin).await.ok().map(|_| ()) },
    )
    .await;
    let http = Http::default();
    assert_eq!(http.admin(admin, "/readyz").await.0, 200);

    let fixtures = fixtures();
    for (name, command, body) in &fixtures {
        let answer = http.callback(addr, &query(command), body.clone()).await;
        assert_eq!(answer.status, 200, "{name}");
    }
    let stdout = child.stdout.take().unwrap();
    let expected = fixtures.len();
    let lines: Vec<String> = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .take(expected)
            .map(Result::unwrap)
            .collect()
    })
    .await
    .unwrap();
    // Before-callbacks are published in the background by default (--before-callbacks allow):
    // their lines may come a little later than their answers, so lines are matched by body.
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    for (name, command, body) in &fixtures {
        let v = parsed
            .iter()
            .find(|v| v["body"].as_str().map(str::as_bytes) == Some(body.as_ref()))
            .unwrap_or_else(|| panic!("{name}: a line with its body"));
        assert_eq!(
            v["body"].as_str().unwrap().as_bytes(),
            body.as_ref(),
            "{name}: body byte for byte"
        );
        assert_eq!(
            v["headers"]["tim-callback-command"],
            command.as_str(),
            "{name}"
        );
        assert_eq!(v["headers"]["tim-sdkappid"], "1400000000", "{name}");
        let p = v["partition"].as_u64().unwrap();
        let key = v["key"].as_str().unwrap();
        assert_eq!(
            p,
            u64::from(timbridge::wire::partition(key.as_bytes(), 16)),
            "{name}"
        );
        assert_eq!(
            v["destination"].as_str().unwrap(),
            format!("tim.{command}.{p}"),
            "{name}"
        );
        if command == "Group.CallbackAfterSendMsg" {
            let id = v["headers"]["tim-dedup-id"].as_str().unwrap();
            assert!(id.starts_with("g:1400000000:"), "{name}: {id}");
        }
    }

    // SIGTERM: readiness goes false, the process exits 0.
    let mut child_stderr = child.stderr.take().unwrap();
    crate::common::process::signal_pid(child.id(), "TERM");
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    // Unsigned callbacks are said out loud at start-up.
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child_stderr, &mut stderr).unwrap();
    assert!(
        stderr.contains("WARN") && stderr.contains("accepted unsigned"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_flag_sets_the_runtime_size() {
    // A flag that parses but is never applied is worse than no flag: count the threads.
    for (threads, expected) in [("1", 1), ("3", 3)] {
        let bridge = crate::common::process::BridgeProcess::start(&[
            "--allow-any-sdkappid",
            "--worker-threads",
            threads,
        ])
        .await;
        let tasks = std::fs::read_dir(format!("/proc/{}/task", bridge.pid())).unwrap();
        let workers = tasks
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
            .filter(|name| name.trim() == "tokio-rt-worker")
            .count();
        assert_eq!(workers, expected, "--worker-threads {threads}");
    }
}
