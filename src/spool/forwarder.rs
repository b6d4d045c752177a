//! The forwarder: reads the log in order (the recent tail from memory, older records from
//! disk when it is behind), publishes through the sink, and advances the acknowledged position
//! only over contiguously acknowledged records.
//!
//! Per-key order under retries: a key (the GroupId, else the account, else the app) has at
//! most one record in flight; the records behind it wait in its queue, while other keys go on
//! in parallel. Transient errors, and refusals an operator can fix (a missing topic, an ACL),
//! retry the same record with backoff, without limit; only a record the broker can never
//! accept (too large, invalid) goes to the dead-letter file, durably, and the key moves on.
//!
//! A key whose record keeps failing is parked: the records behind it leave memory and the
//! window (only their place on disk is kept) and are read back when it recovers, so one stuck
//! group cannot stop the others.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;

use super::frame::{decode_payload, filler_first};
use super::segment::{self, Reader, Step};
use super::{dead_letters, position, Location, SpoolState};
use crate::core::deliver::{Deliver, DeliveryError};
use crate::core::record::header;
use crate::core::Record;

/// Records read from disk in one trip, at most (also bounded by the free window).
const READ_AHEAD_RECORDS: usize = 256;
/// Body bytes read ahead from disk, at most.
const READ_AHEAD_BYTES: usize = 4 << 20;
/// A record refused for what an operator can fix is logged at its first attempt and then
/// every this many (the counter counts each).
const REFUSAL_LOG_EVERY: u32 = 20;

/// A record on its way to the broker.
struct Item {
    seq: u64,
    record: Arc<Record>,
    attempt: u32,
    /// Where its frame is, to read it again once its key is parked.
    at: Location,
}

/// A record of a parked key: kept on disk only, read again when its turn comes.
struct Parked {
    seq: u64,
    at: Location,
}

struct Done {
    item: Item,
    result: Result<(), DeliveryError>,
}

type Publish = Pin<Box<dyn Future<Output = Done> + Send>>;

pub struct Forwarder<S> {
    state: Arc<SpoolState>,
    sink: Arc<S>,
    /// The next sequence number to read.
    next_read: u64,
    /// Sequence numbers up to this one were on disk at start-up: forwarding them is a replay.
    replay_until: u64,
    /// The position last made durable, and the file it is kept in (opened again when it could
    /// not be at start-up).
    durable_position: u64,
    position_file: Option<position::PositionFile>,
    /// Read and not yet acknowledged.
    outstanding: BTreeSet<u64>,
    /// Keys with a record in flight, and the records queued behind it.
    waiting: HashMap<String, VecDeque<Item>>,
    /// Keys whose record in flight failed (it is retried): the records behind it are not
    /// kept in memory nor counted in the window, only where they are on disk, so one stuck
    /// key cannot fill the window and stop every other key. In sequence order; the key stays
    /// parked until its queue is empty (records read meanwhile join the queue).
    parked: HashMap<String, VecDeque<Parked>>,
    /// Records in `parked` queues (bounded by `--forward-max-parked`).
    parked_records: usize,
    /// `--forward-max-parked` was reached (logged once per episode).
    parked_full: bool,
    inflight: FuturesUnordered<Publish>,
    disk: Option<Cursor>,
    /// Records read from disk ahead of `next_read` (bounded: `READ_AHEAD_*`), and their bytes.
    read_ahead: VecDeque<(u64, Arc<Record>, Location)>,
    read_ahead_bytes: usize,
    pacer: Pacer,
    /// Received-at (unix ms) of outstanding records, for the oldest record's age.
    received: HashMap<u64, u64>,
    /// Nothing more could be read although the durable sequence is ahead (records skipped as
    /// corrupt at the end): caught up all the same.
    dry: bool,
}

/// Where the disk reader is.
struct Cursor {
    first_seq: u64,
    path: std::path::PathBuf,
    reader: Reader,
    /// The next segment's first number: a frame of this one at or past it is out of place.
    ends_before: Option<u64>,
    /// The highest number this pass read (carried from segment to segment): a frame at or
    /// below it is out of place.
    high: Option<u64>,
    /// Frames out of place in this segment so far (the first is logged).
    out_of_place: u64,
}

