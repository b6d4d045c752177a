//! Spooled mode (`--spool-dir DIR`): a callback is answered 200 once it is on stable storage,
//! and forwarded to the broker from there, in per-key order, whatever the broker does
//! meanwhile. The data flow, one file each:
//!
//! ```text
//!  Handler ──deliver(&Record)──▶ Spool (this file): encode the record (frame.rs), bounds
//!     └─ writer.rs: one thread, group commit: write a batch, fdatasync, answer the batch
//!           └─ segment.rs: DIR/<first seq>.seg files, created durable with their directory
//!     └─ forwarder/: the log → Sink, one record in flight per key, retries, a failing key
//!           parked (its records wait on disk, outside the window), on its own runtime
//!           (forward_runtime.rs); reader.rs: the memory tail or the segments, in order;
//!           schedule.rs: what goes out next and when (no I/O);
//!           dead_letters.rs: what the broker can never accept, durable;
//!           position.rs: the acknowledged position, made durable every
//!           --spool-position-interval; then forwarded segments are deleted
//!  start-up: recovery.rs scans the segments (torn tail cut, corrupt records and breaks in
//!           the sequence numbers set aside: sequence.rs is the rule; an unreadable segment
//!           set aside as .seg.unreadable)
//!  fs.rs: every file operation of the above, where tests inject disk faults
//!  forward_all.rs, inspect.rs: the `spool forward` and `spool inspect` commands
//! ```
//!
//! The invariants and the tests that show them are in `docs/spool.md`.

pub mod dead_letters;
pub mod forward_all;
pub mod forward_runtime;
pub mod forwarder;
pub mod frame;
pub mod fs;
pub mod inspect;
pub mod metrics;
pub mod position;
pub mod recovery;
pub mod segment;
pub mod sequence;
pub mod writer;

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::core::deliver::{Ack, Deliver, DeliveryError};
use crate::core::Record;
use forwarder::Forwarder;
use metrics::SpoolMetrics;
use segment::Segment;
use writer::{Append, Msg, Writer};

pub use forward_all::forward_all;

/// The spool's bounds and pace, from the `--spool-*` and `--forward-*` flags.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Segments on disk at most; past it new callbacks get 503 at once.
    pub max_bytes: u64,
    /// One group commit covers at most this many records and bytes.
    pub batch_records: usize,
    pub batch_bytes: usize,
    /// Appends waiting for the writer at most (past it, 503 at once).
    pub queue: usize,
    /// The newest records kept in memory for the forwarder; older ones are read from disk.
    pub memory_bytes: usize,
    /// Records the forwarder has read and not yet had acknowledged, at most (held in memory;
    /// a parked key's records are not counted).
    pub forward_max_inflight: usize,
    /// Records of parked keys (their publish failing) the forwarder tracks by their place on
    /// disk, at most; past it reading stops.
    pub forward_max_parked: usize,
    /// Publishes per second the forwarder starts at most (`None`: no limit).
    pub forward_max_rate: Option<u32>,
    /// The longest wait between two attempts of one record.
    pub forward_retry_max: Duration,
    /// The forwarder's threads run this much nicer than the callbacks' (0–19).
    pub forward_nice: i32,
    /// How often the acknowledged position is made durable.
    pub position_interval: Duration,
    /// The bound on one publish's acknowledgement (`--publish-timeout`).
    pub publish_timeout: Duration,
    /// Callbacks are appended (`serve`); `false` for `spool forward`, which only forwards and
    /// prepares no segment.
    pub appends: bool,
}

impl SpoolConfig {
    /// For `spool forward`: forwarding only, nothing appended.
    pub fn forward_only(dir: PathBuf, publish_timeout: Duration) -> SpoolConfig {
        SpoolConfig {
            dir,
            segment_bytes: 64 << 20,
            max_bytes: u64::MAX,
            batch_records: 1,
            batch_bytes: 1,
            queue: 1,
            memory_bytes: 0,
            forward_max_inflight: 1024,
            forward_max_parked: DEFAULT_MAX_PARKED,
            forward_max_rate: None,
            forward_retry_max: Duration::from_secs(5),
            forward_nice: 0,
            position_interval: Duration::from_millis(200),
            publish_timeout,
            appends: false,
        }
    }
}

