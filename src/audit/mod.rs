//! `timbridge audit`: finds the group messages Tencent sent that never reached the stream, and
//! repairs them from Tencent's history. In the order the data flows:
//!
//! ```text
//!  the bridge's stream ──▶ consume (durable pull consumer) ──▶ tracker (per group: contiguous
//!  seq, seqs above it) ──gap past --gap-grace──▶ repair (one worker per app, rate-limited REST;
//!     before a lookup the tracker says what of the gap is still missing; a failed lookup makes
//!     the group back off)
//!     resolve: group_msg_get_simple pages ──▶ backfill: the callback Tencent would have sent,
//!     published like the live one + tim-source: backfill │ settled: system notice, placeholder
//!     │ unrecoverable: an event on --audit-event-subject
//!  tail (every --tail-interval): get_group_info NextMsgSeq for recently active groups
//!  verify (--verify-sample): a share of the live group messages compared with the history
//!  ordered (--ordered-subject / --ordered-topic): every record consumed and every repaired
//!     gap's outcome ──▶ ordered/: each group's seqs once, in order, a message or a marker
//!  checkpoint (every --audit-checkpoint-interval): changed groups (and their ordered lines) to
//!  a KV bucket, then the consumed messages are acknowledged (Kafka with the ordered stream:
//!  one transaction with the ordered records)
//! ```
//!
//! One loop drives these steps: [`auditor::Auditor::start`] connects them and loads the
//! checkpoint, then [`auditor::Auditor::run`] handles one event at a time, a method for each.

pub mod auditor;
pub mod backfill;
pub mod backoff;
pub mod checkpoint;
pub mod consume;
pub mod feed;
pub mod kafka;
pub mod metrics;
pub mod ordered;
pub mod repair;
pub mod resolve;
pub mod tail;
pub mod tracker;
pub mod verify;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::http::admin::Status;
use crate::sink::SinkConfig;
use crate::tencent::rest::RestConfig;
use crate::wire::apps::App;
use auditor::Auditor;
use metrics::AuditMetrics;
use ordered::OrderedConfig;

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub admin_listen: SocketAddr,
    /// Where the stream is read from and backfills go: NATS or Kafka, as the bridge's.
    pub sink: SinkConfig,
    pub publish_timeout: Duration,
    /// Must be the bridge's `--partitions`: a backfill goes where the live record went.
    pub partitions: u32,
    /// The apps audited: those with REST credentials.
    pub apps: Vec<App>,
    pub rest: RestConfig,
    pub consumer: String,
    /// NATS: the key-value bucket of the checkpoint.
    pub state_bucket: String,
    /// Kafka: the (compacted) topic of the checkpoint.
    pub state_topic: String,
    pub event_subject: String,
    pub gap_grace: Duration,
    pub tail_window: Duration,
    pub tail_interval: Duration,
    pub group_idle: Duration,
    pub max_groups: usize,
    pub max_pending: usize,
    pub checkpoint_interval: Duration,
    pub max_ack_pending: usize,
    /// Gaps queued per app for its worker.
    pub max_queued_gaps: usize,
    /// The longest a group waits after failed lookups (the wait doubles from 5 s per failure).
    pub retry_max: Duration,
    /// Which part of the partitions this replica audits.
    pub shard: Shard,
    /// The ordered stream, when on.
    pub ordered: Option<OrderedConfig>,
    /// The share of live group messages compared with Tencent's history (0: none).
    pub verify_sample: f64,
    /// Samples queued per app for its verifier; past it a sample is skipped.
    pub verify_queue: usize,
}

/// `--audit-shard I` of `--audit-shards N`: this replica audits the groups whose partition
/// (`murmur2(GroupId) % --partitions`, the bridge's) is `I` modulo `N`, and reads only those
/// partitions, so replicas split the work without sharing a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// The partitions (of `partitions`) this shard reads.
    pub fn partitions(self, partitions: u32) -> Vec<u32> {
        (0..partitions)
            .filter(|p| p % self.count == self.index)
            .collect()
    }

    pub fn owns(self, group: &str, partitions: u32) -> bool {
        crate::wire::partition(group.as_bytes(), partitions) % self.count == self.index
    }
}

/// Runs until `shutdown` resolves; an error when it cannot start.
pub async fn run(
    config: AuditConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    Auditor::start(config).await?.run(shutdown).await
}

/// What the auditor's `/healthz` and `/readyz` answer (served by the bridge's admin listener):
/// ready once the consumer is attached and while every app's REST credentials are accepted.
struct AdminStatus {
    metrics: AuditMetrics,
    ready: Arc<AtomicBool>,
}

impl Status for AdminStatus {
    fn exposition(&self) -> Vec<u8> {
        self.metrics.encode().into_bytes()
    }

    fn unhealthy(&self) -> Option<&'static str> {
        None
    }

    fn unready(&self) -> Option<&'static str> {
        if !self.ready.load(Ordering::Relaxed) {
            Some("not ready: consumer not attached\n")
        } else if self.metrics.credentials_ok.get() == 0 {
            Some("not ready: Tencent refused an app's REST credentials\n")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The auditor's admin endpoints, as `run` serves them, until the task is aborted.
    async fn serve_admin(listener: tokio::net::TcpListener, ready: bool) {
        let status = AdminStatus {
            metrics: AuditMetrics::new(),
            ready: Arc::new(AtomicBool::new(ready)),
        };
        crate::http::admin::serve(listener, Arc::new(status), std::future::pending()).await
    }

    async fn start_admin(ready: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_admin(listener, ready));
        (addr, server)
    }

    /// One request on its own connection; (status, body).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let status = answer[9..12].parse().unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    #[tokio::test]
    async fn the_admin_listener_answers_readiness_and_metrics() {
        let (addr, server) = start_admin(false).await;
        assert_eq!(get(addr, "/readyz").await.0, 503, "consumer not attached");
        assert_eq!(get(addr, "/healthz").await.0, 200);
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("timbridge_audit_groups "), "{body}");
        server.abort();
        let (addr, server) = start_admin(true).await;
        assert_eq!(get(addr, "/readyz").await.0, 200);
        server.abort();
    }

    /// A connection that never finishes its request head is cut (the admin listener's head
    /// deadline), not held open for ever.
    #[tokio::test]
    async fn the_admin_listener_closes_a_silent_connection() {
        let (addr, server) = start_admin(true).await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await;
        assert!(read.is_ok(), "a half-sent head still open after 10 s");
        server.abort();
    }

    /// A listener whose accept keeps failing (shut down for reading, accept says EINVAL at
    /// once, as it says EMFILE when the process is out of descriptors) must not make the admin
    /// server spin: over half a second, the thread running it stays nearly idle.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "current_thread")]
    #[allow(unsafe_code)]
    async fn the_admin_listener_backs_off_on_accept_errors() {
        use std::os::fd::AsRawFd;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // SAFETY: a plain syscall on a descriptor the listener owns and keeps open.
        assert_eq!(
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) },
            0
        );
        let before = thread_cpu();
        let server = tokio::spawn(serve_admin(listener, true));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let busy = thread_cpu() - before;
        server.abort();
        assert!(
            busy < Duration::from_millis(100),
            "the admin listener spun: {busy:?} of CPU in 500 ms"
        );
    }

    /// CPU time (user and system) of the calling thread.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn thread_cpu() -> Duration {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage fills the struct it is given.
        let usage = unsafe {
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
            usage.assume_init()
        };
        let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
    }
}
