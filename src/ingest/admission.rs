//! Admission control: what keeps the bridge bounded when Tencent sends more than the broker
//! takes. A callback is admitted only while
//! - fewer than `--max-inflight` requests are being processed,
//! - the bodies held in memory stay under `--max-inflight-bytes`, and those of one client
//!   address under `--max-peer-inflight-bytes` (so that one peer's slow requests cannot take
//!   the whole budget from the others), and
//! - the broker is answering: no publish has waited longer than `--max-ack-latency` for its
//!   acknowledgement, and, after a publish timed out, until the broker answers one again, only
//!   one publish at a time probes it.
//!
//! Otherwise it is refused at once with 503: a fast refusal costs Tencent nothing, while
//! queueing would grow memory and answer late anyway (and a late answer is a lost message).
//!
//! The broker's health is judged from what is pending now, not from an average of what
//! completed: when a stalled broker resumes, its pending acks arrive at once and the verdict
//! clears with them, so the bridge answers 200 again within moments; a broker that stays slow is
//! shed as soon as its oldest pending publish passes the bound.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Rejection;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_inflight: usize,
    pub max_inflight_bytes: usize,
    /// Body bytes one client address may hold at once.
    pub max_peer_inflight_bytes: usize,
    /// `None`: never shed on the broker's slowness.
    pub max_ack_latency: Option<Duration>,
    /// The longest a publish can be pending (the publish deadline).
    pub publish_timeout: Duration,
}

pub struct Admission {
    limits: Limits,
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    peers: Arc<PeerBytes>,
    pending: Pending,
}

/// Held while a request is processed; releases its share of the bounds when dropped.
pub struct Admitted {
    _request: OwnedSemaphorePermit,
    bytes: Option<OwnedSemaphorePermit>,
    /// This request's share of its client's bytes: the client's bucket and how much.
    peer: Option<(Arc<PeerBytes>, usize, usize)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((peers, bucket, held)) = self.peer.take() {
            peers.give(bucket, held);
        }
    }
}

/// The body bytes each client address holds, in buckets picked by a keyed hash of the address
/// (fixed memory whatever the number of clients; two addresses sharing a bucket share its
/// bound, and the per-process key keeps anyone from choosing to share Tencent's).
struct PeerBytes {
    max: usize,
    buckets: Box<[AtomicUsize]>,
    keys: std::collections::hash_map::RandomState,
}

const PEER_BUCKETS: usize = 4096;

impl PeerBytes {
    fn bucket(&self, ip: IpAddr) -> usize {
        (self.keys.hash_one(ip.to_canonical()) as usize) % self.buckets.len()
    }