/// `--forward-max-parked`'s default: about 50 MB of places on disk.
pub const DEFAULT_MAX_PARKED: usize = 1_000_000;

/// What the request path, the writer and the forwarder share.
pub struct SpoolState {
    pub config: SpoolConfig,
    pub metrics: SpoolMetrics,
    /// Bytes of the live segments and the spare (preallocated: counted in full when created).
    bytes: AtomicU64,
    /// A new segment would pass `--spool-max-bytes`: appends are refused until forwarded
    /// segments are deleted.
    no_room: AtomicBool,
    /// After a full disk, appends are refused at once until this instant (ms since `epoch`).
    full_until_ms: AtomicU64,
    epoch: Instant,
    recovered: AtomicBool,
    /// Cancelled when a write or fsync failed: the process must exit.
    pub fatal: CancellationToken,
    /// The highest durable sequence number.
    pub durable: watch::Sender<u64>,
    /// Set once when the forwarder met a record this build cannot read (a newer build's):
    /// forwarding stops there, the record and everything after it stay in the spool.
    stopped_at: std::sync::OnceLock<(u64, frame::Undecodable)>,
    segments: Mutex<Vec<Segment>>,
    /// The segment being appended to (its first seq) and its durable length: readers never
    /// read past it.
    active: Mutex<(u64, u64)>,
    tail: Mutex<Tail>,
}

impl SpoolState {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn add_bytes(&self, n: u64) {
        let now = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        self.metrics.bytes.set(now as i64);
    }

    /// One atomic read-modify-write (a load, then a subtraction of what was loaded, raced
    /// with the writer's additions); never below zero.
    fn sub_bytes(&self, n: u64) {
        let before = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(n))
            })
            .unwrap_or_else(|b| b);
        self.metrics.bytes.set(before.saturating_sub(n) as i64);
        self.no_room.store(false, Ordering::Relaxed);
    }

    fn has_room(&self) -> bool {
        !self.no_room.load(Ordering::Relaxed)
    }

    pub fn durable_seq(&self) -> u64 {
        *self.durable.borrow()
    }

    fn disk_full(&self) {
        let until = self.epoch.elapsed().as_millis() as u64 + DISK_FULL_PAUSE.as_millis() as u64;
        self.full_until_ms.store(until, Ordering::Relaxed);
    }

    fn is_disk_full(&self) -> bool {
        self.epoch.elapsed().as_millis() as u64 <= self.full_until_ms.load(Ordering::Relaxed)
    }

    /// Forwarding stops for good (in this process) at `seq`, which this build cannot read.
    fn stop_forwarding(&self, seq: u64, why: frame::Undecodable) {
        if self.stopped_at.set((seq, why.clone())).is_ok() {
            tracing::error!(
                seq,
                reason = %why,
                dir = %self.config.dir.display(),
                "spool: forwarding stopped at a record this build cannot read; nothing is skipped: \
                 run the build that wrote it (or a newer one) on this spool"
            );
            self.metrics
                .forward_stopped
                .with_label_values(&[why.label()])
                .set(1);
        }
    }

    /// The record forwarding stopped at, and why.
    pub fn stopped_at(&self) -> Option<&(u64, frame::Undecodable)> {
        self.stopped_at.get()
    }

    fn forwarding_stopped(&self) -> bool {
        self.stopped_at.get().is_some()
    }

    fn lock_segments(&self) -> MutexGuard<'_, Vec<Segment>> {
        self.segments.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How far a reader may read `segment`: its durable length when it is being appended to,
    /// all of it otherwise.
    fn read_limit(&self, first_seq: u64) -> Option<u64> {
        let (active, len) = *self.active.lock().unwrap_or_else(|e| e.into_inner());
        (active == first_seq).then_some(len)
    }

    fn set_active(&self, first_seq: u64, durable_len: u64) {
        *self.active.lock().unwrap_or_else(|e| e.into_inner()) = (first_seq, durable_len);
    }

    fn lock_tail(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// After a full disk, how long appends are refused at once before the writer tries again.
const DISK_FULL_PAUSE: Duration = Duration::from_millis(250);

/// The newest durable records, for the forwarder to take without reading the disk; bounded in
/// bytes (the oldest leave first: they are on disk).
struct Tail {
    records: VecDeque<(u64, Arc<Record>, usize, Location)>,
    bytes: usize,
    max_bytes: usize,
}

impl Tail {
    fn push(&mut self, seq: u64, record: Arc<Record>, bytes: usize, at: Location) {
        self.records.push_back((seq, record, bytes, at));
        self.bytes += bytes;
        while self.bytes > self.max_bytes {
            let Some((_, _, b, _)) = self.records.pop_front() else {
                break;
            };
            self.bytes -= b;
        }
    }

    /// Takes the record `seq` when it is in memory (the writer's sequence numbers are
    /// contiguous but for a refused batch's, whose filler is on disk only), with every older one: the forwarder has them from here on, and the frees
    /// happen on its task, not the writer's thread.
    fn take(&mut self, seq: u64) -> Option<(u64, Arc<Record>, Location)> {
        while let Some((first, _, bytes, _)) = self.records.front() {
            if *first >= seq {
                break;
            }
            self.bytes -= bytes;
            self.records.pop_front();
        }
        let (found, _, _, _) = self.records.front()?;
        if *found != seq {
            return None;
        }
        let (found, record, bytes, at) = self.records.pop_front()?;
        self.bytes -= bytes;
        Some((found, record, at))
    }
}

/// Where a record's frame is on disk: its segment (the segment's first sequence number) and
/// the frame's offset in it. The forwarder reads a parked key's records back from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
}