impl<S: Deliver> Forwarder<S> {
    /// Starts after `position` (acknowledged); records up to `last_seq` were spooled by an
    /// earlier process.
    pub fn new(
        state: Arc<SpoolState>,
        sink: Arc<S>,
        position: u64,
        last_seq: u64,
        position_file: Option<position::PositionFile>,
    ) -> Forwarder<S> {
        Forwarder {
            pacer: Pacer::new(state.config.forward_max_rate),
            next_read: position + 1,
            replay_until: last_seq,
            durable_position: position,
            position_file,
            outstanding: BTreeSet::new(),
            waiting: HashMap::new(),
            parked: HashMap::new(),
            parked_records: 0,
            parked_full: false,
            inflight: FuturesUnordered::new(),
            disk: None,
            read_ahead: VecDeque::new(),
            read_ahead_bytes: 0,
            received: HashMap::new(),
            dry: false,
            sink,
            state,
        }
    }

    /// Forwards until `stop`; once `finish` is cancelled, stops by itself as soon as it has
    /// caught up (everything durable acknowledged).
    pub async fn run(mut self, finish: CancellationToken, stop: CancellationToken) {
        let mut durable = self.state.durable.subscribe();
        let mut tick = tokio::time::interval(self.state.config.position_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.fill();
            if finish.is_cancelled() && self.caught_up() {
                break;
            }
            tokio::select! {
                Some(done) = self.inflight.next(), if !self.inflight.is_empty() => self.completed(done),
                changed = durable.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = tick.tick() => self.checkpoint(),
                _ = finish.cancelled(), if !finish.is_cancelled() => {}
                _ = stop.cancelled() => break,
            }
        }
        self.checkpoint();
        let left = self.state.durable_seq().saturating_sub(self.position());
        if left > 0 {
            tracing::info!(
                records = left,
                "spool: forwarder stopped; the rest is forwarded at the next start"
            );
        }
    }

    /// Nothing in flight and nothing more to read (or nothing more this build can read).
    fn caught_up(&self) -> bool {
        self.outstanding.is_empty()
            && (self.dry
                || self.state.forwarding_stopped()
                || self.next_read > self.state.durable_seq())
    }

    /// Everything up to here is acknowledged.
    fn position(&self) -> u64 {
        match self.outstanding.first() {
            Some(first) => first - 1,
            None => self.next_read - 1,
        }
    }

    /// Reads records while the window has room and durable records are left. The window
    /// counts records held in memory: a parked key's queue is not in it.
    fn fill(&mut self) {
        let max = self.state.config.forward_max_inflight;
        self.dry = false;
        while self.outstanding.len() - self.parked_records < max
            && self.next_read <= self.state.durable_seq()
        {
            if self.parked_records >= self.state.config.forward_max_parked {
                if !self.parked_full {
                    tracing::warn!(
                        parked = self.parked_records,
                        "spool: --forward-max-parked reached; reading stops until a parked key's records go out"
                    );
                    self.parked_full = true;
                }
                break;
            }
            self.parked_full = false;
            let Some((seq, record, at)) = self.read_next() else {
                self.dry = true;
                break;
            };
            tracing::trace!(
                seq,
                want = self.next_read,
                dedup_id = record.dedup_id(),
                "spool: read"
            );
            self.next_read = seq + 1;
            self.outstanding.insert(seq);
            if seq <= self.replay_until {
                self.state.metrics.replayed.inc();
            }
            if let Some(queue) = self.parked.get_mut(&record.key) {
                queue.push_back(Parked { seq, at });
                self.parked_records += 1;
                continue;
            }
            let item = Item {
                seq,
                record,
                attempt: 0,
                at,
            };
            match self.waiting.get_mut(&item.record.key) {
                Some(queue) => queue.push_back(item),
                None => {
                    self.waiting
                        .insert(item.record.key.clone(), VecDeque::new());
                    self.publish(item);
                }
            }
        }
        self.report();
    }

