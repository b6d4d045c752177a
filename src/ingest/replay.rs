//! Replays of signed callbacks: a request whose `Sign`, `RequestTime`, app, command and body
//! are those of one already delivered is answered 200 again and not delivered again.
//!
//! - Only signed requests are remembered, and only once delivered: a request refused or
//!   failed is not a replay when it comes again (Tencent does not resend, but a proxy may).
//! - A request is remembered until its `RequestTime` leaves the clock-skew window: after that
//!   it is refused as stale anyway. At most `--replay-cache-entries` are remembered; past that
//!   the oldest is forgotten early (counted), so memory stays bounded under any load.
//! - Tencent's `Sign` covers only the token and `RequestTime`, so callbacks sent in the same
//!   second share one `Sign` with different bodies: those are not replays, and are delivered.
//!   What this stops is the same request twice (a captured request sent again, a retrying
//!   proxy). It cannot stop a new body under a seen `Sign` (only TLS client certificates and the
//!   source allow-list keep others from sending) nor two identical requests in flight at once
//!   (the broker's dedup id catches those for the commands that have one).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::tencent::callback::Callback;

/// What identifies a request: the first 128 bits of SHA-256 over its signed parts and body
/// (a chance collision, which would drop a genuine callback, is out of reach at these counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 16]);

/// The delivered signed requests still inside the skew window.
pub struct Replays {
    capacity: usize,
    window_secs: u64,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    set: HashSet<Fingerprint>,
    /// Insertion order, with each entry's expiry (unix seconds).
    order: VecDeque<(u64, Fingerprint)>,
}

/// What [`Replays::remember`] had to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Remembered {
    Yes,
    /// Yes, and the oldest entry was forgotten before it expired to make room.
    ForgotOne,
}

impl Replays {
    /// `None` when `capacity` is 0 (replays are not looked for).
    pub fn new(capacity: usize, window_secs: u64) -> Option<Replays> {
        (capacity > 0).then(|| Replays {
            capacity,
            window_secs,
            seen: Mutex::new(Seen::default()),
        })
    }

    /// The request's fingerprint and its expiry, when it was signed.
    pub fn fingerprint(callback: &Callback) -> Option<(Fingerprint, u64)> {
        let query = callback.query();
        let sign = query.sign.as_deref()?;
        let time = query.request_time.as_deref()?;
        let expires: u64 = time.parse().ok()?;
        let mut hash = Sha256::new();
        for part in [
            &callback.sdkappid().to_be_bytes()[..],
            query.command.as_bytes(),
            time.as_bytes(),
            sign.as_bytes(),
        ] {
            hash.update((part.len() as u32).to_be_bytes());
            hash.update(part);
        }
        hash.update(callback.body());
        let digest = hash.finalize();
        let mut fingerprint = [0; 16];
        fingerprint.copy_from_slice(&digest[..16]);
        Some((Fingerprint(fingerprint), expires))
    }

    /// Whether this request was delivered already.
    pub fn seen(&self, fingerprint: &Fingerprint) -> bool {
        self.lock().set.contains(fingerprint)
    }

    /// Remembers a delivered request whose `RequestTime` is `request_time`, forgetting what
    /// left the window by `now_unix`.
    pub fn remember(
        &self,
        fingerprint: Fingerprint,
        request_time: u64,
        now_unix: u64,
    ) -> Remembered {
        let mut seen = self.lock();
        while let Some(&(expiry, old)) = seen.order.front() {
            if expiry >= now_unix {
                break;
            }
            seen.order.pop_front();
            seen.set.remove(&old);
        }
        if !seen.set.insert(fingerprint) {
            return Remembered::Yes;
        }
        seen.order
            .push_back((request_time.saturating_add(self.window_secs), fingerprint));
        if seen.order.len() <= self.capacity {
            return Remembered::Yes;
        }
        if let Some((_, oldest)) = seen.order.pop_front() {
            seen.set.remove(&oldest);
        }
        Remembered::ForgotOne
    }

    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint([n; 16])
    }

    #[test]
    fn a_remembered_request_is_seen_until_it_leaves_the_window() {
        let replays = Replays::new(10, 60).unwrap();
        assert!(!replays.seen(&fp(1)));
        assert_eq!(replays.remember(fp(1), 1_000, 1_000), Remembered::Yes);
        assert!(replays.seen(&fp(1)));
        // Still inside RequestTime + 60 s.
        replays.remember(fp(2), 1_030, 1_060);
        assert!(replays.seen(&fp(1)));
        // Past it: forgotten when the next one is remembered.
        replays.remember(fp(3), 1_061, 1_061);
        assert!(!replays.seen(&fp(1)));
        assert!(replays.seen(&fp(2)) && replays.seen(&fp(3)));
    }

    #[test]
    fn at_capacity_the_oldest_is_forgotten_early() {
        let replays = Replays::new(2, 60).unwrap();
        replays.remember(fp(1), 1_000, 1_000);
        replays.remember(fp(2), 1_000, 1_000);
        assert_eq!(replays.remember(fp(3), 1_000, 1_000), Remembered::ForgotOne);
        assert_eq!(replays.len(), 2);
        assert!(!replays.seen(&fp(1)));
        assert!(replays.seen(&fp(3)));
        // Remembering one again takes no room.
        assert_eq!(replays.remember(fp(3), 1_000, 1_000), Remembered::Yes);
        assert_eq!(replays.len(), 2);
    }

    #[test]
    fn no_capacity_is_no_cache() {
        assert!(Replays::new(0, 60).is_none());
    }
}