    /// Takes `n` bytes of the bucket's bound, or nothing when they do not fit.
    fn take(&self, bucket: usize, n: usize) -> bool {
        self.buckets[bucket]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(n).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    fn give(&self, bucket: usize, n: usize) {
        self.buckets[bucket].fetch_sub(n, Ordering::Relaxed);
    }
}

impl Admission {
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            requests: Arc::new(Semaphore::new(limits.max_inflight)),
            bytes: Arc::new(Semaphore::new(limits.max_inflight_bytes)),
            peers: Arc::new(PeerBytes {
                max: limits.max_peer_inflight_bytes,
                buckets: (0..PEER_BUCKETS).map(|_| AtomicUsize::new(0)).collect(),
                keys: Default::default(),
            }),
            pending: Pending::new(limits.publish_timeout),
        }
    }

    /// Takes a request slot, or refuses at once.
    pub fn admit(&self) -> Result<Admitted, Rejection> {
        let request = self
            .requests
            .clone()
            .try_acquire_owned()
            .map_err(|_| Rejection::Overloaded("too many requests in flight"))?;
        Ok(Admitted {
            _request: request,
            bytes: None,
            peer: None,
        })
    }

    /// Reserves memory for `len` more body bytes from `client` (the whole declared length at
    /// once, or a chunked body's bytes as they arrive), or refuses at once.
    pub fn reserve_body(
        &self,
        admitted: &mut Admitted,
        client: IpAddr,
        len: usize,
    ) -> Result<(), Rejection> {
        let len = len.max(1);
        let bucket = match &admitted.peer {
            Some((_, bucket, _)) => *bucket,
            None => self.peers.bucket(client),
        };
        if !self.peers.take(bucket, len) {
            return Err(Rejection::Overloaded(
                "this client holds --max-peer-inflight-bytes of bodies in flight",
            ));
        }
        let share = admitted
            .peer
            .get_or_insert_with(|| (self.peers.clone(), bucket, 0));
        share.2 += len;
        let permits = u32::try_from(len).unwrap_or(u32::MAX);
        let permit = self
            .bytes
            .clone()
            .try_acquire_many_owned(permits)
            .map_err(|_| Rejection::Overloaded("too many body bytes in flight"))?;
        match &mut admitted.bytes {
            Some(held) => held.merge(permit),
            None => admitted.bytes = Some(permit),
        }
        Ok(())
    }

    /// Refuses when the delivery (the broker in direct mode, the spool's fsync in spooled
    /// mode) is not acknowledging in time for a new callback to be answered.
    pub fn check_delivery(&self) -> Result<(), Rejection> {
        match self.slow_delivery() {
            Some(why) => Err(Rejection::Backpressure(why.into())),
            None => Ok(()),
        }
    }

    fn slow_delivery(&self) -> Option<&'static str> {
        let max = self.limits.max_ack_latency?;
        if self.pending.oldest_age() > max {
            Some("a callback has waited longer than --max-ack-latency for its delivery's ack")
        } else if self.pending.degraded.load(Ordering::Relaxed) && self.pending.outstanding() > 0 {
            Some("a delivery timed out; probing with one callback at a time")
        } else {
            None
        }
    }

    /// Counts a publish as pending until the guard is dropped (answered, failed or cancelled
    /// by the publish deadline).
    pub fn publishing(&self) -> PendingGuard<'_> {
        self.pending.start()
    }

    /// What the broker said: an ack (any, however late) shows it answers again; a timeout
    /// that it does not.
    pub fn record(&self, acked: bool, timed_out: bool) {
        if acked {
            self.pending.degraded.store(false, Ordering::Relaxed);
        } else if timed_out {
            self.pending.degraded.store(true, Ordering::Relaxed);
        }
    }

    /// New callbacks are refused because acknowledgements are slow.
    pub fn delivery_slow(&self) -> bool {
        self.slow_delivery().is_some()
    }

    /// At a bound: new callbacks would be refused now.
    pub fn is_saturated(&self) -> bool {
        self.requests.available_permits() == 0 || self.delivery_slow()
    }

    pub fn inflight_bytes(&self) -> usize {
        self.limits.max_inflight_bytes - self.bytes.available_permits()
    }

    /// How long the oldest pending publish has waited for its ack (zero when none is pending).
    pub fn ack_latency(&self) -> Duration {
        self.pending.oldest_age()
    }
}

/// Buckets of the pending-publish ring. Lock-free: starting and ending a publish is one atomic
/// add on its start time's bucket, and the oldest pending one is a scan of 64 counters.
const BUCKETS: usize = 64;

/// Publishes awaiting their acknowledgement, counted by when they started in a ring of time
/// buckets. A publish never outlives the publish deadline, and the ring spans that plus a
/// second, so a bucket with a count holds publishes of exactly one ring turn.
struct Pending {
    origin: Instant,
    width_ms: u64,
    buckets: Box<[AtomicU64]>,
    /// Set by a timeout, cleared by an ack.
    degraded: AtomicBool,
}

