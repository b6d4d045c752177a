//! Start-up: scan every segment, cut a torn tail off the last one, set aside segments with a
//! corrupt record, and find where appending resumes. Always finishes: damage is reported and
//! stepped over, never a reason not to start.

use std::io;
use std::path::Path;

use super::segment::{self, Reader, Segment, Step};

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The segments left, in order (set-aside ones included: they are still read).
    pub segments: Vec<Segment>,
    /// The highest sequence number on disk (0 when empty).
    pub last_seq: u64,
    /// Whole records found after the acknowledged position: the backlog to forward.
    pub unforwarded: u64,
    /// Bytes cut off the last segment (a write that never reached stable storage, so never
    /// answered 200).
    pub torn_bytes: u64,
    /// Records that failed their check (skipped), and segments set aside because of them.
    pub corrupt_records: u64,
    pub corrupt_segments: Vec<Segment>,
    /// Segments that could not be read at all (EIO, EACCES, a directory in their place):
    /// renamed `….seg.unreadable`, kept for an operator, and stepped over.
    pub unreadable_segments: Vec<std::path::PathBuf>,
}

/// Recovers the spool in `dir`, whose forwarder had acknowledged everything up to `position`.
pub fn recover(dir: &Path, position: u64) -> io::Result<Recovered> {
    let mut found = Recovered::default();
    let segments = segment::list(dir)?;
    let count = segments.len();
    // Sequence numbers that set-aside unreadable segments may hold: never given out again.
    for (first_seq, path) in segment::list_unreadable(dir)? {
        found.last_seq = found.last_seq.max(reserved_until(first_seq, &path));
    }
    for (i, mut segment) in segments.into_iter().enumerate() {
        let last = i + 1 == count;
        // A read that fails once (a transient EIO) is tried again before the segment is set
        // aside for good.
        let scanned = scan(&segment.path, position)
            .or_else(|_| scan(&segment.path, position))
            .or_else(|_| scan(&segment.path, position));
        let scan = match scanned {
            Ok(scan) => scan,
            Err(err) => {
                // One bad file must not make every start exit: it is set aside (a rename
                // needs the directory only) and the rest is served. Only a directory that
                // cannot be changed is fatal.
                let aside = segment::set_aside_unreadable(&segment.path)?;
                found.last_seq = found
                    .last_seq
                    .max(reserved_until(segment.first_seq, &aside));
                tracing::error!(
                    segment = %segment.path.display(),
                    set_aside_as = %aside.display(),
                    error = %err,
                    "spool recovery: a segment cannot be read; set aside, the rest is forwarded \
                     (its records stay in that file: docs/spool.md says how to forward them)"
                );
                found.unreadable_segments.push(aside);
                continue;
            }
        };
        found.last_seq = found.last_seq.max(scan.last_seq);
        found.unforwarded += scan.unforwarded;
        let mut damaged = scan.skipped;
        if last && scan.trailing > 0 {
            // Damage after the last valid record of the last segment is a torn write: the
            // fsync that would have answered 200 never returned.
            // Zeroed (the segment is preallocated), so that nothing of it is ever read again.
            found.torn_bytes = segment::zero_from(&segment.path, scan.len - scan.trailing)?;
            tracing::warn!(
                segment = %segment.path.display(),
                bytes = found.torn_bytes,
                "spool recovery: zeroed a torn write at the end of the last segment (it was never answered 200)"
            );
        } else if scan.trailing > 0 {
            damaged += 1;
        }
        if damaged > 0 {
            found.corrupt_records += damaged;
            let old = segment.path.clone();
            if !segment.corrupt {
                segment.set_aside()?;
            }
            tracing::error!(
                segment = %old.display(),
                set_aside_as = %segment.path.display(),
                corrupt_records = damaged,
                "spool recovery: corrupt records skipped; the segment is kept for inspection and the rest forwarded"
            );
        }
        if segment.corrupt {
            found.corrupt_segments.push(segment.clone());
        }
        if last && scan.records == 0 && !segment.corrupt {
            // An empty last segment (created, nothing written): appending starts a new one.
            super::fs::remove_file(&segment.path)?;
            continue;
        }
        found.segments.push(segment);
    }
    Ok(found)
}