    /// The first record at or after `next_read`: from memory when the tail holds it, else
    /// from what was read ahead from disk, else from disk, a batch at a time (each trip off
    /// the runtime's thread costs a hand-off of the worker: one per record made forwarding a
    /// backlog cost more CPU than the callbacks themselves).
    fn read_next(&mut self) -> Option<(u64, Arc<Record>, Location)> {
        if let Some(found) = self.pop_read_ahead() {
            return Some(found);
        }
        // What was read ahead comes before the record forwarding stopped at; nothing after.
        if self.state.forwarding_stopped() {
            return None;
        }
        if let Some(found) = self.state.lock_tail().take(self.next_read) {
            return Some(found);
        }
        let room = self
            .state
            .config
            .forward_max_inflight
            .saturating_sub(self.outstanding.len())
            .clamp(1, READ_AHEAD_RECORDS);
        let durable = self.state.durable_seq();
        tokio::task::block_in_place(|| {
            let mut want = self.next_read;
            while self.read_ahead.len() < room
                && self.read_ahead_bytes < READ_AHEAD_BYTES
                && want <= durable
            {
                let Some((seq, record, at)) = self.read_disk(want) else {
                    break;
                };
                want = seq + 1;
                self.read_ahead_bytes += record.body.len();
                self.read_ahead.push_back((seq, record, at));
            }
        });
        self.pop_read_ahead()
    }

    /// The next record read ahead at or after `next_read` (older ones are dropped).
    fn pop_read_ahead(&mut self) -> Option<(u64, Arc<Record>, Location)> {
        while let Some((seq, record, at)) = self.read_ahead.pop_front() {
            self.read_ahead_bytes -= record.body.len();
            if seq >= self.next_read {
                return Some((seq, record, at));
            }
        }
        None
    }

    /// The next record at or after `want` on disk. A frame whose number is out of place (at or
    /// below one this pass read already, or at or past where the next segment starts) is not
    /// forwarded: it is counted and logged, and stays in the segment recovery set aside.
    /// Between segments the later frame of a repeated number is forwarded: the writer names a
    /// segment only after every record before it, so an earlier segment's frames past its
    /// successor's name are a refused batch whose numbers an older build gave out again.
    /// Within a segment (which no build ever wrote a number twice into) the first is. Fillers
    /// stand for numbers that hold nothing.
    fn read_disk(&mut self, want: u64) -> Option<(u64, Arc<Record>, Location)> {
        for _ in 0..3 {
            if self.disk.is_none() {
                self.disk = self.open_cursor(want, None);
            }
            let cursor = self.disk.as_mut()?;
            let mut damaged_end = false;
            loop {
                // A record's frame starts where the reader stood (damage is its own step).
                let at = Location {
                    segment: cursor.first_seq,
                    offset: cursor.reader.offset(),
                };
                match cursor.reader.next_step() {
                    Ok(Step::Record { seq, payload }) => {
                        let out_of_place = cursor.high.is_some_and(|high| seq <= high)
                            || cursor.ends_before.is_some_and(|end| seq >= end);
                        if out_of_place {
                            self.state.metrics.out_of_place.inc();
                            if cursor.out_of_place == 0 {
                                tracing::error!(
                                    seq,
                                    after = cursor.high,
                                    next_segment = cursor.ends_before,
                                    segment = %cursor.path.display(),
                                    "spool: a record whose sequence number is out of place is not \
                                     forwarded (the later one of a repeated number is); it stays \
                                     in the segment, which recovery set aside for inspection"
                                );
                            }
                            cursor.out_of_place += 1;
                            continue;
                        }
                        cursor.high = Some(seq);
                        if seq < want || filler_first(seq, &payload).is_some() {
                            // Forwarded already (or from memory), or a filler: no record.
                            continue;
                        }
                        match decode_payload(&payload) {
                            Ok(record) => return Some((seq, Arc::new(record), at)),
                            Err(why) => {
                                // Never skipped: a downgrade during a backlog must not lose
                                // what the newer build answered 200. Forwarding stops here
                                // until a build that reads it takes the spool.
                                self.state.stop_forwarding(seq, why);
                                self.disk = None;
                                return None;
                            }
                        }
                    }
                    Ok(Step::Skipped { .. }) => {}
                    Ok(Step::End { trailing }) => {
                        damaged_end = trailing > 0;
                        break;
                    }
                    Err(err) => {
                        // Tried again at the next fill; `spool forward` reports what is left.
                        tracing::error!(error = %err, segment = %cursor.path.display(), "spool: cannot read a segment");
                        break;
                    }
                }
            }
            // The end of what could be read: more of this segment when it grew since (it was
            // being appended to), else the next segment.
            let (first_seq, offset, path, unwritten) = (
                cursor.first_seq,
                cursor.reader.offset(),
                cursor.path.clone(),
                cursor.reader.at_unwritten(),
            );
            let (high, out_of_place) = (cursor.high, cursor.out_of_place);
            // A later segment means this one is sealed and its length final: look for it first.
            let next = self.next_segment_after(first_seq);
            let limit = match next {
                Some(_) => None,
                None => self.state.read_limit(first_seq),
            };
            // Past the written part of a preallocated segment nothing more is to come.
            let readable = if unwritten {
                offset
            } else {
                std::fs::metadata(&path)
                    .map_or(0, |m| m.len())
                    .min(limit.unwrap_or(u64::MAX))
            };
            // (Damage at a sealed segment's end was reported by recovery: step over it.)
            self.disk = if readable > offset && !(damaged_end && limit.is_none()) {
                Reader::open_at(&path, offset, limit)
                    .ok()
                    .map(|reader| Cursor {
                        first_seq,
                        path,
                        reader,
                        ends_before: next,
                        high,
                        out_of_place,
                    })
            } else {
                match next {
                    Some(next) => self.open_cursor(next.max(want), high),
                    None => return None,
                }
            };
        }
        None
    }

