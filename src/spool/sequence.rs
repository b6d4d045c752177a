//! The sequence rule: the frames of the log carry every number once, in order. A segment's
//! first frame carries its name, each frame the one after the frame before it, and a segment
//! starts where the one before it ended. A filler frame (`frame::put_filler`) stands for the
//! numbers of a refused batch, which are never given out again. Recovery and `spool inspect`
//! apply this rule; a break is damage: reported, the segments set aside, nothing skipped.

use std::fmt;

use super::frame::filler_first;

/// Where the numbers stop following each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Break {
    /// The number the frame (or the segment) should have started with.
    pub expected: u64,
    /// The number it starts with.
    pub found: u64,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.found < self.expected {
            "a number repeated"
        } else {
            "numbers missing"
        };
        write!(
            f,
            "expected {}, found {} ({what})",
            self.expected, self.found
        )
    }
}

/// The frames of one segment, in file order.
#[derive(Debug)]
pub struct InSegment {
    expected: u64,
    /// The highest number a frame covered, if any.
    high: Option<u64>,
    /// Damage was stepped over since the last frame: the records it cost had numbers of their
    /// own, so the next frame may start further on (the damage is counted already).
    after_damage: bool,
}

impl InSegment {
    /// A segment named `first_seq`.
    pub fn new(first_seq: u64) -> InSegment {
        InSegment {
            expected: first_seq,
            high: None,
            after_damage: false,
        }
    }

    /// The reader stepped over damage.
    pub fn damage(&mut self) {
        self.after_damage = true;
    }

    /// The next frame; a break when it does not start where the frame before it ended.
    pub fn frame(&mut self, seq: u64, payload: &[u8]) -> Option<Break> {
        let start = filler_first(seq, payload).unwrap_or(seq);
        let follows = start == self.expected || (self.after_damage && start > self.expected);
        let found = Break {
            expected: self.expected,
            found: start,
        };
        // From here on the frames are checked against this one: a step back and a return
        // are two breaks, not one per frame in between.
        self.expected = seq.saturating_add(1);
        self.high = Some(self.high.map_or(seq, |h| h.max(seq)));
        self.after_damage = false;
        (!follows).then_some(found)
    }

    /// The highest number a frame covered.
    pub fn high(&self) -> Option<u64> {
        self.high
    }

    /// Ended in damage (stepped over, or bytes after the last frame): the segment after it may
    /// start further on.
    pub fn ended_in_damage(&self) -> bool {
        self.after_damage
    }
}

/// The segments, in name order, after the acknowledged `position`.
#[derive(Debug)]
pub struct Across {
    position: u64,
    /// The highest number the segments so far covered.
    high: Option<u64>,
    /// How far the segment before ended is not known (damage at its end, or it could not be
    /// read): the next may start further on.
    open_end: bool,
}

impl Across {
    pub fn new(position: u64) -> Across {
        Across {
            position,
            high: None,
            open_end: false,
        }
    }

    /// The segment named `first_seq`; a break when it starts inside the numbers before it, or
    /// after a gap the position has not passed (a gap it passed held forwarded records: their
    /// segments were deleted, while a set-aside one before them is kept).
    pub fn segment(&self, first_seq: u64) -> Option<Break> {
        if let Some(high) = self.high {
            if first_seq <= high {
                return Some(Break {
                    expected: high.saturating_add(1),
                    found: first_seq,
                });
            }
        }
        let expected = self.high.unwrap_or(0).max(self.position).saturating_add(1);
        (first_seq > expected && !self.open_end).then_some(Break {
            expected,
            found: first_seq,
        })
    }

    /// The segment just checked ended: its highest number (`None`: no frame), and whether its
    /// end was damaged.
    pub fn ended(&mut self, first_seq: u64, high: Option<u64>, damaged: bool) {
        let high = high.unwrap_or(first_seq.saturating_sub(1));
        self.high = Some(self.high.map_or(high, |h| h.max(high)));
        self.open_end = damaged;
    }

