//! The auditor at work: [`Auditor::start`] connects everything the map in `mod.rs` names, then
//! [`Auditor::run`] waits on one event at a time (a record read, a tick, a worker's question or
//! answer, a tail check's result) and calls the one method that handles it. The loop's state
//! is the fields of [`Auditor`] and only the loop touches it: the workers and the tail check
//! ask their questions and send their results over channels, so nothing is locked.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Interval;

use crate::core::deliver::Deliver;
use crate::core::record::header::COMMAND;
use crate::sink::SinkConfig;
use crate::sink::{KafkaSink, NatsSink, Sink};
use crate::tencent::rest::{RestClient, SystemClock};
use crate::wire::RecordBuilder;

use super::backoff::Backoff;
use super::checkpoint::{self, Store};
use super::consume::Observation;
use super::feed::{self, Feed, Read};
use super::metrics::{seen_label, AuditMetrics};
use super::ordered::{self, Consumed, Orderer};
use super::repair::{now_ms, Recheck, Repaired, Repairer};
use super::tail;
use super::tracker::{Eviction, Gap, GroupKey, Seen, Tracker};
use super::verify::{Sample, Verifier};
use super::{AdminStatus, AuditConfig};

/// Checkpoint writes in flight at once.
const SAVE_CONCURRENCY: usize = 64;

/// Seqs one lookup covers at most (50 history pages); a longer gap is looked up in turns,
/// its lowest part first, so a day's outage is repaired step by step and never held in memory.
const MAX_LOOKUP_SEQS: u64 = 1000;

/// How often the gaps due are handed to the workers.
const GAP_INTERVAL: Duration = Duration::from_millis(250);

/// Each app's repair worker, by SdkAppid: the queue of gaps it is to look up.
type Workers = HashMap<u64, mpsc::Sender<Gap>>;

/// Each app's rate-limited REST client, by SdkAppid (the tail check uses them too).
type Clients = HashMap<u64, Arc<RestClient>>;
/// Each app's verification worker (`--verify-sample`); empty when off.
type Verifiers = HashMap<u64, mpsc::Sender<Sample>>;

/// The running auditor: what it read, what it waits for, and where it sends work.
pub struct Auditor {
    config: AuditConfig,
    metrics: AuditMetrics,
    /// `/readyz`: true once the checkpoint is loaded, false again from shutdown.
    ready: Arc<AtomicBool>,
    /// The broker connection the workers publish backfills on; closed at shutdown, after the
    /// last checkpoint.
    sink: Arc<Sink>,
    feed: Feed,
    /// The checkpoint: the tracked groups (and their ordered lines), by group.
    store: Store,
    tracker: Tracker,
    /// The ordered stream, when on.
    orderer: Option<Orderer>,
    /// Changed since the last checkpoint: written by the next one.
    dirty: HashSet<GroupKey>,
    /// Evicted since the last checkpoint: purged from the store by the next one.
    forgotten: Vec<GroupKey>,
    // One lookup per group at a time (the tracker gives each group's lowest gap only); after
    // failed ones the group backs off. Both bounded by the tracked groups: an evicted group is
    // forgotten here too.
    in_flight: HashSet<GroupKey>,
    backoff: Backoff,
    /// The highest seq counted as found, per group: a retry, or the rest of a gap its re-check
    /// narrowed, is not found again.
    counted: HashMap<GroupKey, u64>,
    workers: Workers,
    clients: Clients,
    verifiers: Verifiers,
    /// The workers' questions: what of a queued gap is still missing.
    rechecks: mpsc::Receiver<Recheck>,
    /// The workers' answers: what became of a gap.
    repaired: mpsc::Receiver<Repaired>,
    // A tail check runs off the loop and sends its result here; one at a time.
    tail_tx: mpsc::Sender<Vec<(GroupKey, u64)>>,
    tail_rx: mpsc::Receiver<Vec<(GroupKey, u64)>>,
    tail_running: bool,
    checkpoint_tick: Interval,
    gap_tick: Interval,
    tail_tick: Interval,
    /// The admin listener stops when this is dropped: when the auditor is, however it ends.
    _admin_running: oneshot::Sender<()>,
}

