//! What the forwarder publishes next, and when. Bookkeeping only, no I/O: the loop
//! (`forwarder/mod.rs`) reads, publishes and writes, and asks this file at each step.
//!
//! - **Per-key order under retries.** A key (the GroupId, else the account, else the app) has
//!   at most one record in flight; the records read behind it wait in its queue, in sequence
//!   order, while other keys go on.
//! - **The window.** Records read and not yet acknowledged are held in memory, at most
//!   `--forward-max-inflight` of them; a parked key's records are not in it.
//! - **Parked keys.** When a key's record in flight fails, only the places on disk of the
//!   records behind it are kept (at most `--forward-max-parked` over all keys), so that one
//!   stuck key cannot fill the window and stop the others. Once its record goes out they are
//!   read back one at a time, before anything newer of that key.
//! - **The pace.** A retry waits its backoff (doubling from 100 ms up to
//!   `--forward-retry-max`; a record that went out takes its backoff with it, so the key's next
//!   record starts without one); a first attempt takes a slot of `--forward-max-rate`.
//! - **The acknowledged position**: the lowest record still outstanding, less one.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::record::header;
use crate::core::Record;
use crate::spool::{Location, SpoolConfig};

/// A record on its way to the broker.
#[derive(Debug)]
pub struct Item {
    pub seq: u64,
    pub record: Arc<Record>,
    /// Attempts that failed so far; the wait before the next grows with it.
    pub attempt: u32,
    /// Where its frame is, to read it again once its key is parked.
    pub at: Location,
}

impl Item {
    /// A record not tried yet.
    pub fn new(seq: u64, record: Arc<Record>, at: Location) -> Item {
        Item {
            seq,
            record,
            attempt: 0,
            at,
        }
    }
}

/// A record of a parked key: kept on disk only, read again when its turn comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parked {
    pub seq: u64,
    pub at: Location,
}

/// What follows for a key once its record in flight is done with.
#[derive(Debug)]
pub enum Next {
    /// The key's next record, to publish now.
    Publish(Item),
    /// The key's next record is parked: read it back from disk and publish it (or, when it
    /// cannot be read, report it with [`Schedule::unreadable`]).
    ReadBack(Parked),
    /// Nothing of the key is outstanding.
    Idle,
}

pub struct Schedule {
    max_inflight: usize,
    max_parked: usize,
    retry_max: Duration,
    /// The next sequence number to read.
    next_read: u64,
    /// Read and not yet acknowledged.
    outstanding: BTreeSet<u64>,
    /// Keys with a record in flight, and the records queued behind it.
    waiting: HashMap<String, VecDeque<Item>>,
    /// Keys whose record in flight failed (it is retried): the records behind it are not
    /// kept in memory nor counted in the window, only where they are on disk. In sequence
    /// order; the key stays parked until its queue is empty (records read meanwhile join it).
    parked: HashMap<String, VecDeque<Parked>>,
    /// Records in `parked` queues (bounded by `--forward-max-parked`).
    parked_records: usize,
    /// `--forward-max-parked` was reached (logged once per episode).
    parked_full: bool,
    pacer: Pacer,
    /// Received-at (unix ms) of records in flight, for the oldest outstanding record's age.
    received: HashMap<u64, u64>,
}

impl Schedule {
    /// Starts after `position` (acknowledged).
    pub fn new(config: &SpoolConfig, position: u64, now: Instant) -> Schedule {
        Schedule {
            max_inflight: config.forward_max_inflight,
            max_parked: config.forward_max_parked,
            retry_max: config.forward_retry_max,
            next_read: position + 1,
            outstanding: BTreeSet::new(),
            waiting: HashMap::new(),
            parked: HashMap::new(),
            parked_records: 0,
            parked_full: false,
            pacer: Pacer::new(config.forward_max_rate, now),
            received: HashMap::new(),
        }
    }

    /// The next sequence number to read.
    pub fn next_read(&self) -> u64 {
        self.next_read
    }

    /// Everything up to here is acknowledged.
    pub fn position(&self) -> u64 {
        match self.outstanding.first() {
            Some(first) => first - 1,
            None => self.next_read - 1,
        }
    }

    /// Nothing read is unacknowledged.
    pub fn is_idle(&self) -> bool {
        self.outstanding.is_empty()
    }

    /// Records read and not yet acknowledged, parked ones included.
    pub fn unacknowledged(&self) -> usize {
        self.outstanding.len()
    }

    pub fn parked_keys(&self) -> usize {
        self.parked.len()
    }

    pub fn parked_records(&self) -> usize {
        self.parked_records
    }