    /// A segment set aside as unreadable, named `first_seq`: how far it reached is not known.
    pub fn unreadable(&mut self, first_seq: u64) {
        self.high = Some(self.high.map_or(first_seq, |h| h.max(first_seq)));
        self.open_end = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::frame::{encode_payload, put_filler, tests::record};

    fn record_payload(seq: u64) -> Vec<u8> {
        encode_payload(&record("g", seq))
    }

    fn filler_payload(first: u64, last: u64) -> Vec<u8> {
        let mut frame = Vec::new();
        put_filler(&mut frame, first, last);
        frame[16..].to_vec()
    }

    fn breaks(first_seq: u64, seqs: &[u64]) -> Vec<Break> {
        let mut check = InSegment::new(first_seq);
        seqs.iter()
            .filter_map(|s| check.frame(*s, &record_payload(*s)))
            .collect()
    }

    #[test]
    fn records_that_follow_each_other_are_no_break() {
        assert!(breaks(5, &[5, 6, 7]).is_empty());
        let mut check = InSegment::new(5);
        assert_eq!(check.frame(5, &record_payload(5)), None);
        assert_eq!(check.frame(9, &filler_payload(6, 9)), None);
        assert_eq!(check.frame(10, &record_payload(10)), None);
        assert_eq!(check.high(), Some(10));
    }

    #[test]
    fn a_missing_repeated_or_misnamed_number_is_a_break() {
        let b = |expected, found| Break { expected, found };
        assert_eq!(breaks(1, &[1, 2, 4, 5]), [b(3, 4)]);
        assert_eq!(breaks(1, &[1, 2, 2, 3]), [b(3, 2)]);
        assert_eq!(breaks(1, &[1, 2, 3, 1, 2, 3, 4]), [b(4, 1)]);
        assert_eq!(breaks(1, &[2, 3]), [b(1, 2)]);
        // A filler that does not start where the record before it ended.
        let mut check = InSegment::new(1);
        check.frame(1, &record_payload(1));
        assert_eq!(check.frame(5, &filler_payload(3, 5)), Some(b(2, 3)));
    }

    #[test]
    fn damage_stepped_over_explains_a_gap_not_a_repeat() {
        let mut check = InSegment::new(1);
        check.frame(1, &record_payload(1));
        check.damage();
        assert_eq!(check.frame(3, &record_payload(3)), None);
        check.damage();
        assert!(check.frame(2, &record_payload(2)).is_some());
    }

    #[test]
    fn segments_follow_each_other_unless_the_position_passed_the_gap() {
        let mut across = Across::new(0);
        assert_eq!(across.segment(1), None);
        across.ended(1, Some(10), false);
        assert_eq!(across.segment(11), None);
        assert_eq!(
            across.segment(14),
            Some(Break {
                expected: 11,
                found: 14
            })
        );
        assert_eq!(
            across.segment(9),
            Some(Break {
                expected: 11,
                found: 9
            })
        );
        // A set-aside segment kept behind the position, then the segments after it deleted.
        let mut across = Across::new(500);
        across.ended(1, Some(10), false);
        assert_eq!(across.segment(480), None);
        // The first segment must not start past the position: numbers would be missing.
        assert!(Across::new(500).segment(520).is_some());
        // After an unreadable segment, or damage at a segment's end, a gap is expected.
        let mut across = Across::new(0);
        across.ended(1, Some(10), false);
        across.unreadable(11);
        assert_eq!(across.segment(60), None);
        across.ended(60, Some(70), true);
        assert_eq!(across.segment(75), None);
        // A frame numbered u64::MAX (found by fuzzing): a break, not an overflow.
        let mut across = Across::new(u64::MAX);
        assert_eq!(across.segment(1), None);
        across.ended(1, Some(u64::MAX), false);
        assert!(across.segment(98).is_some());
    }
}