/// The highest sequence number a segment starting at `first_seq` can hold, from its size
/// (every frame takes more than a header): numbers up to it are not reused.
fn reserved_until(first_seq: u64, path: &Path) -> u64 {
    let len = std::fs::symlink_metadata(path).map_or(0, |m| m.len());
    first_seq + len / segment::HEADER_BYTES_U64
}

struct Scan {
    len: u64,
    records: u64,
    last_seq: u64,
    unforwarded: u64,
    /// Damaged places stepped over, with valid records after them.
    skipped: u64,
    /// Bytes after the last valid record.
    trailing: u64,
}

fn scan(path: &Path, position: u64) -> io::Result<Scan> {
    let mut reader = Reader::open(path)?;
    let mut scan = Scan {
        len: std::fs::metadata(path)?.len(),
        records: 0,
        last_seq: 0,
        unforwarded: 0,
        skipped: 0,
        trailing: 0,
    };
    loop {
        match reader.next_step()? {
            Step::Record { seq, .. } => {
                scan.records += 1;
                scan.last_seq = scan.last_seq.max(seq);
                scan.unforwarded += u64::from(seq > position);
            }
            Step::Skipped { .. } => scan.skipped += 1,
            Step::End { trailing } => {
                scan.trailing = trailing;
                return Ok(scan);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::frame::{encode_payload, put_frame, tests::record};
    use std::fs::OpenOptions;

    fn write_segment(dir: &Path, first: u64, count: u64) -> std::path::PathBuf {
        let mut buf = Vec::new();
        for seq in first..first + count {
            put_frame(&mut buf, seq, &encode_payload(&record("g", seq)));
        }
        let path = Segment::path_for(dir, first);
        std::fs::write(&path, buf).unwrap();
        path
    }

    /// Wherever the byte is (a length, a CRC, a payload), only its record is lost.
    #[test]
    fn a_torn_tail_is_cut_and_a_flipped_byte_sets_its_segment_aside() {
        let frame = std::fs::read(write_segment(tempfile::tempdir().unwrap().path(), 1, 1))
            .unwrap()
            .len();
        for at in [
            5 * frame,
            5 * frame + 2,
            5 * frame + 6,
            5 * frame + 13,
            5 * frame + 40,
        ] {
            flipped_at(at);
        }
    }

    fn flipped_at(at: usize) {
        let dir = tempfile::tempdir().unwrap();
        let first = write_segment(dir.path(), 1, 10);
        let second = write_segment(dir.path(), 11, 10);
        // A byte flipped in the first segment (in its sixth record), the second torn
        // mid-record.
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[at] ^= 0x40;
        std::fs::write(&first, bytes).unwrap();
        let len = std::fs::metadata(&second).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&second)
            .unwrap()
            .set_len(len - 7)
            .unwrap();

        let found = recover(dir.path(), 3).unwrap();
        assert_eq!(found.corrupt_records, 1, "flip at {at}");
        assert_eq!(found.corrupt_segments.len(), 1);
        assert!(found.corrupt_segments[0]
            .path
            .to_str()
            .unwrap()
            .ends_with(".seg.corrupt"));
        assert!(found.torn_bytes > 0);
        // 9 intact in the first (3 of them forwarded), 9 whole in the second.
        assert_eq!(found.last_seq, 19);
        assert_eq!(found.unforwarded, 9 - 3 + 9, "flip at {at}");
        assert_eq!(found.segments.len(), 2);
        // A second recovery finds a clean tail and the same set-aside segment.
        let again = recover(dir.path(), 3).unwrap();
        assert_eq!(again.torn_bytes, 0);
        assert_eq!(again.last_seq, 19);
        assert_eq!(again.corrupt_segments.len(), 1);
    }
}