    /// When the oldest outstanding record was received (unix ms), when known. The lowest
    /// outstanding record is always one in flight (a parked record has an older one of its
    /// key in front of it), and those carry their received-at.
    pub fn oldest_received_ms(&self) -> Option<u64> {
        self.outstanding
            .first()
            .and_then(|seq| self.received.get(seq))
            .copied()
    }

    /// Whether another record may be read: the window (records held in memory) has room and
    /// the parked queues are below `--forward-max-parked`.
    pub fn may_read(&mut self) -> bool {
        if self.outstanding.len() - self.parked_records >= self.max_inflight {
            return false;
        }
        if self.parked_records >= self.max_parked {
            if !self.parked_full {
                tracing::warn!(
                    parked = self.parked_records,
                    "spool: --forward-max-parked reached; reading stops until a parked key's records go out"
                );
                self.parked_full = true;
            }
            return false;
        }
        self.parked_full = false;
        true
    }

    /// The record read next, in sequence order. Returned when it goes out now (its key has
    /// nothing in flight); otherwise it waits behind its key's record in flight.
    pub fn admit(&mut self, seq: u64, record: Arc<Record>, at: Location) -> Option<Item> {
        self.next_read = seq + 1;
        self.outstanding.insert(seq);
        if let Some(queue) = self.parked.get_mut(&record.key) {
            queue.push_back(Parked { seq, at });
            self.parked_records += 1;
            return None;
        }
        let item = Item::new(seq, record, at);
        match self.waiting.get_mut(&item.record.key) {
            Some(queue) => {
                queue.push_back(item);
                None
            }
            None => {
                self.waiting
                    .insert(item.record.key.clone(), VecDeque::new());
                Some(item)
            }
        }
    }

    /// When `item`'s attempt may start (`None`: now): after its backoff when it is a retry,
    /// else at the pacer's next slot. Call it once per attempt, as the attempt is made.
    pub fn start(&mut self, item: &Item, now: Instant) -> Option<Instant> {
        if item.attempt == 0 {
            if let Some(at) = received_at(&item.record) {
                self.received.insert(item.seq, at);
            }
        }
        self.pacer.slot(backoff(item.attempt, self.retry_max), now)
    }

    /// `item`'s attempt failed and it is tried again: its key is parked, so that the records
    /// queued behind it leave memory and the window while it waits.
    pub fn retry(&mut self, mut item: Item) -> Item {
        item.attempt += 1;
        self.park(&item.record.key);
        item
    }

    /// `seq`, the record of `key` in flight, is done with (acknowledged, or a durable dead
    /// letter): what follows for the key.
    pub fn acknowledged(&mut self, seq: u64, key: &str) -> Next {
        self.outstanding.remove(&seq);
        self.received.remove(&seq);
        self.next_of(key)
    }

    /// `seq`, a parked record of `key`, cannot be read back (reported and counted as damage
    /// is): it is passed over, and what follows for the key.
    pub fn unreadable(&mut self, seq: u64, key: &str) -> Next {
        self.outstanding.remove(&seq);
        self.next_of(key)
    }

    /// A parked key goes on with its queue, read back from disk, before anything else.
    fn next_of(&mut self, key: &str) -> Next {
        if let Some(parked) = self.parked.get_mut(key).and_then(VecDeque::pop_front) {
            self.parked_records -= 1;
            return Next::ReadBack(parked);
        }
        if self.parked.remove(key).is_some() {
            tracing::info!(key = %key, "spool: a parked key's records are all out; it is unparked");
        }
        match self.waiting.get_mut(key).and_then(VecDeque::pop_front) {
            Some(next) => Next::Publish(next),
            None => {
                self.waiting.remove(key);
                Next::Idle
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
}

fn received_at(record: &Record) -> Option<u64> {
    record
        .headers
        .iter()
        .find(|(n, _)| *n == header::RECEIVED_AT)
        .and_then(|(_, v)| v.parse().ok())
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
    fn new(per_second: Option<u32>, now: Instant) -> Pacer {
        Pacer {
            interval: per_second
                .filter(|r| *r > 0)
                .map(|r| Duration::from_secs(1) / r),
            next: now,
        }
    }

    /// When a publish that waits `delay` may start; `None`: now. A retry (a delay) does not
    /// take a slot from the records behind it.
    fn slot(&mut self, delay: Duration, now: Instant) -> Option<Instant> {
        if !delay.is_zero() {
            return Some(now + delay);
        }
        let interval = self.interval?;
        // A schedule that fell behind (no traffic) does not build up credit past the burst.
        let earliest = now.checked_sub(PACER_BURST).unwrap_or(now);
        let at = self.next.max(earliest);
        self.next = at + interval;
        (at > now).then_some(at)
    }
}
