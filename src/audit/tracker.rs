//! Per (app, group, topic): the highest contiguous MsgSeq and the seqs seen above it, from which
//! the gaps follow. Pure: time comes in as milliseconds, nothing here does I/O.
//!
//! A group's first record seen sets its start: the auditor audits from where it began to
//! watch, not the group's whole past. A gap becomes *due* `grace` after the first seq above it
//! arrived (late and out-of-order callbacks get that long to show up); once the resolver has
//! settled every seq of a gap (seen, backfilled, a system notice, or reported unrecoverable),
//! [`Tracker::resolve`] marks them and the contiguous point moves past them.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Which group (and topic, in topic communities) a seq belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey {
    pub sdkappid: u64,
    pub group: String,
    pub topic: Option<String>,
}

/// One group's state; what the checkpoint stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// Every seq up to here is accounted for.
    pub contiguous: u64,
    /// Seqs accounted for above `contiguous + 1`, with when each arrived (ms): the time a gap
    /// below it was first visible.
    pub above: BTreeMap<u64, u64>,
    /// The group's `Type` from its callbacks (`AVChatRoom` keeps no history).
    pub kind: String,
    /// When the last record of the group arrived (ms), for idle eviction and the tail check.
    pub last_seen_ms: u64,
    /// A tail gap: Tencent's `NextMsgSeq` said seqs up to `.0` exist, at `.1` (ms); pending
    /// until the seqs above the highest seen up to it are accounted for.
    #[serde(default)]
    pub tail: Option<(u64, u64)>,
    /// Its lowest gap is due at once, whatever the grace (the ordered stream holds too much
    /// behind it); cleared when a gap is resolved, and not checkpointed.
    #[serde(skip)]
    pub urgent: bool,
}

impl GroupState {
    pub fn highest(&self) -> u64 {
        self.above
            .last_key_value()
            .map_or(self.contiguous, |(seq, _)| *seq)
    }

    /// Moves `contiguous` over every seq that directly follows it.
    fn advance(&mut self) {
        while let Some(entry) = self.above.first_entry() {
            if *entry.key() != self.contiguous + 1 {
                break;
            }
            self.contiguous = entry.remove_entry().0;
        }
        if self.tail.is_some_and(|(last, _)| last <= self.highest()) {
            self.tail = None;
        }
    }
}

/// What one seen seq was, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next seq, or the first of a group.
    InOrder,
    /// Above the next one: it opens (or widens) a gap.
    Ahead,
    /// Below the highest seen but not seen before: it fills part of a gap late.
    Regression,
    /// Seen (or resolved) before.
    Repeat,
}

/// A range of missing seqs, `first..=last`, due for a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub key: GroupKey,
    pub first: u64,
    pub last: u64,
    pub kind: String,
}

#[derive(Debug, Default)]
pub struct Tracker {
    groups: HashMap<GroupKey, GroupState>,
    max_groups: usize,
    /// Seqs a group may hold above its contiguous point; past it the lowest gap is due at once.
    max_pending: usize,
}

/// Why a group left the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    Idle,
    /// The cap on tracked groups made room for a new one.
    Cap,
}

