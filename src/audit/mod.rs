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
//!  ordered (--ordered-subject / --ordered-topic): every record consumed and every repaired
//!     gap's outcome ──▶ ordered/: each group's seqs once, in order, a message or a marker
//!  checkpoint (every --audit-checkpoint-interval): changed groups (and their ordered lines) to
//!  a KV bucket, then the consumed messages are acknowledged (Kafka with the ordered stream:
//!  one transaction with the ordered records)
//! ```

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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::core::deliver::Deliver;
use crate::http::admin::Status;
use crate::sink::SinkConfig;
use crate::sink::{KafkaSink, NatsSink, Sink};
use crate::tencent::rest::{RestClient, RestConfig, SystemClock};
use crate::wire::apps::App;
use crate::wire::RecordBuilder;
use backoff::Backoff;
use checkpoint::Store;
use feed::Feed;
use metrics::{seen_label, AuditMetrics};
use ordered::{OrderedConfig, Orderer};
use repair::{now_ms, Recheck, Repaired, Repairer};
use tracker::{Eviction, Gap, GroupKey, Seen, Tracker};

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
        crate::wire::partition::partition(group.as_bytes(), partitions) % self.count == self.index
    }
}

/// Runs until `shutdown` resolves; an error when it cannot start.
pub async fn run(
    config: AuditConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let metrics = AuditMetrics::new();
    let sink = match &config.sink {
        SinkConfig::Nats(nats) => Sink::Nats(
            NatsSink::connect(nats, config.publish_timeout)
                .await
                .map_err(|e| e.to_string())?,
        ),
        // librdkafka's statistics go to the auditor's own registry, which its /metrics serves.
        SinkConfig::Kafka(kafka) => Sink::Kafka(
            KafkaSink::connect(kafka, config.publish_timeout, metrics.kafka.clone())
                .map_err(|e| e.to_string())?,
        ),
        SinkConfig::Stdout => return Err("--sink: the auditor reads NATS or Kafka".into()),
    };
    let ready = Arc::new(AtomicBool::new(false));
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| format!("--admin-listen {}: {e}", config.admin_listen))?;
    // The admin listener stops when this function returns, however it returns.
    let (_admin_running, admin_stop) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(crate::http::admin::serve(
        admin,
        Arc::new(AdminStatus {
            metrics: metrics.clone(),
            ready: ready.clone(),
        }),
        async {
            let _ = admin_stop.await;
        },
    ));
    // The ordered stream's output first: on Kafka its transactional producer fences an
    // earlier instance (aborting what it left open) before the checkpoint is read, and writes
    // the checkpoint in its transactions.
    let mut orderer = match &config.ordered {
        Some(ordered) => {
            let js = match &sink {
                Sink::Nats(nats) => Some(nats.jetstream()),
                _ => None,
            };
            let transactional_id = format!("{}-ordered-{}", config.consumer, config.shard.index);
            let output = ordered::open(
                ordered,
                &config.sink,
                js,
                config.partitions,
                &transactional_id,
            )
            .await?;
            Some(Orderer::new(output, ordered, metrics.ordered.clone()))
        }
        None => None,
    };
    let kafka_producer = orderer.as_ref().and_then(Orderer::kafka_producer);
    let (mut feed, store) = feed::open(&config, &sink, kafka_producer).await?;
    let sink = Arc::new(sink);

    let builder =
        RecordBuilder::new(config.sink.destination(), config.partitions).with_apps(&config.apps);
    let (done_tx, mut done_rx) = mpsc::channel::<Repaired>(config.max_queued_gaps.max(1));
    // A worker asks one question at a time and waits for the answer: one slot per app.
    let (recheck_tx, mut recheck_rx) = mpsc::channel::<Recheck>(config.apps.len().max(1));
    let mut workers = HashMap::new();
    let mut clients = HashMap::new();
    for app in &config.apps {
        let Some(credentials) = &app.rest else {
            continue;
        };
        let observer_metrics = metrics.clone();
        let client = RestClient::new(
            app.sdkappid,
            credentials,
            &config.rest,
            Arc::new(SystemClock),
        )
        .map_err(|e| format!("REST client: {e}"))?
        .with_observer(Arc::new(move |command, result| {
            observer_metrics
                .rest_calls
                .with_label_values(&[command, result])
                .inc();
        }));
        let client = Arc::new(client);
        let (tx, rx) = mpsc::channel::<Gap>(config.max_queued_gaps.max(1));
        let repairer = Repairer {
            client: client.clone(),
            sink: sink.clone(),
            builder: builder.clone(),
            event_subject: config.event_subject.clone(),
            partitions: config.partitions,
            metrics: metrics.clone(),
        };
        tokio::spawn(repairer.run(rx, recheck_tx.clone(), done_tx.clone()));
        workers.insert(app.sdkappid, tx);
        clients.insert(app.sdkappid, client);
    }
    if workers.is_empty() {
        return Err("--config: no app has REST credentials (rest: region, identifier, secret_key); nothing to audit".into());
    }

    let mut tracker = Tracker::new(config.max_groups, config.max_pending);
    for (key, state, line) in store.load().await? {
        // Another shard's groups share the store.
        if config.shard.owns(&key.group, config.partitions) {
            if let Some(orderer) = orderer.as_mut() {
                // A group tracked before the ordered stream was on: it starts past what was
                // consumed then.
                let line =
                    line.unwrap_or_else(|| ordered::line::Line::starting_at(state.highest() + 1));
                orderer.restore(key.clone(), line);
            }
            tracker.restore(key, state, now_ms());
        }
    }
    tracing::info!(groups = tracker.len(), "audit: checkpoint loaded");
    ready.store(true, Ordering::Relaxed);

    let mut dirty: HashSet<GroupKey> = HashSet::new();
    let mut forgotten: Vec<GroupKey> = Vec::new();
    // One lookup per group at a time (the tracker gives each group's lowest gap only); after
    // failed ones the group backs off. Both bounded by the tracked groups: an evicted group is
    // forgotten here too.
    let mut in_flight: HashSet<GroupKey> = HashSet::new();
    let mut backoff = Backoff::new(
        u64::try_from(config.retry_max.as_millis()).unwrap_or(u64::MAX),
        config.max_groups,
    );
    // The highest seq counted as found, per group: a retry, or the rest of a gap its re-check
    // narrowed, is not found again.
    let mut counted: HashMap<GroupKey, u64> = HashMap::new();
    let (tail_tx, mut tail_rx) = mpsc::channel::<Vec<(GroupKey, u64)>>(1);
    let mut tail_running = false;
    // On Kafka with the ordered stream, a checkpoint is a transaction's commit: its records
    // are visible to read_committed consumers only then.
    let checkpoint_interval = match config.ordered.as_ref().map(|o| &o.output) {
        Some(ordered::OutputConfig::Kafka {
            commit_interval,
            transactions: true,
            ..
        }) => *commit_interval,
        _ => config.checkpoint_interval,
    };
    let mut checkpoint_tick = tokio::time::interval(checkpoint_interval);
    let mut gap_tick = tokio::time::interval(Duration::from_millis(250));
    let mut tail_tick = tokio::time::interval(config.tail_interval);
    tail_tick.tick().await;
    let grace_ms = config.gap_grace.as_millis() as u64;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // Whatever the ordered stream's output stored: counted, and its next entry started.
            stored = async { orderer.as_mut().expect("guarded").stored().await },
                if orderer.as_ref().is_some_and(Orderer::has_pending) => {
                stored?;
            }
            next = feed.next(), if !orderer.as_ref().is_some_and(Orderer::busy) => {
                let Some(next) = next else { return Err("the consumer's stream ended".into()) };
                let (seen, consumed) = match next {
                    Ok(read) => read,
                    Err(err) => {
                        tracing::warn!(error = %err, "audit: consumer error");
                        continue;
                    }
                };
                let audited = seen.as_ref().is_some_and(|s| clients.contains_key(&s.key.sdkappid));
                if let Some(seen) = seen.as_ref() {
                    if seen.received_at_ms > 0 {
                        metrics.lag.set(now_ms().saturating_sub(seen.received_at_ms) as f64 / 1000.0);
                    }
                }
                match seen {
                    Some(seen) if audited => {
                        let (kind, evicted) = tracker.see(&seen.key, seen.seq, &seen.kind, now_ms());
                        // The auditor's own backfills come back through the stream: expected.
                        if !(seen.backfill && kind == Seen::Repeat) {
                            metrics.seen.with_label_values(&[seen_label(kind)]).inc();
                        }
                        if let Some(evicted) = evicted {
                            metrics.evicted.with_label_values(&["cap"]).inc();
                            dirty.remove(&evicted);
                            counted.remove(&evicted);
                            backoff.forget(&evicted);
                            if let Some(orderer) = orderer.as_mut() {
                                orderer.forget(&evicted).await?;
                            }
                            forgotten.push(evicted);
                        }
                        if let (Some(orderer), Some(consumed)) = (orderer.as_mut(), consumed) {
                            orderer.offer(&seen.key, seen.seq, consumed).await?;
                        }
                        dirty.insert(seen.key);
                    }
                    // Not an audited group message: other commands pass through in arrival
                    // order (the auditor's own events, which have no command, do not).
                    _ => {
                        if let (Some(orderer), Some(consumed)) = (orderer.as_mut(), consumed) {
                            if consumed.raw.header(crate::core::record::header::COMMAND).is_some() {
                                orderer.pass(consumed).await?;
                            }
                        }
                    }
                }
                if feed.pending() >= config.max_ack_pending / 2 {
                    save(&store, &tracker, &mut orderer, &mut dirty, &mut forgotten, &mut feed).await?;
                }
            }
            _ = checkpoint_tick.tick() => {
                let now = now_ms();
                let holds = |key: &GroupKey| orderer.as_ref().is_some_and(|o| o.holds(key));
                for key in tracker.evict_idle(now, config.group_idle.as_millis() as u64, holds) {
                    metrics.evicted.with_label_values(&[eviction_label(Eviction::Idle)]).inc();
                    dirty.remove(&key);
                    counted.remove(&key);
                    backoff.forget(&key);
                    if let Some(orderer) = orderer.as_mut() {
                        orderer.forget(&key).await?;
                    }
                    forgotten.push(key);
                }
                metrics.groups.set(tracker.len() as i64);
                save(&store, &tracker, &mut orderer, &mut dirty, &mut forgotten, &mut feed).await?;
            }
            _ = gap_tick.tick() => {
                let now = now_ms();
                metrics.credentials_ok.set(i64::from(clients.values().all(|c| c.credentials_ok())));
                if let Some(orderer) = orderer.as_mut() {
                    orderer.tick(now);
                    // Too much held in memory: the oldest hole is looked up at once.
                    if let Some(key) = orderer.shed() {
                        tracker.hurry(&key);
                    }
                }
                let due = tracker.due(now, grace_ms, MAX_LOOKUP_SEQS);
                metrics.pending_gaps.set(due.len() as i64);
                metrics.backing_off.set(backoff.len() as i64);
                for gap in due {
                    if in_flight.contains(&gap.key) || backoff.waiting(&gap.key, now) {
                        continue;
                    }
                    let Some(worker) = workers.get(&gap.key.sdkappid) else { continue };
                    if worker.try_send(gap.clone()).is_err() {
                        continue; // the worker's queue is full: next tick
                    }
                    let counted_to = counted.get(&gap.key).copied().unwrap_or(0);
                    if gap.last > counted_to {
                        let found = gap.last - counted_to.max(gap.first - 1);
                        metrics.gap_seqs.with_label_values(&["found"]).inc_by(found);
                        tracing::info!(sdkappid = gap.key.sdkappid, group = %gap.key.group, first = gap.first,
                            last = gap.last, "audit: gap due for a lookup");
                        counted.insert(gap.key.clone(), gap.last);
                    }
                    in_flight.insert(gap.key);
                }
            }
            Some(Recheck { gap, reply }) = recheck_rx.recv() => {
                // The worker waits for this; the tracker answers at once.
                let _ = reply.send(tracker.still_missing(&gap));
            }
            Some(repaired) = done_rx.recv() => {
                let Repaired { gap, done, gone, backfilled } = repaired;
                in_flight.remove(&gap.key);
                if done {
                    backoff.succeeded(&gap.key);
                    tracker.resolve(&gap.key, gap.first, gap.last, now_ms());
                    if let Some(orderer) = orderer.as_mut() {
                        for (seq, record, ack) in backfilled {
                            orderer.backfilled(&gap.key, seq, record, ack).await?;
                        }
                        let skipped: Vec<_> = gone.into_iter().map(|(seq, why)| (seq, why.into())).collect();
                        orderer.skip(&gap.key, &skipped).await?;
                    }
                    dirty.insert(gap.key);
                } else {
                    metrics.lookup_failures.inc();
                    // A group evicted during its lookup is not tracked, so not kept here either.
                    if tracker.get(&gap.key).is_some() {
                        let wait_ms = backoff.failed(&gap.key, now_ms());
                        tracing::info!(sdkappid = gap.key.sdkappid, group = %gap.key.group, wait_ms,
                            "audit: the group's next lookup waits");
                    }
                }
                metrics.backing_off.set(backoff.len() as i64);
            }
            _ = tail_tick.tick(), if !tail_running => {
                // While the stream is being caught up with, Tencent's latest seq is ahead of
                // what was consumed for no fault: no tail check then.
                if metrics.lag.get() * 1000.0 <= grace_ms as f64 {
                    let active = tracker.active(now_ms(), config.tail_window.as_millis() as u64);
                    let clients = clients.clone();
                    let tail_tx = tail_tx.clone();
                    tail_running = true;
                    // Off the loop: its calls wait for the rate limit and may retry.
                    tokio::spawn(async move {
                        let _ = tail_tx.send(tail::check(active, &clients).await).await;
                    });
                }
            }
            Some(found) = tail_rx.recv() => {
                tail_running = false;
                for (key, latest) in found {
                    if let Some((first, last)) = tracker.tail(&key, latest, now_ms()) {
                        tracing::info!(group = %key.group, first, last, "audit: tail gap (Tencent's NextMsgSeq is ahead of the stream)");
                        dirty.insert(key);
                    }
                }
            }
        }
    }
    ready.store(false, Ordering::Relaxed);
    save(
        &store,
        &tracker,
        &mut orderer,
        &mut dirty,
        &mut forgotten,
        &mut feed,
    )
    .await?;
    feed.settle().await;
    sink.close(Duration::from_secs(5)).await;
    Ok(())
}

