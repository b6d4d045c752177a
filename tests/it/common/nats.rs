//! A real nats-server with JetStream on an ephemeral loopback port, and a reader for what the
//! bridge published.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;

pub struct NatsServer {
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
    /// More nats-server flags (e.g. `--max_payload`).
    extra: Vec<String>,
}

impl NatsServer {
    /// Starts `nats-server -js` with file storage in a fresh directory.
    pub fn start() -> NatsServer {
        NatsServer::start_with_args(&[])
    }

    /// The same, with more nats-server flags.
    pub fn start_with_args(extra: &[&str]) -> NatsServer {
        let mut server = NatsServer {
            port: super::free_port(),
            store: tempfile::tempdir().expect("store dir"),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.run();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let binary = which("nats-server");
        let child = Command::new(binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts (install it: apt-get install nats-server)");
        self.child = Some(child);
        super::wait_listening(self.port, "nats-server", Duration::from_secs(10));
    }

    /// Kills the server (SIGKILL: no clean shutdown, as in a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub async fn reader(&self) -> Reader {
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to NATS");
        Reader {
            js: jetstream::new(client),
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(binary: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin"] {
        let path = format!("{dir}/{binary}");
        if Path::new(&path).exists() {
            return path;
        }
    }
    binary.to_owned()
}

/// One stored message.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
}

impl Stored {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Reader {
    js: jetstream::Context,
}

impl Reader {
    /// Messages in the stream (0 when it does not exist).
    pub async fn count(&self, stream: &str) -> u64 {
        match self.js.get_stream(stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Every message of the stream, in stream order.
    pub async fn all(&self, stream: &str) -> Vec<Stored> {
        let mut s = self.js.get_stream(stream).await.expect("stream exists");
        let info = s.info().await.expect("stream info").clone();
        let mut out = Vec::with_capacity(info.state.messages as usize);
        for seq in info.state.first_sequence..=info.state.last_sequence {
            if info.state.messages == 0 {
                break;
            }
            let Ok(message) = s.get_raw_message(seq).await else {
                continue; // deleted
            };
            let headers = message
                .headers
                .iter()
                .flat_map(|(name, values)| {
                    values
                        .iter()
                        .map(move |v| (name.to_string(), v.as_str().to_owned()))
                })
                .collect();
            out.push(Stored {
                subject: message.subject.to_string(),
                headers,
                payload: message.payload,
            });
        }
        out
    }
}

/// The bridge in-process with the NATS sink on `nats` plus `extra` flags (the test app id
/// unless `extra` names the apps); not waiting for readiness.
pub async fn start_bridge_unready(nats: &NatsServer, extra: &[&str]) -> timbridge::Bridge {
    let url = nats.url();
    let mut flags = vec!["--sink", "nats", "--nats-url", &url];
    if !extra
        .iter()
        .any(|f| ["--sdkappid", "--allow-any-sdkappid", "--config"].contains(f))
    {
        flags.extend_from_slice(&["--sdkappid", "1400000000"]);
    }
    flags.extend_from_slice(extra);
    super::start(&flags).await
}

/// As [`start_bridge_unready`], once `/readyz` says 200.
pub async fn start_bridge(nats: &NatsServer, extra: &[&str]) -> timbridge::Bridge {
    let bridge = start_bridge_unready(nats, extra).await;
    super::wait_readyz(bridge.admin_addr(), 200, Duration::from_secs(10)).await;
    bridge
}
