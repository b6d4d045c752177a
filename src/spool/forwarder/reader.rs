//! The forwarder's reading side: the spool's records in sequence order, from what the writer
//! left in memory or from the segments on disk, following the writer as it appends; and a
//! parked key's records read back from their place on disk. Damage and records this build
//! cannot read are dealt with here: a frame out of place is counted and passed over, a record
//! of a newer build's format stops forwarding (never skipped), a parked record that cannot be
//! read back is counted as corrupt.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::core::Record;
use crate::spool::frame::{decode_payload, filler_first};
use crate::spool::metrics::SpoolMetrics;
use crate::spool::segment::{self, Reader, Step};
use crate::spool::{Location, SpoolState};

/// Records read from disk in one trip, at most (also bounded by the caller's room).
const READ_AHEAD_RECORDS: usize = 256;
/// Body bytes read ahead from disk, at most.
const READ_AHEAD_BYTES: usize = 4 << 20;

/// A record read: its sequence number, the record, and where its frame is.
pub type ReadRecord = (u64, Arc<Record>, Location);

pub struct LogReader {
    state: Arc<SpoolState>,
    /// Where the disk reader is (`None`: opened again at the next read from disk).
    cursor: Option<Cursor>,
    /// Records read from disk ahead of the caller (bounded: `READ_AHEAD_*`), and their bytes.
    read_ahead: VecDeque<ReadRecord>,
    read_ahead_bytes: usize,
}

/// Where the disk reader is.
struct Cursor {
    first_seq: u64,
    path: PathBuf,
    reader: Reader,
    /// The next segment's first number: a frame of this one at or past it is out of place.
    ends_before: Option<u64>,
    /// The highest number this pass read (carried from segment to segment): a frame at or
    /// below it is out of place.
    high: Option<u64>,
    /// Frames out of place in this segment so far (the first is logged).
    out_of_place: u64,
}

/// What a cursor found in its segment.
enum Found {
    /// A record's payload (not a filler), at or after the number wanted and in place.
    Payload {
        seq: u64,
        payload: Bytes,
        at: Location,
    },
    /// The end of what can be read now (or a read error, logged and tried again at the next
    /// read); `damaged`: damage after the last valid frame.
    End { damaged: bool },
}

impl Cursor {
    /// The next payload at or after `want` in this segment. A frame whose number is out of
    /// place (at or below one this pass read already, or at or past where the next segment
    /// starts) is not forwarded: it is counted and logged, and stays in the segment recovery
    /// set aside. Between segments the later frame of a repeated number is forwarded: the
    /// writer names a segment only after every record before it, so an earlier segment's
    /// frames past its successor's name are a refused batch whose numbers an older build gave
    /// out again. Within a segment (which no build ever wrote a number twice into) the first
    /// is. Fillers stand for numbers that hold nothing.
    fn next_payload(&mut self, want: u64, metrics: &SpoolMetrics) -> Found {
        loop {
            // A record's frame starts where the reader stood (damage is its own step).
            let at = Location {
                segment: self.first_seq,
                offset: self.reader.offset(),
            };
            match self.reader.next_step() {
                Ok(Step::Record { seq, payload }) => {
                    let out_of_place = self.high.is_some_and(|high| seq <= high)
                        || self.ends_before.is_some_and(|end| seq >= end);
                    if out_of_place {
                        metrics.out_of_place.inc();
                        if self.out_of_place == 0 {
                            tracing::error!(
                                seq,
                                after = self.high,
                                next_segment = self.ends_before,
                                segment = %self.path.display(),
                                "spool: a record whose sequence number is out of place is not \
                                 forwarded (the later one of a repeated number is); it stays \
                                 in the segment, which recovery set aside for inspection"
                            );
                        }
                        self.out_of_place += 1;
                        continue;
                    }
                    self.high = Some(seq);
                    if seq < want || filler_first(seq, &payload).is_some() {
                        // Forwarded already (or from memory), or a filler: no record.
                        continue;
                    }
                    return Found::Payload { seq, payload, at };
                }
                Ok(Step::Skipped { .. }) => {}
                Ok(Step::End { trailing }) => {
                    return Found::End {
                        damaged: trailing > 0,
                    }
                }
                Err(err) => {
                    // Tried again at the next fill; `spool forward` reports what is left.
                    tracing::error!(error = %err, segment = %self.path.display(), "spool: cannot read a segment");
                    return Found::End { damaged: false };
                }
            }
        }
    }
}

impl LogReader {
    pub fn new(state: Arc<SpoolState>) -> LogReader {
        LogReader {
            state,
            cursor: None,
            read_ahead: VecDeque::new(),
            read_ahead_bytes: 0,
        }
    }

    /// The first record at or after `want`: from what was read ahead from disk, else from
    /// memory when the tail holds it, else from disk, up to `room` records (at least one, at
    /// most `READ_AHEAD_RECORDS`) at a time: each trip off the runtime's thread costs a
    /// hand-off of the worker, and one per record made forwarding a backlog cost more CPU
    /// than the callbacks themselves. `None`: nothing more can be read now.
    pub fn next(&mut self, want: u64, room: usize) -> Option<ReadRecord> {
        if let Some(found) = self.pop_read_ahead(want) {
            return Some(found);
        }
        // What was read ahead comes before the record forwarding stopped at; nothing after.
        if self.state.forwarding_stopped() {
            return None;
        }
        if let Some(found) = self.state.lock_tail().take(want) {
            return Some(found);
        }
        let room = room.clamp(1, READ_AHEAD_RECORDS);
        let durable = self.state.durable_seq();
        tokio::task::block_in_place(|| {
            let mut next = want;
            while self.read_ahead.len() < room
                && self.read_ahead_bytes < READ_AHEAD_BYTES
                && next <= durable
            {
                let Some((seq, record, at)) = self.read_disk(next) else {
                    break;
                };
                next = seq + 1;
                self.read_ahead_bytes += record.body.len();
                self.read_ahead.push_back((seq, record, at));
            }
        });
        self.pop_read_ahead(want)
    }