    /// A reader from the start of the segment holding `seq`; `high`: the highest number the
    /// pass read so far (the segment before this one), `None` for a fresh pass.
    fn open_cursor(&self, seq: u64, high: Option<u64>) -> Option<Cursor> {
        let segments = self.state.lock_segments();
        let at = segments
            .iter()
            .rposition(|s| s.first_seq <= seq)
            .unwrap_or(0);
        let segment = segments.get(at)?;
        let ends_before = segments.get(at + 1).map(|s| s.first_seq);
        let reader =
            Reader::open_at(&segment.path, 0, self.state.read_limit(segment.first_seq)).ok()?;
        Some(Cursor {
            first_seq: segment.first_seq,
            path: segment.path.clone(),
            reader,
            ends_before,
            high,
            out_of_place: 0,
        })
    }

    fn next_segment_after(&self, first_seq: u64) -> Option<u64> {
        self.state
            .lock_segments()
            .iter()
            .map(|s| s.first_seq)
            .find(|f| *f > first_seq)
    }

    /// Sends a key's record in flight (the lowest outstanding record is always one: the age
    /// of the oldest comes from these).
    fn publish(&mut self, item: Item) {
        if item.attempt == 0 {
            if let Some(at) = received_at(&item.record) {
                self.received.insert(item.seq, at);
            }
        }
        let sink = self.sink.clone();
        let timeout = self.state.config.publish_timeout;
        let backoff = backoff(item.attempt, self.state.config.forward_retry_max);
        let start = self.pacer.slot(backoff);
        self.inflight.push(Box::pin(async move {
            // No timer when the slot has come (the common case): a sleep would cost a wake-up.
            if let Some(start) = start {
                tokio::time::sleep_until(start.into()).await;
            }
            // A disconnected client would queue the record and send it whenever it reconnects,
            // long after this attempt timed out and the next was made: wait for the broker.
            if !sink.is_ready() {
                let result = Err(DeliveryError::Unavailable("the sink is not ready".into()));
                return Done { item, result };
            }
            let result = match tokio::time::timeout(timeout, sink.deliver(&item.record)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => Err(err),
                Err(_) => Err(DeliveryError::TimedOut),
            };
            Done { item, result }
        }));
    }