/// Why the spool could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("spool directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("spool directory {0} is in use by another process (its lock file is held)")]
    Locked(PathBuf),
}

/// Takes `DIR/lock` (held until the file is dropped or unlocked): one process per spool.
pub(crate) fn lock(dir: &std::path::Path) -> Result<File, OpenError> {
    let io = |source| OpenError::Io {
        dir: dir.to_owned(),
        source,
    };
    let lock = File::create(dir.join("lock")).map_err(io)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::Locked(dir.to_owned())),
        Err(std::fs::TryLockError::Error(err)) => Err(io(err)),
    }
}

/// The spooled delivery: `deliver` returns once the record is fsynced; the forwarder takes it
/// from there to `S`.
pub struct Spool<S> {
    state: Arc<SpoolState>,
    appends: mpsc::Sender<Msg>,
    sink: Arc<S>,
    /// Cancelled by `close`: the forwarder catches up (forwards what is durable) and stops.
    finish: CancellationToken,
    stop: CancellationToken,
    /// Resolves when the forwarder has stopped.
    forwarder_done: Mutex<Option<oneshot::Receiver<()>>>,
    /// Held until `close`: a second process cannot take the directory.
    lock: File,
    /// The forwarder's runtime, when it has its own; dropped (shut down) with the spool.
    _runtime: Option<forward_runtime::ForwardRuntime>,
}