impl Tracker {
    pub fn new(max_groups: usize, max_pending: usize) -> Tracker {
        Tracker {
            groups: HashMap::new(),
            max_groups: max_groups.max(1),
            max_pending: max_pending.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn get(&self, key: &GroupKey) -> Option<&GroupState> {
        self.groups.get(key)
    }

    pub fn groups(&self) -> impl Iterator<Item = (&GroupKey, &GroupState)> {
        self.groups.iter()
    }

    /// Puts back a checkpointed group (at start-up, `now_ms`): its idle time counts from here,
    /// so a restart after a long stop does not evict what it is about to replay.
    pub fn restore(&mut self, key: GroupKey, mut state: GroupState, now_ms: u64) {
        state.last_seen_ms = state.last_seen_ms.max(now_ms);
        self.groups.insert(key, state);
    }

    /// Records `seq` of `key`, seen at `now_ms`. Returns what it was and, when the cap made
    /// room for a new group, the group evicted for it.
    pub fn see(
        &mut self,
        key: &GroupKey,
        seq: u64,
        kind: &str,
        now_ms: u64,
    ) -> (Seen, Option<GroupKey>) {
        let mut evicted = None;
        if !self.groups.contains_key(key) && self.groups.len() >= self.max_groups {
            evicted = self.evict_oldest();
        }
        let state = self
            .groups
            .entry(key.clone())
            .or_insert_with(|| GroupState {
                contiguous: seq.saturating_sub(1),
                above: BTreeMap::new(),
                kind: kind.to_string(),
                last_seen_ms: now_ms,
                tail: None,
                urgent: false,
            });
        state.last_seen_ms = state.last_seen_ms.max(now_ms);
        if !kind.is_empty() && state.kind != kind {
            state.kind = kind.to_string();
        }
        let highest = state.highest();
        let seen = if seq <= state.contiguous || state.above.contains_key(&seq) {
            Seen::Repeat
        } else if seq == state.contiguous + 1 {
            state.contiguous = seq;
            if seq < highest {
                Seen::Regression
            } else {
                Seen::InOrder
            }
        } else {
            state.above.insert(seq, now_ms);
            if seq < highest {
                Seen::Regression
            } else {
                Seen::Ahead
            }
        };
        state.advance();
        (seen, evicted)
    }

    fn evict_oldest(&mut self) -> Option<GroupKey> {
        let oldest = self
            .groups
            .iter()
            .min_by_key(|(_, state)| state.last_seen_ms)
            .map(|(key, _)| key.clone())?;
        self.groups.remove(&oldest);
        Some(oldest)
    }

    /// Each group's lowest gap, once it has waited `grace_ms` (at once when the group holds
    /// `max_pending` seqs above its contiguous point), at most `max_span` seqs of it. One gap
    /// per group at a time: resolving it moves the contiguous point, so nothing is recorded
    /// per seq and a gap's bounds cannot shift under a lookup in flight.
    pub fn due(&self, now_ms: u64, grace_ms: u64, max_span: u64) -> Vec<Gap> {
        let mut gaps = Vec::new();
        for (key, state) in &self.groups {
            let first = state.contiguous + 1;
            // After `advance`, the first seq above is never `first` itself.
            let (last, since) = match (state.above.first_key_value(), state.tail) {
                (Some((&seq, &arrived)), _) => (seq - 1, arrived),
                (None, Some((last, since))) if last >= first => (last, since),
                _ => continue,
            };
            let crowded = state.above.len() >= self.max_pending;
            if crowded || state.urgent || now_ms.saturating_sub(since) >= grace_ms {
                gaps.push(Gap {
                    key: key.clone(),
                    first,
                    last: last.min(first.saturating_add(max_span.max(1) - 1)),
                    kind: state.kind.clone(),
                });
            }
        }
        gaps.sort_by(|a, b| (&a.key, a.first).cmp(&(&b.key, b.first)));
        gaps
    }

    /// What of `gap` (one [`Tracker::due`] gave) is still missing now: the stream may have
    /// filled it, wholly or in part, while it waited for its lookup. The part returned is the
    /// group's lowest gap inside `gap`, so no seq that arrived is looked up (or backfilled)
    /// again; what lies above it is the group's next gap. `None` when nothing is missing, or
    /// the group is no longer tracked.
    pub fn still_missing(&self, gap: &Gap) -> Option<Gap> {
        let state = self.groups.get(&gap.key)?;
        let first = gap.first.max(state.contiguous + 1);
        if first > gap.last {
            return None;
        }
        let last = state
            .above
            .range(first..=gap.last)
            .next()
            .map_or(gap.last, |(&seq, _)| seq - 1);
        (first <= last).then(|| Gap {
            key: gap.key.clone(),
            first,
            last,
            kind: state.kind.clone(),
        })
    }

    /// Makes `key`'s lowest gap due at once, whatever the grace.
    pub fn hurry(&mut self, key: &GroupKey) {
        if let Some(state) = self.groups.get_mut(key) {
            state.urgent = true;
        }
    }

    /// Marks `first..=last` of `key` as accounted for (a gap [`Tracker::due`] gave, looked up),
    /// at `now_ms`.
    pub fn resolve(&mut self, key: &GroupKey, first: u64, last: u64, now_ms: u64) {
        let Some(state) = self.groups.get_mut(key) else {
            return;
        };
        state.urgent = false;
        if first <= state.contiguous + 1 {
            state.contiguous = state.contiguous.max(last);
            // Seqs that arrived meanwhile inside the range are now below the point.
            state.above = state.above.split_off(&(state.contiguous + 1));
        } else {
            for seq in first..=last {
                state.above.entry(seq).or_insert(now_ms);
            }
        }
        state.advance();
    }

    /// Groups whose last record is younger than `window_ms`, with the highest seq seen: the
    /// candidates of the tail check.
    pub fn active(&self, now_ms: u64, window_ms: u64) -> Vec<(GroupKey, u64, String)> {
        let mut out: Vec<_> = self
            .groups
            .iter()
            .filter(|(_, s)| now_ms.saturating_sub(s.last_seen_ms) < window_ms)
            .map(|(k, s)| (k.clone(), s.highest(), s.kind.clone()))
            .collect();
        out.sort();
        out
    }

    /// Tencent says `key`'s newest seq is `latest`: everything between the highest seen and it
    /// becomes a gap, due `grace` after `now_ms` like any other (its callbacks may still be on
    /// their way). Returns the gap's bounds when there is one.
    pub fn tail(&mut self, key: &GroupKey, latest: u64, now_ms: u64) -> Option<(u64, u64)> {
        let state = self.groups.get_mut(key)?;
        let highest = state.highest();
        if latest <= highest || state.tail.is_some_and(|(last, _)| last >= latest) {
            return None;
        }
        // Extending a pending tail keeps when it was first seen: a busy group's tail must not
        // be put off by every check.
        let since = state.tail.map_or(now_ms, |(_, since)| since);
        state.tail = Some((latest, since));
        Some((highest + 1, latest))
    }

    /// Drops groups idle for `idle_ms` or more with nothing pending (no seq above the
    /// contiguous point, no tail gap, and not `busy` elsewhere: records held for the ordered
    /// stream).
    pub fn evict_idle(
        &mut self,
        now_ms: u64,
        idle_ms: u64,
        busy: impl Fn(&GroupKey) -> bool,
    ) -> Vec<GroupKey> {
        let idle: Vec<GroupKey> = self
            .groups
            .iter()
            .filter(|(k, s)| s.above.is_empty() && s.tail.is_none() && !busy(k))
            .filter(|(_, s)| now_ms.saturating_sub(s.last_seen_ms) >= idle_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &idle {
            self.groups.remove(key);
        }
        idle
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
    fn a_gap_is_due_after_the_grace_and_closes_when_resolved() {
        let mut t = Tracker::new(10, 1000);
        let g = key("g");
        assert_eq!(t.see(&g, 5, "Public", 0).0, Seen::InOrder);
        assert_eq!(t.see(&g, 6, "Public", 0).0, Seen::InOrder);
        assert_eq!(t.see(&g, 9, "Public", 100).0, Seen::Ahead);
        assert_eq!(t.see(&g, 10, "Public", 100).0, Seen::Ahead);
        assert!(t.due(100 + 29_999, 30_000, 1000).is_empty());
        let due = t.due(100 + 30_000, 30_000, 1000);
        assert_eq!(
            due,
            vec![Gap {
                key: g.clone(),
                first: 7,
                last: 8,
                kind: "Public".into()
            }]
        );
        t.resolve(&g, 7, 8, 40_000);
        assert_eq!(t.get(&g).unwrap().contiguous, 10);
        assert!(t.get(&g).unwrap().above.is_empty());
        assert!(t.due(100_000, 30_000, 1000).is_empty());
    }

    #[test]
    fn late_arrivals_fill_gaps_and_repeats_are_told_apart() {
        let mut t = Tracker::new(10, 1000);
        let g = key("g");
        t.see(&g, 1, "", 0);
        t.see(&g, 4, "", 0);
        assert_eq!(t.see(&g, 3, "", 1).0, Seen::Regression);
        assert_eq!(t.see(&g, 2, "", 2).0, Seen::Regression);
        assert_eq!(t.get(&g).unwrap().contiguous, 4);
        assert_eq!(t.see(&g, 4, "", 3).0, Seen::Repeat);
        assert_eq!(t.see(&g, 1, "", 3).0, Seen::Repeat);
        assert!(t.due(1_000_000, 1, 1000).is_empty());
    }

    #[test]
    fn too_many_pending_seqs_make_a_gap_due_at_once() {
        let mut t = Tracker::new(10, 3);
        let g = key("g");
        t.see(&g, 1, "", 0);
        for seq in [3, 4, 5] {
            t.see(&g, seq, "", 0);
        }
        assert_eq!(t.due(0, 30_000, 1000).len(), 1);
    }

    #[test]
    fn the_cap_evicts_the_least_recent_group() {
        let mut t = Tracker::new(2, 10);
        t.see(&key("a"), 1, "", 10);
        t.see(&key("b"), 1, "", 20);
        let (_, evicted) = t.see(&key("c"), 1, "", 30);
        assert_eq!(evicted, Some(key("a")));
        assert_eq!(t.len(), 2);
        assert_eq!(t.evict_idle(1000, 975, |_| false), vec![key("b")]);
    }

    #[test]
    fn a_tail_check_opens_a_gap_up_to_tencents_latest_seq_once() {
        let mut t = Tracker::new(10, 100);
        let g = key("g");
        t.see(&g, 1, "Public", 0);
        t.see(&g, 2, "Public", 0);
        assert_eq!(t.tail(&g, 2, 10), None);
        assert_eq!(t.tail(&g, 5, 10), Some((3, 5)));
        assert_eq!(t.tail(&g, 5, 20), None, "asked again: no second gap");
        assert_eq!(t.due(10 + 30_000, 30_000, 1000).len(), 1);
        t.resolve(&g, 3, 5, 40_000);
        let state = t.get(&g).unwrap();
        assert_eq!((state.contiguous, state.tail), (5, None));
        assert_eq!(t.see(&g, 6, "Public", 41_000).0, Seen::InOrder);
        // A tail whose seqs then arrive live closes by itself.
        assert_eq!(t.tail(&g, 8, 42_000), Some((7, 8)));
        t.see(&g, 7, "Public", 42_001);
        t.see(&g, 8, "Public", 42_002);
        assert_eq!(t.get(&g).unwrap().tail, None);
        assert!(t.due(1_000_000, 30_000, 1000).is_empty());
    }

    #[test]
    fn one_gap_per_group_at_a_time_lowest_first_and_bounded() {
        let mut t = Tracker::new(10, 1000);
        let g = key("g");
        t.see(&g, 1, "", 0);
        t.see(&g, 5, "", 0);
        t.see(&g, 5000, "", 0);
        let due = t.due(30_000, 30_000, 100);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].first, due[0].last), (2, 4));
        // A late arrival inside the gap while it is looked up: the resolution still closes it.
        t.see(&g, 3, "", 30_001);
        t.resolve(&g, 2, 4, 30_002);
        assert_eq!(t.get(&g).unwrap().contiguous, 5);
        assert_eq!(t.get(&g).unwrap().above.len(), 1, "only 5000 left above");
        // The next gap (6..=4999) is looked up 100 seqs at a time.
        let due = t.due(30_003, 30_000, 100);
        assert_eq!((due[0].first, due[0].last), (6, 105));
        t.resolve(&g, 6, 105, 30_004);
        assert_eq!(t.get(&g).unwrap().contiguous, 105);
        assert!(
            t.get(&g).unwrap().above.len() <= 1,
            "nothing recorded per seq"
        );
    }

    #[test]
    fn a_queued_gap_is_narrowed_to_what_is_still_missing() {
        let mut t = Tracker::new(10, 1000);
        let g = key("g");
        t.see(&g, 1, "Public", 0);
        t.see(&g, 10, "Public", 0);
        let gap = t.due(30_000, 30_000, 1000).remove(0);
        assert_eq!((gap.first, gap.last), (2, 9));
        assert_eq!(t.still_missing(&gap), Some(gap.clone()), "nothing arrived");
        // Late callbacks: 2 (the bottom) and 6 (inside).
        t.see(&g, 2, "Public", 31_000);
        t.see(&g, 6, "Public", 31_000);
        let left = t.still_missing(&gap).unwrap();
        assert_eq!(
            (left.first, left.last),
            (3, 5),
            "the lowest part still missing"
        );
        t.resolve(&g, left.first, left.last, 32_000);
        let next = t.due(32_000, 30_000, 1000).remove(0);
        assert_eq!((next.first, next.last), (7, 9), "the rest is the next gap");
        for seq in 7..=9 {
            t.see(&g, seq, "Public", 33_000);
        }
        assert_eq!(
            t.still_missing(&next),
            None,
            "filled whole: nothing to look up"
        );
        assert_eq!(
            t.still_missing(&Gap {
                key: key("gone"),
                ..next
            }),
            None
        );
    }

    #[test]
    fn a_group_with_pending_work_is_not_evicted_for_idleness() {
        let mut t = Tracker::new(10, 1000);
        t.see(&key("busy"), 1, "", 0);
        t.see(&key("busy"), 3, "", 0);
        t.see(&key("done"), 1, "", 0);
        t.see(&key("held"), 1, "", 0);
        let held = key("held");
        assert_eq!(
            t.evict_idle(10_000, 1_000, |k| *k == held),
            vec![key("done")],
            "a group holding records for the ordered stream stays"
        );
        let state = t.get(&key("busy")).unwrap().clone();
        t.restore(key("busy"), state, 50_000);
        assert_eq!(t.get(&key("busy")).unwrap().last_seen_ms, 50_000);
    }

    #[test]
    fn a_growing_tail_keeps_its_first_sighting() {
        let mut t = Tracker::new(10, 1000);
        let g = key("g");
        t.see(&g, 1, "", 0);
        assert_eq!(t.tail(&g, 3, 100), Some((2, 3)));
        assert_eq!(t.tail(&g, 6, 20_000), Some((2, 6)));
        assert_eq!(t.get(&g).unwrap().tail, Some((6, 100)));
        assert_eq!(t.due(30_100, 30_000, 1000).len(), 1);
    }
}