    fn completed(&mut self, done: Done) {
        let Done { mut item, result } = done;
        match result {
            Ok(()) => {
                self.state.metrics.forwarded.inc();
                tracing::trace!(
                    seq = item.seq,
                    dedup_id = item.record.dedup_id(),
                    "spool: forwarded"
                );
            }
            Err(DeliveryError::Rejected(why)) => {
                if let Err(err) = self.dead_letter(&item, &why) {
                    // Not durable in the dead-letter file: the record stays where it is and
                    // the position does not pass it; the next attempt tries both again.
                    tracing::error!(error = %err, seq = item.seq, "spool: cannot make the dead letter durable; the record is kept and tried again");
                    self.state.metrics.retries.inc();
                    item.attempt += 1;
                    self.park(&item.record.key);
                    return self.publish(item);
                }
            }
            Err(DeliveryError::Misconfigured(why)) => {
                // Never dropped for what an operator can fix: the record waits (its key only),
                // counted and alerted on; readiness is unchanged.
                if item.attempt.is_multiple_of(REFUSAL_LOG_EVERY) {
                    tracing::error!(seq = item.seq, destination = %item.record.destination, key = %item.record.key, error = %why, attempt = item.attempt, "spool: the broker refuses this destination (a missing topic, an ACL, credentials?); the record waits until it is fixed");
                }
                self.state.metrics.refusals.inc();
                item.attempt += 1;
                self.park(&item.record.key);
                return self.publish(item);
            }
            Err(err) => {
                if item.attempt == 0 {
                    tracing::warn!(seq = item.seq, error = %err, "spool: publish failed; retrying with backoff (the key's later records wait)");
                }
                self.state.metrics.retries.inc();
                item.attempt += 1;
                self.park(&item.record.key);
                return self.publish(item);
            }
        }
        self.outstanding.remove(&item.seq);
        self.received.remove(&item.seq);
        let key = item.record.key.clone();
        // A parked key goes on with its queue, read back from disk, before anything else.
        while let Some(parked) = self.parked.get_mut(&key).and_then(VecDeque::pop_front) {
            self.parked_records -= 1;
            match self.read_parked(&parked) {
                Some(next) => return self.publish(next),
                None => {
                    self.outstanding.remove(&parked.seq);
                }
            }
        }
        if self.parked.remove(&key).is_some() {
            tracing::info!(key = %key, "spool: a parked key's records are all out; it is unparked");
        }
        let next = self.waiting.get_mut(&key).and_then(VecDeque::pop_front);
        match next {
            Some(next) => self.publish(next),
            None => {
                self.waiting.remove(&key);
            }
        }
    }

    /// The key's record in flight failed: the records queued behind it leave memory (they are
    /// on disk) and the window, so that the other keys keep it.
    fn park(&mut self, key: &str) {
        if self.parked.contains_key(key) {
            return;
        }
        let queued = self
            .waiting
            .get_mut(key)
            .map(std::mem::take)
            .unwrap_or_default();
        let queue: VecDeque<Parked> = queued
            .into_iter()
            .map(|item| Parked {
                seq: item.seq,
                at: item.at,
            })
            .collect();
        self.parked_records += queue.len();
        tracing::info!(key = %key, queued = queue.len(), "spool: a key's publish failed; its later records wait on disk (parked) while other keys go on");
        self.parked.insert(key.to_owned(), queue);
    }

    /// A parked record, read back from its place on disk (or, should that fail, found by a
    /// scan of its segment). `None` only when it cannot be read at all: reported and counted,
    /// as damage is.
    fn read_parked(&self, parked: &Parked) -> Option<Item> {
        let path = self
            .state
            .lock_segments()
            .iter()
            .find(|s| s.first_seq == parked.at.segment)
            .map(|s| s.path.clone());
        let found = path.as_ref().and_then(|path| {
            tokio::task::block_in_place(|| {
                segment::read_record_at(path, parked.at.offset, parked.seq)
                    .or_else(|| segment::find_record(path, parked.seq))
            })
        });
        match found.map(|payload| decode_payload(&payload)) {
            Some(Ok(record)) => Some(Item {
                seq: parked.seq,
                record: Arc::new(record),
                attempt: 0,
                at: parked.at,
            }),
            _ => {
                tracing::error!(
                    seq = parked.seq,
                    segment = parked.at.segment,
                    "spool: a parked record cannot be read back from disk; counted as corrupt"
                );
                self.state.metrics.corrupt_records.inc();
                None
            }
        }
    }

    /// A record the broker refuses for good: kept in `DIR/dead-letters.log` (frames, like the
    /// segments) and counted; the key goes on. Durable, file and directory entry, before the
    /// caller lets the position pass it.
    fn dead_letter(&mut self, item: &Item, why: &str) -> std::io::Result<()> {
        let frame = dead_letters::frame(item.seq, &item.record);
        let dir = self.state.config.dir.clone();
        tokio::task::block_in_place(|| dead_letters::append(&dir, &frame))?;
        self.state.metrics.dead_letters.inc();
        tracing::error!(seq = item.seq, destination = %item.record.destination, key = %item.record.key, error = %why, "spool: the broker refuses this record for good; written to dead-letters.log");
        Ok(())
    }