impl Auditor {
    /// Connects the sink, serves the admin endpoints, opens the ordered stream's output, the
    /// feed and the checkpoint store, starts one repair worker per app and loads the
    /// checkpoint; ready from then on.
    pub async fn start(config: AuditConfig) -> Result<Auditor, String> {
        let metrics = AuditMetrics::new();
        let sink = connect(&config, &metrics).await?;
        let ready = Arc::new(AtomicBool::new(false));
        let admin_running = serve_admin(&config, &metrics, &ready).await?;
        // The ordered stream's output first: on Kafka its transactional producer fences an
        // earlier instance (aborting what it left open) before the checkpoint is read, and
        // writes the checkpoint in its transactions.
        let mut orderer = open_orderer(&config, &sink, &metrics).await?;
        let kafka_producer = orderer.as_ref().and_then(Orderer::kafka_producer);
        let (feed, store) = feed::open(&config, &sink, kafka_producer).await?;
        let sink = Arc::new(sink);

        let (done_tx, repaired) = mpsc::channel::<Repaired>(config.max_queued_gaps.max(1));
        // A worker asks one question at a time and waits for the answer: one slot per app.
        let (recheck_tx, rechecks) = mpsc::channel::<Recheck>(config.apps.len().max(1));
        let (workers, clients, verifiers) =
            spawn_workers(&config, &sink, &metrics, recheck_tx, done_tx)?;

        let tracker = restore(&config, &store, &mut orderer).await?;
        tracing::info!(groups = tracker.len(), "audit: checkpoint loaded");
        ready.store(true, Ordering::Relaxed);

        let backoff = Backoff::new(
            u64::try_from(config.retry_max.as_millis()).unwrap_or(u64::MAX),
            config.max_groups,
        );
        let (tail_tx, tail_rx) = mpsc::channel::<Vec<(GroupKey, u64)>>(1);
        let checkpoint_tick = tokio::time::interval(checkpoint_interval(&config));
        let gap_tick = tokio::time::interval(GAP_INTERVAL);
        let mut tail_tick = tokio::time::interval(config.tail_interval);
        // An interval's first tick is at once: the first tail check waits one interval.
        tail_tick.tick().await;
        Ok(Auditor {
            config,
            metrics,
            ready,
            sink,
            feed,
            store,
            tracker,
            orderer,
            dirty: HashSet::new(),
            forgotten: Vec::new(),
            in_flight: HashSet::new(),
            backoff,
            counted: HashMap::new(),
            workers,
            clients,
            verifiers,
            rechecks,
            repaired,
            tail_tx,
            tail_rx,
            tail_running: false,
            checkpoint_tick,
            gap_tick,
            tail_tick,
            _admin_running: admin_running,
        })
    }

