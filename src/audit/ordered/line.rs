//! One group's place in the ordered stream: the seq released last and what waits above it.
//! Pure: time comes in as milliseconds, nothing here does I/O.
//!
//! A seq is released once everything below it was released, and not before. What arrives
//! above the next seq is held: a record (its position in the main stream, and its body while
//! memory allows) or a marker (a seq Tencent's history says is gone, and why). A record of a
//! seq already released or held is a duplicate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::entry::{Position, Raw, Skip};

/// One seq waiting for the seqs below it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Held {
    /// When it was held (ms): the age of the hole below it.
    pub since_ms: u64,
    pub what: What,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum What {
    Record {
        /// Where the main stream keeps it: its body is read back from there when dropped.
        at: Position,
        /// When the main stream appended it (ms), for the release latency.
        appended_ms: u64,
        /// The body and headers, while memory allows; never checkpointed.
        #[serde(skip)]
        raw: Option<Box<Raw>>,
    },
    Marker(Skip),
}

impl Held {
    /// Bytes of the body kept in memory.
    pub fn bytes(&self) -> usize {
        match &self.what {
            What::Record { raw: Some(raw), .. } => raw.bytes(),
            _ => 0,
        }
    }
}

/// What became of an offered seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    Held,
    /// Released or held already: dropped.
    Duplicate,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Line {
    /// Every seq up to here is in the ordered stream.
    pub released: u64,
    /// Seqs above `released`, waiting for the ones below them.
    pub held: BTreeMap<u64, Held>,
}

impl Line {
    /// A group first seen at `seq`: the ordered stream starts there.
    pub fn starting_at(seq: u64) -> Line {
        Line {
            released: seq.saturating_sub(1),
            held: BTreeMap::new(),
        }
    }

    pub fn offer(&mut self, seq: u64, held: Held) -> Offered {
        if seq <= self.released || self.held.contains_key(&seq) {
            return Offered::Duplicate;
        }
        self.held.insert(seq, held);
        Offered::Held
    }

    /// Takes `seq` straight out when it is the next one and nothing is held (no hole: the
    /// common case), without holding it first; false when it must be [`Line::offer`]ed.
    pub fn pass(&mut self, seq: u64) -> bool {
        let next = self.held.is_empty() && seq == self.released + 1;
        if next {
            self.released = seq;
        }
        next
    }

    /// The seqs that can go now, in order: each directly follows the one before.
    pub fn ready(&mut self) -> Vec<(u64, Held)> {
        let mut out = Vec::new();
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != self.released + 1 {
                break;
            }
            let (seq, held) = entry.remove_entry();
            self.released = seq;
            out.push((seq, held));
        }
        out
    }

    /// When a hole holds records back: since when (ms) the lowest held seq waits.
    pub fn hole_since(&self) -> Option<u64> {
        let (&seq, held) = self.held.first_key_value()?;
        (seq > self.released + 1).then_some(held.since_ms)
    }

    pub fn held_bytes(&self) -> usize {
        self.held.values().map(Held::bytes).sum()
    }

    /// Forgets the bodies kept in memory (they are read back when released); the bytes freed.
    pub fn drop_bodies(&mut self) -> usize {
        let mut freed = 0;
        for held in self.held.values_mut() {
            if let What::Record { raw, .. } = &mut held.what {
                freed += raw.take().map_or(0, |r| r.bytes());
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at: u64, since_ms: u64) -> Held {
        Held {
            since_ms,
            what: What::Record {
                at: Position::Nats { stream_seq: at },
                appended_ms: since_ms,
                raw: Some(Box::new(Raw {
                    headers: super::super::entry::Headers::Pairs(vec![]),
                    body: bytes::Bytes::from_static(b"{}"),
                    key: None,
                })),
            },
        }
    }

    fn marker(reason: Skip) -> Held {
        Held {
            since_ms: 0,
            what: What::Marker(reason),
        }
    }

    fn seqs(ready: &[(u64, Held)]) -> Vec<u64> {
        ready.iter().map(|(seq, _)| *seq).collect()
    }

    #[test]
    fn a_seq_goes_once_everything_below_it_went() {
        let mut line = Line::starting_at(5);
        assert_eq!(line.offer(7, record(1, 10)), Offered::Held);
        assert!(line.ready().is_empty(), "6 is missing");
        assert_eq!(line.hole_since(), Some(10));
        assert_eq!(line.offer(5, record(2, 11)), Offered::Held);
        assert_eq!(seqs(&line.ready()), vec![5]);
        assert_eq!(line.offer(6, marker(Skip::System)), Offered::Held);
        assert_eq!(seqs(&line.ready()), vec![6, 7]);
        assert_eq!((line.released, line.hole_since()), (7, None));
    }

    #[test]
    fn the_next_seq_passes_straight_only_with_nothing_held() {
        let mut line = Line::starting_at(1);
        assert!(line.pass(1));
        assert!(!line.pass(3), "not the next one");
        line.offer(3, record(1, 0));
        assert!(!line.pass(2), "3 is held: 2 must go through the line");
        line.offer(2, record(2, 0));
        assert_eq!(seqs(&line.ready()), vec![2, 3]);
        assert!(line.pass(4));
        assert_eq!(line.released, 4);
    }

    #[test]
    fn released_and_held_seqs_are_duplicates() {
        let mut line = Line::starting_at(1);
        line.offer(1, record(1, 0));
        line.ready();
        assert_eq!(line.offer(1, record(9, 0)), Offered::Duplicate);
        line.offer(3, record(2, 0));
        assert_eq!(line.offer(3, record(3, 0)), Offered::Duplicate);
        assert_eq!(line.offer(2, marker(Skip::NotFound)), Offered::Held);
        assert_eq!(seqs(&line.ready()), vec![2, 3]);
    }

    #[test]
    fn dropped_bodies_keep_their_positions_and_survive_a_checkpoint() {
        let mut line = Line::starting_at(1);
        line.offer(3, record(42, 5));
        line.offer(4, marker(Skip::Deleted));
        assert_eq!(line.held_bytes(), 2);
        assert_eq!(line.drop_bodies(), 2);
        assert_eq!(line.held_bytes(), 0);
        let json = serde_json::to_vec(&line).unwrap();
        let back: Line = serde_json::from_slice(&json).unwrap();
        assert_eq!(serde_json::to_vec(&back).unwrap(), json);
        match &back.held[&3].what {
            What::Record { at, raw, .. } => {
                assert_eq!(*at, Position::Nats { stream_seq: 42 });
                assert!(raw.is_none());
            }
            other => panic!("{other:?}"),
        }
    }
}
