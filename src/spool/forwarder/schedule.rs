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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;
    use crate::spool::frame::tests::record;
    use crate::spool::tests::test_config;

    fn schedule(max_inflight: usize, max_parked: usize) -> (Schedule, Instant) {
        let mut config = test_config(Path::new("unused"));
        config.forward_max_inflight = max_inflight;
        config.forward_max_parked = max_parked;
        config.forward_max_rate = None;
        config.forward_retry_max = Duration::from_secs(1);
        let now = Instant::now();
        (Schedule::new(&config, 0, now), now)
    }

    fn at(seq: u64) -> Location {
        Location {
            segment: 1,
            offset: seq * 100,
        }
    }

    /// Admits the next record, of `key`; the item when it goes out now.
    fn admit(schedule: &mut Schedule, key: &str) -> Option<Item> {
        let seq = schedule.next_read();
        schedule.admit(seq, Arc::new(record(key, seq)), at(seq))
    }

    fn seq_of(next: &Next) -> Option<u64> {
        match next {
            Next::Publish(item) => Some(item.seq),
            Next::ReadBack(parked) => Some(parked.seq),
            Next::Idle => None,
        }
    }

    /// The window counts what is held in memory: `--forward-max-inflight` records read and
    /// not acknowledged, whatever their keys; an acknowledgement makes room for one more.
    #[test]
    fn the_window_holds_forward_max_inflight_records() {
        let (mut schedule, _) = schedule(4, 100);
        let mut admitted = 0;
        while schedule.may_read() {
            admit(&mut schedule, if admitted % 2 == 0 { "a" } else { "b" });
            admitted += 1;
            assert!(admitted <= 10, "the window does not close");
        }
        assert_eq!(admitted, 4);
        assert_eq!(schedule.unacknowledged(), 4);
        // a1 goes out: a3, queued behind it, is next; one more record may be read.
        assert_eq!(seq_of(&schedule.acknowledged(1, "a")), Some(3));
        assert!(schedule.may_read());
        admit(&mut schedule, "c");
        assert!(!schedule.may_read());
    }

    /// A parked key's records leave the window (the other keys keep it) and count against
    /// `--forward-max-parked` instead; past that bound reading stops until they go out.
    #[test]
    fn parked_records_leave_the_window_and_are_bounded() {
        let (mut schedule, _) = schedule(2, 3);
        let a1 = admit(&mut schedule, "a").unwrap();
        assert!(admit(&mut schedule, "a").is_none());
        assert!(!schedule.may_read(), "a window of 2 is full");
        // a1 fails: a2 leaves memory; the window has room again.
        let a1 = schedule.retry(a1);
        assert_eq!((schedule.parked_keys(), schedule.parked_records()), (1, 1));
        assert!(schedule.may_read());
        assert!(admit(&mut schedule, "a").is_none());
        assert!(admit(&mut schedule, "a").is_none());
        assert_eq!(schedule.parked_records(), 3);
        assert!(!schedule.may_read(), "--forward-max-parked reached");
        // a1 goes out: a2 is read back, and reading goes on.
        assert_eq!(seq_of(&schedule.acknowledged(a1.seq, "a")), Some(2));
        assert_eq!(schedule.parked_records(), 2);
        assert!(schedule.may_read());
    }

    /// `--forward-max-rate`: first attempts start one interval apart, and a schedule that fell
    /// behind (no traffic for a while) lends at most a tenth of a second's worth at once.
    #[test]
    fn the_pacer_spaces_publishes_and_bounds_a_burst() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(Some(10), t0);
        let ms = Duration::from_millis;
        assert_eq!(pacer.slot(Duration::ZERO, t0), None);
        assert_eq!(pacer.slot(Duration::ZERO, t0), Some(t0 + ms(100)));
        assert_eq!(pacer.slot(Duration::ZERO, t0), Some(t0 + ms(200)));

        // 10 s idle at 1,000/s: 101 start at once (the burst and the one due now), not 10,000.
        let mut pacer = Pacer::new(Some(1000), t0);
        let later = t0 + Duration::from_secs(10);
        let mut at_once = 0;
        let first_wait = loop {
            match pacer.slot(Duration::ZERO, later) {
                None if at_once < 20_000 => at_once += 1,
                wait => break wait,
            }
        };
        assert_eq!(at_once, 101);
        assert_eq!(first_wait, Some(later + ms(1)));

        // No limit (none given, or 0): everything starts at once.
        for rate in [None, Some(0)] {
            let mut pacer = Pacer::new(rate, t0);
            assert!((0..10_000).all(|_| pacer.slot(Duration::ZERO, t0).is_none()));
        }
    }

    /// A retry waits its backoff, and that wait takes no slot of `--forward-max-rate` from
    /// the records behind it.
    #[test]
    fn a_retry_takes_no_slot_from_the_pace() {
        let mut config = test_config(Path::new("unused"));
        config.forward_max_rate = Some(10);
        let t0 = Instant::now();
        let mut schedule = Schedule::new(&config, 0, t0);
        let a1 = admit(&mut schedule, "a").unwrap();
        assert_eq!(schedule.start(&a1, t0), None);
        let a1 = schedule.retry(a1);
        let backoff = backoff(1, config.forward_retry_max);
        assert_eq!(schedule.start(&a1, t0), Some(t0 + backoff));
        let b2 = admit(&mut schedule, "b").unwrap();
        assert_eq!(
            schedule.start(&b2, t0),
            Some(t0 + Duration::from_millis(100))
        );
    }

    /// The wait before each attempt of one record grows, is capped by `--forward-retry-max`,
    /// and does not outlive the record: the key's next record starts at once.
    #[test]
    fn the_backoff_grows_to_forward_retry_max_and_resets_when_the_record_goes_out() {
        let (mut schedule, t0) = schedule(16, 100);
        let mut a1 = admit(&mut schedule, "a").unwrap();
        assert_eq!(
            schedule.start(&a1, t0),
            None,
            "a first attempt does not wait"
        );
        let mut waits = Vec::new();
        for _ in 0..8 {
            a1 = schedule.retry(a1);
            let start = schedule.start(&a1, t0).expect("a retry waits");
            waits.push(start - t0);
        }
        let ms = Duration::from_millis;
        assert_eq!(
            waits,
            [200, 400, 800, 1000, 1000, 1000, 1000, 1000].map(ms),
            "doubling, capped at --forward-retry-max (1 s here)"
        );
        // Far past any shift: still the cap.
        assert_eq!(backoff(u32::MAX, ms(1000)), ms(1000));

        // a2 was read while a1 was retried (parked); once a1 is out, a2, then a3 (read while
        // a2 was out, so parked too), then a4 (read once a is unparked) start without a wait.
        assert!(admit(&mut schedule, "a").is_none());
        let mut next = schedule.acknowledged(a1.seq, "a");
        for seq in [2, 3] {
            let Next::ReadBack(parked) = next else {
                panic!("a{seq} is parked: {next:?}")
            };
            assert_eq!(parked.seq, seq);
            let item = Item::new(seq, Arc::new(record("a", seq)), parked.at);
            assert_eq!(schedule.start(&item, t0), None);
            if seq == 2 {
                assert!(admit(&mut schedule, "a").is_none());
            }
            next = schedule.acknowledged(seq, "a");
        }
        assert!(matches!(next, Next::Idle));
        let a4 = admit(&mut schedule, "a").expect("a is unparked");
        assert_eq!((a4.seq, a4.attempt), (4, 0));
        assert_eq!(schedule.start(&a4, t0), None);
    }

    /// One key's record refused again and again: its later records wait behind it (parked,
    /// then read back in order), while another key's records go out meanwhile; the position
    /// stays below the retried record until it is out.
    #[test]
    fn a_keys_later_records_wait_for_its_retried_record_and_other_keys_go_on() {
        let (mut schedule, _) = schedule(16, 100);
        let mut a1 = admit(&mut schedule, "a").unwrap();
        assert!(admit(&mut schedule, "a").is_none(), "a2 waits behind a1");
        let b3 = admit(&mut schedule, "b").unwrap();
        a1 = schedule.retry(a1);
        assert!(admit(&mut schedule, "a").is_none(), "a4 waits (parked)");
        assert!(admit(&mut schedule, "b").is_none(), "b5 waits behind b3");
        // b goes on while a1 is retried.
        let Next::Publish(b5) = schedule.acknowledged(b3.seq, "b") else {
            panic!("b5 follows b3")
        };
        a1 = schedule.retry(a1);
        assert!(matches!(schedule.acknowledged(b5.seq, "b"), Next::Idle));
        assert_eq!(schedule.position(), 0, "a1 is not acknowledged");
        // a1 out: a2 and a4, in that order, and nothing of a before them.
        let mut order = Vec::new();
        let mut next = schedule.acknowledged(a1.seq, "a");
        while let Next::ReadBack(parked) = next {
            order.push(parked.seq);
            next = schedule.acknowledged(parked.seq, "a");
        }
        assert!(matches!(next, Next::Idle));
        assert_eq!(order, [2, 4]);
        assert_eq!(schedule.position(), 5);
        assert_eq!(schedule.parked_keys(), 0);
    }

    /// The forwarder's loop against a broker that fails attempts in a fixed pseudo-random
    /// pattern, three keys, a small window: at most one record of a key is in flight, a key's
    /// records start and are acknowledged in sequence order (a retry repeats the same record),
    /// and every record goes out.
    #[test]
    fn per_key_order_holds_under_failures_in_any_order() {
        const RECORDS: u64 = 600;
        let keys = ["a", "b", "c"];
        let (mut schedule, _) = schedule(5, 20);
        let mut inflight: Vec<Item> = Vec::new();
        let mut last_started: HashMap<String, u64> = HashMap::new();
        let mut acknowledged: HashMap<String, Vec<u64>> = HashMap::new();
        let mut read_back = 0;
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut start = |item: Item, inflight: &mut Vec<Item>| {
            let key = item.record.key.clone();
            assert!(
                inflight.iter().all(|other| other.record.key != key),
                "two records of {key} in flight"
            );
            let last = last_started.insert(key.clone(), item.seq).unwrap_or(0);
            assert!(item.seq >= last, "{key}: seq {} after {last}", item.seq);
            inflight.push(item);
        };
        for _ in 0..100_000 {
            while schedule.next_read() <= RECORDS && schedule.may_read() {
                let key = keys[(random() % 3) as usize];
                if let Some(item) = admit(&mut schedule, key) {
                    start(item, &mut inflight);
                }
            }
            if inflight.is_empty() {
                break;
            }
            let item = inflight.swap_remove((random() % inflight.len() as u64) as usize);
            // Key "a" fails two attempts in three, the others one in four.
            let fails = if item.record.key == "a" {
                random() % 3 != 0
            } else {
                random() % 4 == 0
            };
            if fails {
                start(schedule.retry(item), &mut inflight);
                continue;
            }
            let key = item.record.key.clone();
            acknowledged.entry(key.clone()).or_default().push(item.seq);
            match schedule.acknowledged(item.seq, &key) {
                Next::Publish(next) => start(next, &mut inflight),
                Next::ReadBack(parked) => {
                    read_back += 1;
                    let record = Arc::new(record(&key, parked.seq));
                    start(Item::new(parked.seq, record, parked.at), &mut inflight);
                }
                Next::Idle => {}
            }
        }
        assert!(
            inflight.is_empty() && schedule.is_idle(),
            "not every record went out"
        );
        assert!(read_back > 0, "no key was parked: the test shows nothing");
        assert_eq!(schedule.position(), RECORDS);
        let mut all: Vec<u64> = acknowledged.values().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (1..=RECORDS).collect::<Vec<_>>());
        for (key, seqs) in &acknowledged {
            assert!(
                seqs.is_sorted(),
                "{key} acknowledged out of order: {seqs:?}"
            );
        }
    }
}