impl<S: Deliver> Spool<S> {
    /// Locks `config.dir` (created when missing), then recovers it in the background: until
    /// recovery finished, deliveries are refused and the spool is not ready.
    /// The forwarder runs on `runtime` when given (the sink should have been connected there),
    /// else on the caller's runtime.
    pub fn open(
        config: SpoolConfig,
        sink: S,
        metrics: &SpoolMetrics,
        runtime: Option<forward_runtime::ForwardRuntime>,
    ) -> Result<Spool<S>, OpenError> {
        let io = |source| OpenError::Io {
            dir: config.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&config.dir).map_err(io)?;
        let lock = lock(&config.dir)?;
        let (appends, rx) = mpsc::channel(config.queue.max(1));
        metrics
            .max_bytes
            .set(i64::try_from(config.max_bytes).unwrap_or(i64::MAX));
        let state = Arc::new(SpoolState {
            metrics: metrics.clone(),
            bytes: AtomicU64::new(0),
            no_room: AtomicBool::new(false),
            full_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            recovered: AtomicBool::new(false),
            fatal: CancellationToken::new(),
            durable: watch::Sender::new(0),
            stopped_at: std::sync::OnceLock::new(),
            segments: Mutex::new(Vec::new()),
            active: Mutex::new((0, 0)),
            tail: Mutex::new(Tail {
                records: VecDeque::new(),
                bytes: 0,
                max_bytes: config.memory_bytes,
            }),
            config,
        });
        let sink = Arc::new(sink);
        let mut spool = Spool {
            state: state.clone(),
            appends,
            sink: sink.clone(),
            finish: CancellationToken::new(),
            stop: CancellationToken::new(),
            forwarder_done: Mutex::new(None),
            lock,
            _runtime: None,
        };
        let (done_tx, done_rx) = oneshot::channel();
        *spool
            .forwarder_done
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(done_rx);
        let (finish, stop) = (spool.finish.clone(), spool.stop.clone());
        let forward = async move {
            let started = Instant::now();
            let recovered = {
                let state = state.clone();
                tokio::task::spawn_blocking(move || start(state, rx)).await
            };
            let (position, last_seq, position_file) = match recovered {
                Ok(Ok(resume)) => resume,
                Ok(Err(err)) => {
                    tracing::error!(error = %err, "spool recovery failed: the spool cannot be used");
                    state.fatal.cancel();
                    return;
                }
                Err(err) => {
                    tracing::error!(error = %err, "spool recovery panicked");
                    state.fatal.cancel();
                    return;
                }
            };
            tracing::info!(took = ?started.elapsed(), backlog = last_seq - position, "spool recovered: accepting callbacks");
            state.recovered.store(true, Ordering::Release);
            Forwarder::new(state, sink, position, last_seq, position_file)
                .run(finish, stop)
                .await;
            let _ = done_tx.send(());
        };
        match &runtime {
            Some(runtime) => drop(runtime.handle().spawn(forward)),
            None => drop(tokio::spawn(forward)),
        }
        spool._runtime = runtime;
        Ok(spool)
    }

    pub fn state(&self) -> &Arc<SpoolState> {
        &self.state
    }

    /// Cancelled when the spool failed for good (the process should exit non-zero).
    pub fn fatal(&self) -> CancellationToken {
        self.state.fatal.clone()
    }

    pub fn is_recovered(&self) -> bool {
        self.state.recovered.load(Ordering::Acquire)
    }

    /// The sink the forwarder publishes to.
    pub fn sink(&self) -> &S {
        &self.sink
    }
}

/// Recovery, then the writer's thread; returns the acknowledged position and the last
/// sequence number on disk, where the forwarder starts, and the position file (created now,
/// while there is room for it).
fn start(
    state: Arc<SpoolState>,
    rx: mpsc::Receiver<Msg>,
) -> std::io::Result<(u64, u64, Option<position::PositionFile>)> {
    let dir = state.config.dir.clone();
    let position = position::read(&dir)?;
    let position_file = position::PositionFile::open(&dir, position)
        .inspect_err(|err| tracing::error!(error = %err, "spool: cannot create the position file (tried again at each checkpoint)"))
        .ok();
    let found = recovery::recover(&dir, position)?;
    let bytes: u64 = found
        .segments
        .iter()
        .filter(|s| !s.corrupt)
        .map(Segment::bytes)
        .sum();
    state.add_bytes(bytes);
    state
        .metrics
        .corrupt_segments
        .set(found.corrupt_segments.len() as i64);
    let unreadable = segment::list_unreadable(&dir)?.len();
    state.metrics.unreadable_segments.set(unreadable as i64);
    state.metrics.corrupt_records.inc_by(found.corrupt_records);
    state.metrics.sequence_breaks.inc_by(found.sequence_breaks);
    let last_seq = found.last_seq.max(position);
    tracing::info!(
        dir = %dir.display(),
        segments = found.segments.len(),
        position,
        last_seq,
        unforwarded = found.unforwarded,
        torn_bytes = found.torn_bytes,
        corrupt_records = found.corrupt_records,
        sequence_breaks = found.sequence_breaks,
        "spool recovery scanned the log"
    );
    *state.lock_segments() = found.segments;
    state.durable.send_replace(last_seq);
    state
        .metrics
        .unforwarded
        .set(last_seq.saturating_sub(position) as i64);
    let mut writer = Writer::new(state.clone(), last_seq + 1);
    if state.config.appends {
        // The first segment's file is zeroed before the spool is ready, so that the first
        // append does not wait for it (appending always starts a new segment).
        writer.prepare_spare_now();
    } else {
        let _ = std::fs::remove_file(dir.join(segment::SPARE));
    }
    std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || writer.run(rx))?;
    Ok((position, last_seq, position_file))
}