    /// Makes the position durable and deletes the segments wholly behind it.
    fn checkpoint(&mut self) {
        self.report();
        let position = self.position();
        if position <= self.durable_position {
            return;
        }
        let dir = self.state.config.dir.clone();
        let durable = self.durable_position;
        let file = &mut self.position_file;
        let written = tokio::task::block_in_place(|| {
            if file.is_none() {
                *file = Some(position::PositionFile::open(&dir, durable)?);
            }
            file.as_mut().map_or(Ok(()), |f| f.write(position))
        });
        if let Err(err) = written {
            tracing::error!(error = %err, "spool: cannot write the position (segments are kept until it can)");
            return;
        }
        self.durable_position = position;
        let removable: Vec<segment::Segment> = {
            let mut segments = self.state.lock_segments();
            let mut removable = Vec::new();
            // Never the last (active) segment; a segment ends where the next one starts.
            while segments.len() > 1 && segments[1].first_seq <= position + 1 {
                removable.push(segments.remove(0));
            }
            removable
        };
        if removable.is_empty() {
            return;
        }
        // Off the runtime's threads: an unlink of a large file (with online discard, a trim of
        // its blocks) would hold up the callbacks queued on this worker.
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            for segment in removable {
                // A set-aside segment is not counted in --spool-max-bytes (it is kept until an
                // operator deletes it), so nothing is taken off for it either.
                if segment.corrupt {
                    tracing::warn!(segment = %segment.path.display(), "spool: a set-aside segment is forwarded; kept for inspection (delete it by hand)");
                    continue;
                }
                let bytes = segment.bytes();
                if let Err(err) = super::fs::remove_file(&segment.path) {
                    tracing::error!(error = %err, segment = %segment.path.display(), "spool: cannot delete a forwarded segment");
                    continue;
                }
                state.sub_bytes(bytes);
            }
        });
    }

    fn report(&self) {
        let m = &self.state.metrics;
        m.unforwarded
            .set(self.state.durable_seq().saturating_sub(self.position()) as i64);
        let oldest = self.outstanding.first().and_then(|s| self.received.get(s));
        let age = oldest.map_or(0.0, |at| now_ms().saturating_sub(*at) as f64 / 1000.0);
        m.oldest_age.set(age);
        m.bytes.set(self.state.bytes() as i64);
        m.parked_keys.set(self.parked.len() as i64);
        m.parked_records.set(self.parked_records as i64);
    }
}

fn received_at(record: &Record) -> Option<u64> {
    record
        .headers
        .iter()
        .find(|(n, _)| *n == header::RECEIVED_AT)
        .and_then(|(_, v)| v.parse().ok())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 0 for a first attempt, then 100 ms doubling up to `max`.
fn backoff(attempt: u32, max: Duration) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(100)
        .saturating_mul(1 << attempt.min(16))
        .min(max)
}

/// `--forward-max-rate`: publishes start at most this often on average (a returning broker is
/// not hit by the whole backlog at once), with bursts of up to a tenth of a second's worth.
struct Pacer {
    interval: Option<Duration>,
    next: Instant,
}

/// How far the pacer lets publishes run ahead of its schedule (a burst).
const PACER_BURST: Duration = Duration::from_millis(100);

impl Pacer {
    fn new(per_second: Option<u32>) -> Pacer {
        Pacer {
            interval: per_second
                .filter(|r| *r > 0)
                .map(|r| Duration::from_secs(1) / r),
            next: Instant::now(),
        }
    }

    /// When a publish that waits `delay` may start; `None`: now. A retry (a delay) does not
    /// take a slot from the records behind it.
    fn slot(&mut self, delay: Duration) -> Option<Instant> {
        if !delay.is_zero() {
            return Some(Instant::now() + delay);
        }
        let interval = self.interval?;
        let now = Instant::now();
        // A schedule that fell behind (no traffic) does not build up credit past the burst.
        let earliest = now.checked_sub(PACER_BURST).unwrap_or(now);
        let at = self.next.max(earliest);
        self.next = at + interval;
        (at > now).then_some(at)
    }
}
