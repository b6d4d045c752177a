//! Admission control: what keeps the bridge bounded when Tencent sends more than the broker
//! takes. A callback is admitted only while
//! - fewer than `--max-inflight` requests are being processed,
//! - the bodies held in memory stay under `--max-inflight-bytes`, and
//! - the broker's acknowledgements are not slower, on average, than `--max-ack-latency`.
//!
//! Otherwise it is refused at once with 503: a fast refusal costs Tencent nothing, while
//! queueing would grow memory and answer late anyway (and a late answer is a lost message).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Rejection;

/// How long a slow-ack verdict holds without new evidence. While the bridge sheds, few publishes
/// complete; after this long without one, callbacks are admitted again and probe the broker.
const SLOW_VERDICT_HOLD: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_inflight: usize,
    pub max_inflight_bytes: usize,
    /// `None`: never shed on ack latency.
    pub max_ack_latency: Option<Duration>,
}

pub struct Admission {
    limits: Limits,
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    acks: AckLatency,
}

/// Held while a request is processed; releases its share of the bounds when dropped.
pub struct Admitted {
    _request: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl Admission {
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            requests: Arc::new(Semaphore::new(limits.max_inflight)),
            bytes: Arc::new(Semaphore::new(limits.max_inflight_bytes)),
            acks: AckLatency::new(),
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
            _bytes: None,
        })
    }

    /// Reserves memory for a body of at most `len` bytes, or refuses at once.
    pub fn reserve_body(&self, admitted: &mut Admitted, len: usize) -> Result<(), Rejection> {
        let len = u32::try_from(len.max(1)).unwrap_or(u32::MAX);
        let permit = self
            .bytes
            .clone()
            .try_acquire_many_owned(len)
            .map_err(|_| Rejection::Overloaded("too many body bytes in flight"))?;
        admitted._bytes = Some(permit);
        Ok(())
    }

    /// Refuses when the broker acknowledges too slowly for new callbacks to be answered in time.
    pub fn check_ack_latency(&self) -> Result<(), Rejection> {
        if self.sink_slow() {
            Err(Rejection::SinkBackpressure(
                "the broker acknowledges too slowly".into(),
            ))
        } else {
            Ok(())
        }
    }

    /// Records how long a publish took (successful, or until it timed out).
    pub fn record_ack(&self, took: Duration) {
        self.acks.record(took);
    }

    pub fn sink_slow(&self) -> bool {
        match self.limits.max_ack_latency {
            Some(max) => self.acks.is_above(max, SLOW_VERDICT_HOLD),
            None => false,
        }
    }

    /// At a bound: new callbacks would be refused now.
    pub fn is_saturated(&self) -> bool {
        self.requests.available_permits() == 0 || self.sink_slow()
    }

    pub fn inflight_bytes(&self) -> usize {
        self.limits.max_inflight_bytes - self.bytes.available_permits()
    }

    /// The moving average of publish times.
    pub fn ack_latency(&self) -> Duration {
        Duration::from_micros(self.acks.average_us.load(Ordering::Relaxed))
    }
}

/// An exponentially weighted moving average (weight 1/8 per sample) of publish times, and when
/// it was last updated.
struct AckLatency {
    origin: Instant,
    average_us: AtomicU64,
    updated_ms: AtomicU64,
}

impl AckLatency {
    fn new() -> AckLatency {
        AckLatency {
            origin: Instant::now(),
            average_us: AtomicU64::new(0),
            updated_ms: AtomicU64::new(0),
        }
    }

    fn record(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        // Concurrent updates may lose a sample; an average of this kind tolerates that.
        let old = self.average_us.load(Ordering::Relaxed);
        let new = (old - old / 8).saturating_add(sample / 8);
        self.average_us.store(new, Ordering::Relaxed);
        self.updated_ms.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    fn is_above(&self, max: Duration, hold: Duration) -> bool {
        // One clock read: the age is computed against this instant only.
        self.is_above_at(self.elapsed_ms(), max, hold)
    }

    fn is_above_at(&self, now_ms: u64, max: Duration, hold: Duration) -> bool {
        let average = Duration::from_micros(self.average_us.load(Ordering::Relaxed));
        // Another thread may record a sample after `now_ms` was read, leaving `updated_ms`
        // ahead of it: that is an age of zero, not an underflow.
        let age = now_ms.saturating_sub(self.updated_ms.load(Ordering::Relaxed));
        average > max && Duration::from_millis(age) < hold
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_inflight: 2,
            max_inflight_bytes: 1000,
            max_ack_latency: Some(Duration::from_millis(100)),
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
        a.reserve_body(&mut first, 800).unwrap();
        assert_eq!(a.inflight_bytes(), 800);
        let mut second = a.admit().unwrap();
        assert_eq!(
            a.reserve_body(&mut second, 300).unwrap_err().reason(),
            "overloaded"
        );
        drop(first);
        assert_eq!(a.inflight_bytes(), 0);
        a.reserve_body(&mut second, 300).unwrap();
    }

    #[test]
    fn slow_acks_shed_until_the_average_recovers() {
        let a = Admission::new(limits());
        a.check_ack_latency().unwrap();
        for _ in 0..20 {
            a.record_ack(Duration::from_millis(500));
        }
        assert_eq!(
            a.check_ack_latency().unwrap_err().reason(),
            "sink_backpressure"
        );
        assert!(a.is_saturated());
        for _ in 0..60 {
            a.record_ack(Duration::from_millis(1));
        }
        a.check_ack_latency().unwrap();
    }

    #[test]
    fn a_slow_verdict_expires_without_new_evidence() {
        let acks = AckLatency::new();
        for _ in 0..20 {
            acks.record(Duration::from_millis(500));
        }
        assert!(acks.is_above(Duration::from_millis(100), Duration::from_secs(60)));
        assert!(!acks.is_above(Duration::from_millis(100), Duration::ZERO));
    }

    #[test]
    fn a_sample_recorded_after_our_clock_read_is_age_zero() {
        // Found by a flaky integration test: two clock reads and a concurrent record made the
        // age computation underflow (a panic in debug builds, a wrong verdict in release).
        let acks = AckLatency::new();
        for _ in 0..20 {
            acks.record(Duration::from_millis(500));
        }
        acks.updated_ms.store(10_000, Ordering::Relaxed);
        assert!(acks.is_above_at(9_999, Duration::from_millis(100), Duration::from_secs(1)));
        assert!(!acks.is_above_at(
            11_000,
            Duration::from_millis(100),
            Duration::from_millis(500)
        ));
    }

    #[test]
    fn no_threshold_never_sheds() {
        let a = Admission::new(Limits {
            max_ack_latency: None,
            ..limits()
        });
        for _ in 0..20 {
            a.record_ack(Duration::from_secs(5));
        }
        a.check_ack_latency().unwrap();
    }
}