    /// Handles one event at a time until `shutdown` resolves, then saves a last checkpoint.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), String> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                // Whatever the ordered stream's output stored: counted, and its next entry
                // started.
                stored = async { self.orderer.as_mut().expect("guarded").stored().await },
                    if self.orderer.as_ref().is_some_and(Orderer::has_pending) => {
                    stored?;
                }
                // While the ordered stream's output is full, nothing more is read.
                next = self.feed.next(), if !self.orderer.as_ref().is_some_and(Orderer::busy) => {
                    self.on_read(next).await?;
                }
                _ = self.checkpoint_tick.tick() => self.on_checkpoint_tick().await?,
                _ = self.gap_tick.tick() => self.on_gap_tick(),
                Some(recheck) = self.rechecks.recv() => self.on_recheck(recheck),
                Some(repaired) = self.repaired.recv() => self.on_repaired(repaired).await?,
                _ = self.tail_tick.tick(), if !self.tail_running => self.on_tail_tick(),
                Some(found) = self.tail_rx.recv() => self.on_tail_found(found),
            }
        }
        self.stop().await
    }

    /// Not ready any more; a last checkpoint, its acknowledgements, and the sink closed.
    async fn stop(mut self) -> Result<(), String> {
        self.ready.store(false, Ordering::Relaxed);
        self.save().await?;
        self.feed.settle().await;
        self.sink.close(Duration::from_secs(5)).await;
        Ok(())
    }

    /// What the feed gave: a record, a consumer error (logged; the feed goes on) or its end
    /// (fatal).
    async fn on_read(&mut self, next: Option<Result<Read, String>>) -> Result<(), String> {
        let Some(next) = next else {
            return Err("the consumer's stream ended".into());
        };
        match next {
            Ok((seen, consumed)) => self.on_record(seen, consumed).await,
            Err(err) => {
                tracing::warn!(error = %err, "audit: consumer error");
                Ok(())
            }
        }
    }

    /// A record read: `seen` is the group message it is, if it is one; `consumed` the record
    /// itself, when the ordered stream is on. A checkpoint when half the acknowledgements the
    /// broker allows are pending.
    async fn on_record(
        &mut self,
        seen: Option<Observation>,
        consumed: Option<Consumed>,
    ) -> Result<(), String> {
        let audited = seen
            .as_ref()
            .is_some_and(|s| self.clients.contains_key(&s.key.sdkappid));
        if let Some(seen) = seen.as_ref() {
            if seen.received_at_ms > 0 {
                self.metrics
                    .lag
                    .set(now_ms().saturating_sub(seen.received_at_ms) as f64 / 1000.0);
            }
        }
        match seen {
            Some(seen) if audited => self.on_group_message(seen, consumed).await?,
            // Not an audited group message: other commands pass through in arrival order
            // (the auditor's own events, which have no command, do not).
            _ => self.pass_through(consumed).await?,
        }
        if self.feed.pending() >= self.config.max_ack_pending / 2 {
            self.save().await?;
        }
        Ok(())
    }

    /// A message of an audited group: to the tracker, then to the ordered stream.
    async fn on_group_message(
        &mut self,
        seen: Observation,
        consumed: Option<Consumed>,
    ) -> Result<(), String> {
        let (kind, evicted) = self.tracker.see(&seen.key, seen.seq, &seen.kind, now_ms());
        if !seen.backfill && kind != Seen::Repeat {
            self.maybe_verify(&seen);
        }
        // The auditor's own backfills come back through the stream: expected.
        if !(seen.backfill && kind == Seen::Repeat) {
            self.metrics
                .seen
                .with_label_values(&[seen_label(kind)])
                .inc();
        }
        if let Some(evicted) = evicted {
            self.forget(evicted, Eviction::Cap).await?;
        }
        if let (Some(orderer), Some(consumed)) = (self.orderer.as_mut(), consumed) {
            orderer.offer(&seen.key, seen.seq, consumed).await?;
        }
        self.dirty.insert(seen.key);
        Ok(())
    }

    /// Sends a share `--verify-sample` of the live group messages to their app's verifier;
    /// never waits for it (a full queue skips the sample, counted).
    fn maybe_verify(&self, seen: &Observation) {
        let Some(verifier) = self.verifiers.get(&seen.key.sdkappid) else {
            return;
        };
        if fastrand::f64() >= self.config.verify_sample {
            return;
        }
        let sample = Sample {
            key: seen.key.clone(),
            seq: seen.seq,
            body: seen.body.clone(),
        };
        if verifier.try_send(sample).is_err() {
            self.metrics.verified("skipped");
        }
    }

    /// Any other record with a command goes to the ordered stream as it came.
    async fn pass_through(&mut self, consumed: Option<Consumed>) -> Result<(), String> {
        if let (Some(orderer), Some(consumed)) = (self.orderer.as_mut(), consumed) {
            if consumed.raw.header(COMMAND).is_some() {
                orderer.pass(consumed).await?;
            }
        }
        Ok(())
    }

    /// A group the tracker evicted: nothing of it is kept in memory, and the next checkpoint
    /// purges it from the store.
    async fn forget(&mut self, key: GroupKey, why: Eviction) -> Result<(), String> {
        self.metrics
            .evicted
            .with_label_values(&[eviction_label(why)])
            .inc();
        self.dirty.remove(&key);
        self.counted.remove(&key);
        self.backoff.forget(&key);
        if let Some(orderer) = self.orderer.as_mut() {
            orderer.forget(&key).await?;
        }
        self.forgotten.push(key);
        Ok(())
    }

    /// Idle groups evicted (not those the ordered stream holds records of), then a checkpoint.
    async fn on_checkpoint_tick(&mut self) -> Result<(), String> {
        let now = now_ms();
        let holds = |key: &GroupKey| self.orderer.as_ref().is_some_and(|o| o.holds(key));
        let idle_ms = self.config.group_idle.as_millis() as u64;
        for key in self.tracker.evict_idle(now, idle_ms, holds) {
            self.forget(key, Eviction::Idle).await?;
        }
        self.metrics.groups.set(self.tracker.len() as i64);
        self.save().await
    }

    /// Every `GAP_INTERVAL`: whether Tencent accepts every app's credentials (`/readyz`), the
    /// ordered stream's holes aged, and the gaps past their grace queued for their app's worker.
    fn on_gap_tick(&mut self) {
        let now = now_ms();
        self.metrics
            .credentials_ok
            .set(i64::from(self.clients.values().all(|c| c.credentials_ok())));
        if let Some(orderer) = self.orderer.as_mut() {
            orderer.tick(now);
            // Too much held in memory: the oldest hole is looked up at once.
            if let Some(key) = orderer.shed() {
                self.tracker.hurry(&key);
            }
        }
        let due = self.tracker.due(now, self.grace_ms(), MAX_LOOKUP_SEQS);
        self.metrics.pending_gaps.set(due.len() as i64);
        self.metrics.backing_off.set(self.backoff.len() as i64);
        for gap in due {
            self.send_for_lookup(gap, now);
        }
    }

    /// Queues `gap` for its app's worker, unless its group has a lookup running or is backing
    /// off, or the worker's queue is full (the next tick tries again).
    fn send_for_lookup(&mut self, gap: Gap, now: u64) {
        if self.in_flight.contains(&gap.key) || self.backoff.waiting(&gap.key, now) {
            return;
        }
        let Some(worker) = self.workers.get(&gap.key.sdkappid) else {
            return;
        };
        if worker.try_send(gap.clone()).is_err() {
            return; // the worker's queue is full: next tick
        }
        self.count_found(&gap);
        self.in_flight.insert(gap.key);
    }

    /// Counts the seqs of a gap sent for a lookup as found, each seq once per group.
    fn count_found(&mut self, gap: &Gap) {
        let counted_to = self.counted.get(&gap.key).copied().unwrap_or(0);
        if gap.last > counted_to {
            let found = gap.last - counted_to.max(gap.first - 1);
            self.metrics
                .gap_seqs
                .with_label_values(&["found"])
                .inc_by(found);
            tracing::info!(sdkappid = gap.key.sdkappid, group = %gap.key.group, first = gap.first,
                last = gap.last, "audit: gap due for a lookup");
            self.counted.insert(gap.key.clone(), gap.last);
        }
    }

    /// A worker asks what of a queued gap is still missing: it waits for this, and the
    /// tracker answers at once.
    fn on_recheck(&self, recheck: Recheck) {
        let Recheck { gap, reply } = recheck;
        let _ = reply.send(self.tracker.still_missing(&gap));
    }

    /// A worker's lookup ended: the gap repaired, or the group's next lookup put off.
    async fn on_repaired(&mut self, repaired: Repaired) -> Result<(), String> {
        let Repaired {
            gap,
            done,
            gone,
            backfilled,
        } = repaired;
        self.in_flight.remove(&gap.key);
        if done {
            self.backoff.succeeded(&gap.key);
            self.tracker
                .resolve(&gap.key, gap.first, gap.last, now_ms());
            if let Some(orderer) = self.orderer.as_mut() {
                for (seq, record, ack) in backfilled {
                    orderer.backfilled(&gap.key, seq, record, ack).await?;
                }
                let skipped: Vec<_> = gone
                    .into_iter()
                    .map(|(seq, why)| (seq, why.into()))
                    .collect();
                orderer.skip(&gap.key, &skipped).await?;
            }
            self.dirty.insert(gap.key);
        } else {
            self.metrics.lookup_failures.inc();
            // A group evicted during its lookup is not tracked, so not kept here either.
            if self.tracker.get(&gap.key).is_some() {
                let wait_ms = self.backoff.failed(&gap.key, now_ms());
                tracing::info!(sdkappid = gap.key.sdkappid, group = %gap.key.group, wait_ms,
                    "audit: the group's next lookup waits");
            }
        }
        self.metrics.backing_off.set(self.backoff.len() as i64);
        Ok(())
    }

    /// Every `--tail-interval`: a tail check of the recently active groups, unless one runs.
    fn on_tail_tick(&mut self) {
        // While the stream is being caught up with, Tencent's latest seq is ahead of what was
        // consumed for no fault: no tail check then.
        if self.metrics.lag.get() * 1000.0 <= self.grace_ms() as f64 {
            let active = self
                .tracker
                .active(now_ms(), self.config.tail_window.as_millis() as u64);
            let clients = self.clients.clone();
            let tail_tx = self.tail_tx.clone();
            self.tail_running = true;
            // Off the loop: its calls wait for the rate limit and may retry.
            tokio::spawn(async move {
                let _ = tail_tx.send(tail::check(active, &clients).await).await;
            });
        }
    }

    /// A tail check's result: each group's latest seq at Tencent.
    fn on_tail_found(&mut self, found: Vec<(GroupKey, u64)>) {
        self.tail_running = false;
        for (key, latest) in found {
            if let Some((first, last)) = self.tracker.tail(&key, latest, now_ms()) {
                tracing::info!(group = %key.group, first, last, "audit: tail gap (Tencent's NextMsgSeq is ahead of the stream)");
                self.dirty.insert(key);
            }
        }
    }

    fn grace_ms(&self) -> u64 {
        self.config.gap_grace.as_millis() as u64
    }

    /// Purges the evicted groups, writes the changed ones, then acknowledges what they include
    /// (in that order: a group evicted and seen again is written after its purge). A failed
    /// write keeps the messages unacknowledged: they are redelivered after a restart, never
    /// lost.
    ///
    /// With the ordered stream, everything handed to its output is stored first, so no
    /// released point is saved ahead of the stream; on Kafka the checkpoint records and the
    /// consumed offsets then commit in the ordered stream's transaction (an error there is
    /// fatal: the auditor restarts from the last commit).
    async fn save(&mut self) -> Result<(), String> {
        if let Some(orderer) = self.orderer.as_mut() {
            orderer.flush().await?;
        }
        let transactional = self.orderer.as_ref().is_some_and(Orderer::is_transactional);
        for key in self.forgotten.drain(..) {
            let _ = self.store.forget(&key).await;
        }
        // The writes go out together (SAVE_CONCURRENCY at a time), not one round trip after
        // another: the loop consumes nothing meanwhile, and the ordered stream's latency is
        // this pause at every checkpoint.
        let entries: Vec<(&GroupKey, Vec<u8>)> = self
            .dirty
            .iter()
            .filter_map(|key| {
                let line = self.orderer.as_ref().and_then(|o| o.line(key));
                Some((key, checkpoint::encode(key, self.tracker.get(key)?, line)))
            })
            .collect();
        let mut entries = entries.into_iter();
        let mut writes = futures_util::stream::FuturesUnordered::new();
        loop {
            while writes.len() < SAVE_CONCURRENCY {
                let Some((key, value)) = entries.next() else {
                    break;
                };
                writes.push(self.store.put(key, value));
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
        self.dirty.clear();
        match self.orderer.as_mut() {
            Some(orderer) if transactional => orderer.commit(self.feed.offsets()).await,
            _ => {
                self.feed.commit().await;
                Ok(())
            }
        }
    }
}

/// The broker the stream is read from and backfills go to.
async fn connect(config: &AuditConfig, metrics: &AuditMetrics) -> Result<Sink, String> {
    match &config.sink {
        SinkConfig::Nats(nats) => Ok(Sink::Nats(
            NatsSink::connect(nats, config.publish_timeout)
                .await
                .map_err(|e| e.to_string())?,
        )),
        // librdkafka's statistics go to the auditor's own registry, which its /metrics serves.
        SinkConfig::Kafka(kafka) => Ok(Sink::Kafka(
            KafkaSink::connect(kafka, config.publish_timeout, metrics.kafka.clone())
                .map_err(|e| e.to_string())?,
        )),
        SinkConfig::Stdout => Err("--sink: the auditor reads NATS or Kafka".into()),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `--admin-listen` until the sender returned
/// is dropped.
async fn serve_admin(
    config: &AuditConfig,
    metrics: &AuditMetrics,
    ready: &Arc<AtomicBool>,
) -> Result<oneshot::Sender<()>, String> {
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| format!("--admin-listen {}: {e}", config.admin_listen))?;
    let (running, stop) = oneshot::channel::<()>();
    tokio::spawn(crate::http::admin::serve(
        admin,
        Arc::new(AdminStatus {
            metrics: metrics.clone(),
            ready: ready.clone(),
        }),
        async {
            let _ = stop.await;
        },
    ));
    Ok(running)
}

/// The ordered stream's orderer over its output, when the stream is on.
async fn open_orderer(
    config: &AuditConfig,
    sink: &Sink,
    metrics: &AuditMetrics,
) -> Result<Option<Orderer>, String> {
    let Some(ordered) = &config.ordered else {
        return Ok(None);
    };
    let js = match sink {
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
    Ok(Some(Orderer::new(output, ordered, metrics.ordered.clone())))
}

/// One repair worker per app with REST credentials, each with the app's REST client (and with
/// `--verify-sample`, a verification worker on the same client); an error when no app has
/// them.
fn spawn_workers(
    config: &AuditConfig,
    sink: &Arc<Sink>,
    metrics: &AuditMetrics,
    recheck_tx: mpsc::Sender<Recheck>,
    done_tx: mpsc::Sender<Repaired>,
) -> Result<(Workers, Clients, Verifiers), String> {
    let builder =
        RecordBuilder::new(config.sink.destination(), config.partitions).with_apps(&config.apps);
    let mut workers = HashMap::new();
    let mut clients = HashMap::new();
    let mut verifiers = HashMap::new();
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
        if config.verify_sample > 0.0 {
            let (tx, rx) = mpsc::channel::<Sample>(config.verify_queue.max(1));
            let verifier = Verifier {
                client: client.clone(),
                sink: sink.clone(),
                event_subject: config.event_subject.clone(),
                partitions: config.partitions,
                metrics: metrics.clone(),
            };
            tokio::spawn(verifier.run(rx));
            verifiers.insert(app.sdkappid, tx);
        }
        workers.insert(app.sdkappid, tx);
        clients.insert(app.sdkappid, client);
    }
    if workers.is_empty() {
        return Err("--config: no app has REST credentials (rest: region, identifier, secret_key); nothing to audit".into());
    }
    Ok((workers, clients, verifiers))
}

/// The tracker, and the ordered stream's lines, as the last checkpoint left this shard's
/// groups.
async fn restore(
    config: &AuditConfig,
    store: &Store,
    orderer: &mut Option<Orderer>,
) -> Result<Tracker, String> {
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
    Ok(tracker)
}

/// On Kafka with the ordered stream, a checkpoint is a transaction's commit: its records are
/// visible to read_committed consumers only then.
fn checkpoint_interval(config: &AuditConfig) -> Duration {
    match config.ordered.as_ref().map(|o| &o.output) {
        Some(ordered::OutputConfig::Kafka {
            commit_interval,
            transactions: true,
            ..
        }) => *commit_interval,
        _ => config.checkpoint_interval,
    }
}

fn eviction_label(eviction: Eviction) -> &'static str {
    match eviction {
        Eviction::Idle => "idle",
        Eviction::Cap => "cap",
    }
}
