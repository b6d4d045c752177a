//! How long a group waits after failed lookups: [`FIRST_WAIT_MS`], doubling with each failure
//! in a row, up to `--audit-retry-max`. Per group, so one group Tencent keeps refusing (or a
//! REST outage) does not make every group's gaps wait as long as the worst one, and a lookup
//! that keeps failing costs fewer and fewer calls instead of one every few seconds for ever.
//! Pure: time comes in as milliseconds.
//!
//! Bounded by the tracked groups: an entry is made only for a group whose lookup failed, and
//! is dropped when a lookup of the group succeeds or the group leaves the tracker
//! ([`Backoff::forget`]); `capacity` (`--audit-max-groups`) is a second bound should a caller
//! forget to.

use std::collections::HashMap;

use super::tracker::GroupKey;

/// The wait after a group's first failed lookup.
pub const FIRST_WAIT_MS: u64 = 5_000;

#[derive(Debug)]
pub struct Backoff {
    max_wait_ms: u64,
    capacity: usize,
    groups: HashMap<GroupKey, Retry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retry {
    /// Failed lookups in a row.
    failures: u32,
    /// When the group may be looked up again (ms).
    at_ms: u64,
}

impl Backoff {
    pub fn new(max_wait_ms: u64, capacity: usize) -> Backoff {
        Backoff {
            max_wait_ms: max_wait_ms.max(1),
            capacity: capacity.max(1),
            groups: HashMap::new(),
        }
    }

    /// The wait after `failures` failed lookups in a row.
    pub fn wait_ms(&self, failures: u32) -> u64 {
        let doublings = failures.saturating_sub(1).min(63);
        FIRST_WAIT_MS
            .saturating_mul(1u64 << doublings)
            .min(self.max_wait_ms)
    }

    /// A lookup of `key` failed at `now_ms`: returns how long the group now waits. At
    /// `capacity` a new group is not recorded (it is retried at the next round, as before any
    /// failure) rather than growing the map.
    pub fn failed(&mut self, key: &GroupKey, now_ms: u64) -> u64 {
        let failures = match self.groups.get(key) {
            Some(retry) => retry.failures.saturating_add(1),
            None if self.groups.len() >= self.capacity => return 0,
            None => 1,
        };
        let wait = self.wait_ms(failures);
        self.groups.insert(
            key.clone(),
            Retry {
                failures,
                at_ms: now_ms.saturating_add(wait),
            },
        );
        wait
    }

    /// A lookup of `key` succeeded (or found nothing left to do): the next failure starts over.
    pub fn succeeded(&mut self, key: &GroupKey) {
        self.groups.remove(key);
    }

    /// The group left the tracker.
    pub fn forget(&mut self, key: &GroupKey) {
        self.groups.remove(key);
    }

    /// True while `key` waits after a failure.
    pub fn waiting(&self, key: &GroupKey, now_ms: u64) -> bool {
        self.groups.get(key).is_some_and(|r| r.at_ms > now_ms)
    }

    /// Groups whose last lookup failed (waiting, or due for their next try).
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(group: &str) -> GroupKey {
        GroupKey {
            sdkappid: 1,
            group: group.into(),
            topic: None,
        }
    }

    #[test]
    fn the_wait_doubles_per_failure_up_to_the_cap() {
        let b = Backoff::new(300_000, 10);
        let waits: Vec<u64> = (1..=9).map(|n| b.wait_ms(n)).collect();
        assert_eq!(
            waits,
            vec![5_000, 10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000, 300_000]
        );
        assert_eq!(b.wait_ms(u32::MAX), 300_000, "no overflow");
        assert_eq!(Backoff::new(2_000, 10).wait_ms(1), 2_000, "a cap below 5 s");
    }

    #[test]
    fn a_group_waits_after_each_failure_and_starts_over_after_a_success() {
        let mut b = Backoff::new(300_000, 10);
        let (g, other) = (key("g"), key("other"));
        assert!(!b.waiting(&g, 0));
        assert_eq!(b.failed(&g, 0), 5_000);
        assert!(b.waiting(&g, 4_999));
        assert!(!b.waiting(&g, 5_000));
        assert!(!b.waiting(&other, 1), "per group");
        assert_eq!(b.failed(&g, 5_000), 10_000);
        assert!(b.waiting(&g, 14_999));
        assert_eq!(b.failed(&g, 15_000), 20_000);
        assert_eq!(b.len(), 1);
        b.succeeded(&g);
        assert!(b.is_empty());
        assert_eq!(b.failed(&g, 100_000), 5_000, "counted from the start again");
    }

    #[test]
    fn forgotten_groups_leave_and_the_map_stays_within_its_capacity() {
        let mut b = Backoff::new(300_000, 2);
        b.failed(&key("a"), 0);
        b.failed(&key("b"), 0);
        assert_eq!(b.failed(&key("c"), 0), 0, "at capacity: not recorded");
        assert_eq!(b.len(), 2);
        assert!(!b.waiting(&key("c"), 1));
        assert_eq!(
            b.failed(&key("a"), 10),
            10_000,
            "known groups still back off"
        );
        b.forget(&key("a"));
        assert!(!b.waiting(&key("a"), 11));
        assert_eq!(b.failed(&key("c"), 20), 5_000);
        assert_eq!(b.len(), 2);
    }
}
