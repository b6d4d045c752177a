//! The forwarder: reads the log in order, publishes through the sink, and advances the
//! acknowledged position only over contiguously acknowledged records. Its two jobs, one file
//! each, and this file's loop between them:
//!
//! ```text
//!  reader.rs    LogReader: the records in sequence order (the memory tail, or the segments
//!               when behind); a parked record read back; damage and newer builds' records
//!  schedule.rs  Schedule: what goes out next and when (per-key order, the window, parked
//!               keys, retry backoff, --forward-max-rate), and the acknowledged position;
//!               bookkeeping only, no I/O
//!  mod.rs       the loop: read while the schedule has room, publish (one future per record
//!               in flight), hand each outcome to the schedule; dead letters; the checkpoint
//!               (the position made durable, forwarded segments deleted)
//! ```
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

mod reader;
mod schedule;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{dead_letters, position, segment, SpoolState};
use crate::core::deliver::{Deliver, DeliveryError};
use reader::LogReader;
use schedule::{Item, Next, Schedule};

/// A record refused for what an operator can fix is logged at its first attempt and then
/// every this many (the counter counts each).
const REFUSAL_LOG_EVERY: u32 = 20;

struct Done {
    item: Item,
    result: Result<(), DeliveryError>,
}

type Publish = Pin<Box<dyn Future<Output = Done> + Send>>;

pub struct Forwarder<S> {
    state: Arc<SpoolState>,
    sink: Arc<S>,
    reader: LogReader,
    schedule: Schedule,
    inflight: FuturesUnordered<Publish>,
    /// Sequence numbers up to this one were on disk at start-up: forwarding them is a replay.
    replay_until: u64,
    /// The position last made durable, and the file it is kept in (opened again when it could
    /// not be at start-up).
    durable_position: u64,
    position_file: Option<position::PositionFile>,
    /// Nothing more could be read although the durable sequence is ahead (records skipped as
    /// corrupt at the end): caught up all the same.
    dry: bool,
    /// Deletions of forwarded segments still running: the forwarder ends only after them, so
    /// that a closed spool touches its directory no more (the next one may open it at once).
    deleting: Vec<tokio::task::JoinHandle<()>>,
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
            reader: LogReader::new(state.clone()),
            schedule: Schedule::new(&state.config, position, Instant::now()),
            inflight: FuturesUnordered::new(),
            replay_until: last_seq,
            durable_position: position,
            position_file,
            dry: false,
            deleting: Vec::new(),
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
        for deletion in self.deleting.drain(..) {
            let _ = deletion.await;
        }
        let left = self
            .state
            .durable_seq()
            .saturating_sub(self.schedule.position());
        if left > 0 {
            tracing::info!(
                records = left,
                "spool: forwarder stopped; the rest is forwarded at the next start"
            );
        }
    }

    /// Nothing in flight and nothing more to read (or nothing more this build can read).
    fn caught_up(&self) -> bool {
        self.schedule.is_idle()
            && (self.dry
                || self.state.forwarding_stopped()
                || self.schedule.next_read() > self.state.durable_seq())
    }

    /// Reads records while the schedule has room for them and durable records are left, and
    /// publishes those whose key has nothing in flight.
    fn fill(&mut self) {
        self.dry = false;
        while self.schedule.next_read() <= self.state.durable_seq() && self.schedule.may_read() {
            let want = self.schedule.next_read();
            let room = self
                .state
                .config
                .forward_max_inflight
                .saturating_sub(self.schedule.unacknowledged());
            let Some((seq, record, at)) = self.reader.next(want, room) else {
                self.dry = true;
                break;
            };
            tracing::trace!(seq, want, dedup_id = record.dedup_id(), "spool: read");
            if seq <= self.replay_until {
                self.state.metrics.replayed.inc();
            }
            if let Some(item) = self.schedule.admit(seq, record, at) {
                self.publish(item);
            }
        }
        self.report();
    }

    /// Sends a key's record in flight, when the schedule lets it start.
    fn publish(&mut self, item: Item) {
        let sink = self.sink.clone();
        let timeout = self.state.config.publish_timeout;
        let start = self.schedule.start(&item, Instant::now());
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

    /// A publish's outcome: the record is done with (acknowledged, or a durable dead letter)
    /// and its key goes on, or it is tried again.
    fn completed(&mut self, done: Done) {
        let Done { item, result } = done;
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
                    return self.retry(item);
                }
            }
            Err(DeliveryError::Misconfigured(why)) => {
                // Never dropped for what an operator can fix: the record waits (its key only),
                // counted and alerted on; readiness is unchanged.
                if item.attempt.is_multiple_of(REFUSAL_LOG_EVERY) {
                    tracing::error!(seq = item.seq, destination = %item.record.destination, key = %item.record.key, error = %why, attempt = item.attempt, "spool: the broker refuses this destination (a missing topic, an ACL, credentials?); the record waits until it is fixed");
                }
                self.state.metrics.refusals.inc();
                return self.retry(item);
            }
            Err(err) => {
                if item.attempt == 0 {
                    tracing::warn!(seq = item.seq, error = %err, "spool: publish failed; retrying with backoff (the key's later records wait)");
                }
                self.state.metrics.retries.inc();
                return self.retry(item);
            }
        }
        let key = item.record.key.clone();
        let mut next = self.schedule.acknowledged(item.seq, &key);
        loop {
            next = match next {
                Next::Publish(item) => return self.publish(item),
                Next::ReadBack(parked) => match self.reader.read_back(parked.seq, parked.at) {
                    Some(record) => return self.publish(Item::new(parked.seq, record, parked.at)),
                    None => self.schedule.unreadable(parked.seq, &key),
                },
                Next::Idle => return,
            };
        }
    }

    /// The record is tried again, after its backoff; its key is parked meanwhile.
    fn retry(&mut self, item: Item) {
        let item = self.schedule.retry(item);
        self.publish(item);
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
        let position = self.schedule.position();
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
        self.deleting.retain(|deletion| !deletion.is_finished());
        self.deleting.push(tokio::task::spawn_blocking(move || {
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
        }));
    }

    fn report(&self) {
        let m = &self.state.metrics;
        m.unforwarded.set(
            self.state
                .durable_seq()
                .saturating_sub(self.schedule.position()) as i64,
        );
        let oldest = self.schedule.oldest_received_ms();
        let age = oldest.map_or(0.0, |at| now_ms().saturating_sub(at) as f64 / 1000.0);
        m.oldest_age.set(age);
        m.bytes.set(self.state.bytes() as i64);
        m.parked_keys.set(self.schedule.parked_keys() as i64);
        m.parked_records.set(self.schedule.parked_records() as i64);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