/// Checkpoint writes in flight at once.
const SAVE_CONCURRENCY: usize = 64;

/// Seqs one lookup covers at most (50 history pages); a longer gap is looked up in turns,
/// its lowest part first, so a day's outage is repaired step by step and never held in memory.
const MAX_LOOKUP_SEQS: u64 = 1000;

fn eviction_label(eviction: Eviction) -> &'static str {
    match eviction {
        Eviction::Idle => "idle",
        Eviction::Cap => "cap",
    }
}

/// Purges the evicted groups, writes the changed ones, then acknowledges what they include (in
/// that order: a group evicted and seen again is written after its purge). A failed write keeps
/// the messages unacknowledged: they are redelivered after a restart, never lost.
///
/// With the ordered stream, everything handed to its output is stored first, so no released
/// point is saved ahead of the stream; on Kafka the checkpoint records and the consumed
/// offsets then commit in the ordered stream's transaction (an error there is fatal: the
/// auditor restarts from the last commit).
async fn save(
    checkpoint: &Store,
    tracker: &Tracker,
    orderer: &mut Option<Orderer>,
    dirty: &mut HashSet<GroupKey>,
    forgotten: &mut Vec<GroupKey>,
    feed: &mut Feed,
) -> Result<(), String> {
    if let Some(orderer) = orderer.as_mut() {
        orderer.flush().await?;
    }
    let transactional = orderer.as_ref().is_some_and(Orderer::is_transactional);
    for key in forgotten.drain(..) {
        let _ = checkpoint.forget(&key).await;
    }
    // The writes go out together (SAVE_CONCURRENCY at a time), not one round trip after
    // another: the loop consumes nothing meanwhile, and the ordered stream's latency is this
    // pause at every checkpoint.
    let entries: Vec<(&GroupKey, Vec<u8>)> = dirty
        .iter()
        .filter_map(|key| {
            let line = orderer.as_ref().and_then(|o| o.line(key));
            Some((key, checkpoint::encode(key, tracker.get(key)?, line)))
        })
        .collect();
    let mut entries = entries.into_iter();
    let mut writes = futures_util::stream::FuturesUnordered::new();
    loop {
        while writes.len() < SAVE_CONCURRENCY {
            let Some((key, value)) = entries.next() else {
                break;
            };
            writes.push(checkpoint.put(key, value));
        }
        let Some(written) = writes.next().await else {
            break;
        };
        if let Err(err) = written {
            if transactional {
                return Err(format!(
                    "checkpoint write in the ordered stream's transaction: {err}"
                ));
            }
            tracing::warn!(error = %err, "audit: checkpoint write failed; acknowledgements held back");
            return Ok(());
        }
    }
    drop(writes);
    dirty.clear();
    match orderer.as_mut() {
        Some(orderer) if transactional => orderer.commit(feed.offsets()).await,
        _ => {
            feed.commit().await;
            Ok(())
        }
    }
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