impl<S: Deliver> Spool<S> {
    /// Appends `record` and waits for its batch's fsync.
    async fn append(&self, mut record: Record) -> Result<Ack, DeliveryError> {
        if !self.is_recovered() {
            return Err(DeliveryError::Unavailable(
                "the spool is still recovering".into(),
            ));
        }
        if self.state.fatal.is_cancelled() {
            return Err(DeliveryError::Unavailable("the spool failed".into()));
        }
        if self.state.is_disk_full() {
            return Err(DeliveryError::Full("the disk is full".into()));
        }
        if !self.state.has_room() {
            return Err(DeliveryError::Full("--spool-max-bytes reached".into()));
        }
        // The memory tail keeps the record: a body of its own, not a view into the
        // connection's read buffer (which would keep kilobytes alive per record, beyond what
        // --spool-memory-bytes counts).
        record.body = Bytes::copy_from_slice(&record.body);
        let frame_len = frame::payload_len(&record) + frame::HEADER_BYTES;
        if frame_len - 8 > frame::MAX_FRAME_BYTES {
            // Start-up bounds the body below this; headers alone cannot reach it.
            return Err(DeliveryError::Rejected(format!(
                "the record ({frame_len} bytes) is larger than a spool frame holds"
            )));
        }
        let (reply, answer) = oneshot::channel();
        let append = Append {
            frame_len,
            record: Arc::new(record),
            reply,
        };
        self.appends
            .try_send(Msg::Append(append))
            .map_err(|_| DeliveryError::Backpressure("the spool's writer queue is full".into()))?;
        match answer.await {
            Ok(Ok(_seq)) => Ok(Ack::STORED),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(DeliveryError::Unavailable("the spool is closed".into())),
        }
    }
}

impl<S: Deliver> Deliver for Spool<S> {
    fn name(&self) -> &'static str {
        "spool"
    }

    async fn deliver(&self, record: &Record) -> Result<Ack, DeliveryError> {
        self.append(record.clone()).await
    }

    async fn deliver_owned(&self, record: Record) -> Result<Ack, DeliveryError> {
        self.append(record).await
    }

    /// Ready while there is room: a broker outage does not matter (that is the point).
    fn is_ready(&self) -> bool {
        self.unready_reason().is_none()
    }

    /// A spool whose forwarder stopped at a newer build's record is not ready: a rollback
    /// during a backlog halts at its first pod, and the pods of the newer build keep serving.
    fn unready_reason(&self) -> Option<&'static str> {
        if !self.is_recovered() {
            Some("spool recovering")
        } else if self.state.fatal.is_cancelled() {
            Some("spool failed")
        } else if self.state.forwarding_stopped() {
            Some("spool forwarding stopped: a record of a newer build's format (see the log)")
        } else if self.state.is_disk_full() {
            Some("spool disk full")
        } else if !self.state.has_room() {
            Some("spool full (--spool-max-bytes)")
        } else {
            None
        }
    }

    fn is_healthy(&self) -> bool {
        !self.state.fatal.is_cancelled()
    }

    /// Commits what is queued, lets the forwarder catch up for at most `timeout`, and leaves
    /// the rest in the log for the next start.
    async fn close(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let (done, closed) = oneshot::channel();
        if self.appends.send(Msg::Close(done)).await.is_ok() {
            let _ = tokio::time::timeout_at(deadline, closed).await;
        }
        self.finish.cancel();
        let forwarder = self
            .forwarder_done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut forwarder) = forwarder {
            if tokio::time::timeout_at(deadline, &mut forwarder)
                .await
                .is_err()
            {
                // Out of time: stop now; the forwarder still makes its position durable.
                self.stop.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(1), forwarder).await;
            }
        }
        self.sink
            .close(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await;
        // Nothing is written any more: the next process (or `spool forward`) may take it.
        if let Err(err) = self.lock.unlock() {
            tracing::warn!(error = %err, "spool: cannot release the lock file");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;

#[cfg(test)]
mod fault_matrix;