pub struct PendingGuard<'a> {
    pending: &'a Pending,
    bucket: usize,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.buckets[self.bucket].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pending {
    fn new(publish_timeout: Duration) -> Pending {
        let span_ms = u64::try_from((publish_timeout + Duration::from_secs(1)).as_millis())
            .unwrap_or(u64::MAX / 2);
        Pending {
            origin: Instant::now(),
            width_ms: span_ms.div_ceil(BUCKETS as u64 - 1).max(5),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            degraded: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX / 2)
    }

    fn start(&self) -> PendingGuard<'_> {
        let bucket = ((self.now_ms() / self.width_ms) % BUCKETS as u64) as usize;
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        PendingGuard {
            pending: self,
            bucket,
        }
    }

    fn outstanding(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn oldest_age(&self) -> Duration {
        self.oldest_age_at(self.now_ms())
    }

    /// The age of the oldest pending publish, counted from the end of its bucket (so never
    /// more than its true age).
    fn oldest_age_at(&self, now_ms: u64) -> Duration {
        let current = now_ms / self.width_ms;
        for back in (0..BUCKETS as u64).rev() {
            let Some(absolute) = current.checked_sub(back) else {
                continue;
            };
            let bucket = (absolute % BUCKETS as u64) as usize;
            if self.buckets[bucket].load(Ordering::Relaxed) > 0 {
                let bucket_end = (absolute + 1) * self.width_ms;
                return Duration::from_millis(now_ms.saturating_sub(bucket_end));
            }
        }
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_inflight: 2,
            max_inflight_bytes: 1000,
            max_peer_inflight_bytes: 1000,
            max_ack_latency: Some(Duration::from_millis(100)),
            publish_timeout: Duration::from_millis(1500),
        }
    }

    #[test]
    fn request_slots_are_bounded_and_released() {
        let a = Admission::new(limits());
        let one = a.admit().unwrap();
        let _two = a.admit().unwrap();
        assert_eq!(a.admit().err().unwrap().reason(), "overloaded");
        assert!(a.is_saturated());
        drop(one);
        assert!(a.admit().is_ok());
    }

    #[test]
    fn body_bytes_are_bounded_and_released() {
        let a = Admission::new(limits());
        let mut first = a.admit().unwrap();
        a.reserve_body(&mut first, peer(1), 500).unwrap();
        a.reserve_body(&mut first, peer(1), 300).unwrap();
        assert_eq!(a.inflight_bytes(), 800);
        let mut second = a.admit().unwrap();
        assert_eq!(
            a.reserve_body(&mut second, peer(2), 300)
                .unwrap_err()
                .reason(),
            "overloaded"
        );
        drop(first);
        assert_eq!(a.inflight_bytes(), 0);
        a.reserve_body(&mut second, peer(2), 300).unwrap();
    }

    #[test]
    fn one_client_holds_at_most_its_share() {
        let a = Admission::new(Limits {
            max_inflight: 4,
            max_peer_inflight_bytes: 400,
            ..limits()
        });
        let mut slow = a.admit().unwrap();
        a.reserve_body(&mut slow, peer(1), 400).unwrap();
        let mut more = a.admit().unwrap();
        assert_eq!(
            a.reserve_body(&mut more, peer(1), 1).unwrap_err().reason(),
            "overloaded"
        );
        // Another client (one whose bucket is another) still gets its bytes.
        let other_peer = (2..=255)
            .map(peer)
            .find(|p| a.peers.bucket(*p) != a.peers.bucket(peer(1)))
            .unwrap();
        let mut other = a.admit().unwrap();
        a.reserve_body(&mut other, other_peer, 400).unwrap();
        drop(slow);
        a.reserve_body(&mut more, peer(1), 400).unwrap();
    }

    fn peer(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn the_oldest_pending_publish_sets_the_age() {
        let p = Pending::new(Duration::from_millis(1500));
        assert_eq!(p.width_ms, 40);
        assert_eq!(p.oldest_age_at(10_000), Duration::ZERO);
        // Started in the bucket [0, 40) ms; a second one later.
        let first = p.start();
        let now = p.now_ms();
        assert!(p.oldest_age_at(now + 1000) >= Duration::from_millis(900));
        assert!(p.oldest_age_at(now + 1000) <= Duration::from_millis(1000));
        drop(first);
        assert_eq!(p.oldest_age_at(now + 1000), Duration::ZERO);
        assert_eq!(p.outstanding(), 0);
    }

    #[test]
    fn a_slow_pending_publish_sheds_and_its_ack_clears_the_verdict_at_once() {
        let a = Admission::new(limits());
        let slow = a.publishing();
        a.check_delivery().unwrap();
        // Nothing else needed: the verdict is derived from the pending publish alone.
        let later = a.pending.now_ms() + 300;
        assert!(a.pending.oldest_age_at(later) > Duration::from_millis(100));
        drop(slow);
        a.record(true, false);
        assert_eq!(a.pending.oldest_age_at(later), Duration::ZERO);
        a.check_delivery().unwrap();
    }

    #[test]
    fn after_a_timeout_one_publish_at_a_time_probes_until_an_ack() {
        let a = Admission::new(limits());
        a.record(false, true);
        // Nothing pending: a probe is admitted.
        a.check_delivery().unwrap();
        let probe = a.publishing();
        assert_eq!(a.check_delivery().unwrap_err().reason(), "backpressure");
        assert!(a.is_saturated());
        drop(probe);
        a.record(true, false);
        let _one = a.publishing();
        let _two = a.publishing();
        a.check_delivery().unwrap();
    }

    #[test]
    fn no_threshold_never_sheds() {
        let a = Admission::new(Limits {
            max_ack_latency: None,
            ..limits()
        });
        a.record(false, true);
        let _pending = a.publishing();
        a.check_delivery().unwrap();
    }
}