    /// The next record read ahead at or after `want` (older ones are dropped).
    fn pop_read_ahead(&mut self, want: u64) -> Option<ReadRecord> {
        while let Some((seq, record, at)) = self.read_ahead.pop_front() {
            self.read_ahead_bytes -= record.body.len();
            if seq >= want {
                return Some((seq, record, at));
            }
        }
        None
    }

    /// The next record at or after `want` on disk, following the segments and the writer
    /// (three moves at most per call).
    fn read_disk(&mut self, want: u64) -> Option<ReadRecord> {
        for _ in 0..3 {
            if self.cursor.is_none() {
                self.cursor = self.open_cursor(want, None);
            }
            let cursor = self.cursor.as_mut()?;
            match cursor.next_payload(want, &self.state.metrics) {
                Found::Payload { seq, payload, at } => match decode_payload(&payload) {
                    Ok(record) => return Some((seq, Arc::new(record), at)),
                    Err(why) => {
                        // Never skipped: a downgrade during a backlog must not lose what the
                        // newer build answered 200. Forwarding stops here until a build that
                        // reads it takes the spool.
                        self.state.stop_forwarding(seq, why);
                        self.cursor = None;
                        return None;
                    }
                },
                Found::End { damaged } => {
                    if !self.move_on(damaged, want) {
                        return None;
                    }
                }
            }
        }
        None
    }

    /// The cursor came to the end of what it could read: on to more of its segment when that
    /// grew since (it was being appended to), else to the next segment (the cursor is `None`
    /// when it cannot be opened). `false`: nothing more to read yet; the cursor stays where it
    /// is, to go on from there.
    fn move_on(&mut self, damaged_end: bool, want: u64) -> bool {
        let Some(cursor) = &self.cursor else {
            return false;
        };
        let (first_seq, offset, path, unwritten) = (
            cursor.first_seq,
            cursor.reader.offset(),
            cursor.path.clone(),
            cursor.reader.at_unwritten(),
        );
        let (high, out_of_place) = (cursor.high, cursor.out_of_place);
        // A later segment means this one is sealed and its length final: look for it first.
        let next = self.next_segment_after(first_seq);
        let limit = match next {
            Some(_) => None,
            None => self.state.read_limit(first_seq),
        };
        // Past the written part of a preallocated segment nothing more is to come.
        let readable = if unwritten {
            offset
        } else {
            std::fs::metadata(&path)
                .map_or(0, |m| m.len())
                .min(limit.unwrap_or(u64::MAX))
        };
        // (Damage at a sealed segment's end was reported by recovery: step over it.)
        self.cursor = if readable > offset && !(damaged_end && limit.is_none()) {
            Reader::open_at(&path, offset, limit)
                .ok()
                .map(|reader| Cursor {
                    first_seq,
                    path,
                    reader,
                    ends_before: next,
                    high,
                    out_of_place,
                })
        } else {
            match next {
                Some(next) => self.open_cursor(next.max(want), high),
                None => return false,
            }
        };
        true
    }

    /// A reader from the start of the segment holding `seq`; `high`: the highest number the
    /// pass read so far (the segment before this one), `None` for a fresh pass.
    fn open_cursor(&self, seq: u64, high: Option<u64>) -> Option<Cursor> {
        let segments = self.state.lock_segments();
        let at = segments
            .iter()
            .rposition(|s| s.first_seq <= seq)
            .unwrap_or(0);
        let segment = segments.get(at)?;
        let ends_before = segments.get(at + 1).map(|s| s.first_seq);
        let reader =
            Reader::open_at(&segment.path, 0, self.state.read_limit(segment.first_seq)).ok()?;
        Some(Cursor {
            first_seq: segment.first_seq,
            path: segment.path.clone(),
            reader,
            ends_before,
            high,
            out_of_place: 0,
        })
    }

    fn next_segment_after(&self, first_seq: u64) -> Option<u64> {
        self.state
            .lock_segments()
            .iter()
            .map(|s| s.first_seq)
            .find(|f| *f > first_seq)
    }

    /// A parked record, read back from its place on disk (or, should that fail, found by a
    /// scan of its segment). `None` only when it cannot be read at all: reported and counted,
    /// as damage is.
    pub fn read_back(&self, seq: u64, at: Location) -> Option<Arc<Record>> {
        let path = self
            .state
            .lock_segments()
            .iter()
            .find(|s| s.first_seq == at.segment)
            .map(|s| s.path.clone());
        let found = path.as_ref().and_then(|path| {
            tokio::task::block_in_place(|| {
                segment::read_record_at(path, at.offset, seq)
                    .or_else(|| segment::find_record(path, seq))
            })
        });
        match found.map(|payload| decode_payload(&payload)) {
            Some(Ok(record)) => Some(Arc::new(record)),
            _ => {
                tracing::error!(
                    seq,
                    segment = at.segment,
                    "spool: a parked record cannot be read back from disk; counted as corrupt"
                );
                self.state.metrics.corrupt_records.inc();
                None
            }
        }
    }
}
