//! Start-up: scan every segment, cut a torn tail off the last one, set aside segments with a
//! corrupt record or a break in the sequence numbers (`sequence.rs`), and find where appending
//! resumes. Always finishes: damage is reported and
//! stepped over, never a reason not to start.

use std::io;
use std::path::Path;

use super::segment::{self, Reader, Segment, Step};
use super::{frame, sequence};

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
    /// answered 200). Segments after it that held no record are removed, not counted here.
    pub torn_bytes: u64,
    /// Records that failed their check (skipped), and segments set aside because of them.
    pub corrupt_records: u64,
    pub corrupt_segments: Vec<Segment>,
    /// Places where the sequence numbers do not follow each other (a number missing or
    /// repeated, within a segment or between two): each sets its segments aside.
    pub sequence_breaks: u64,
    /// Segments that could not be read at all (EIO, EACCES, a directory in their place):
    /// renamed `….seg.unreadable`, kept for an operator, and stepped over.
    pub unreadable_segments: Vec<std::path::PathBuf>,
}

/// Recovers the spool in `dir`, whose forwarder had acknowledged everything up to `position`.
pub fn recover(dir: &Path, position: u64) -> io::Result<Recovered> {
    let mut found = Recovered::default();
    let mut segments = segment::list(dir)?;
    let files = segments.len();
    // Segments at the end that were created and never written (zeros, or nothing). Their
    // existence tells that every batch before them was made durable (a segment is made only
    // after the batch before it was synced, and after a restart only after recovery): the
    // segment before them is not the last one, whose tail may be torn. They are removed after
    // the others were set aside, and after the directory is synced, so that a crash in
    // between never shows the next start that segment as the last file.
    let (keep, mut cached) = unwritten_end(&segments, position);
    let unwritten: Vec<Segment> = segments.drain(keep..).collect();
    let count = segments.len();
    // Sequence numbers that set-aside unreadable segments may hold: never given out again.
    let mut unreadable = segment::list_unreadable(dir)?;
    unreadable.sort();
    for (first_seq, path) in &unreadable {
        found.last_seq = found.last_seq.max(reserved_until(*first_seq, path));
    }
    let mut unreadable = unreadable.into_iter().peekable();
    let mut across = sequence::Across::new(position);
    for (i, mut segment) in segments.into_iter().enumerate() {
        // The last file in the directory: the only one whose tail can be a write that was
        // never made durable.
        let last = i + 1 == count && count == files;
        while let Some((first, _)) = unreadable.next_if(|(f, _)| *f < segment.first_seq) {
            across.unreadable(first);
        }
        // A read that fails once (a transient EIO) is tried again before the segment is set
        // aside for good.
        let cached = if i + 1 == count { cached.take() } else { None };
        let scanned = cached
            .map_or_else(|| scan(&segment.path, segment.first_seq, position), Ok)
            .or_else(|_| scan(&segment.path, segment.first_seq, position))
            .or_else(|_| scan(&segment.path, segment.first_seq, position));
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
                across.unreadable(segment.first_seq);
                continue;
            }
        };
        let (mut high, mut frames) = (scan.high, scan.frames);
        found.unforwarded += scan.unforwarded;
        let mut damaged = scan.skipped;
        // Bytes after the last record, or a filler with no record after it.
        let tail = scan.trailing > 0 || scan.filler_at_end.is_some();
        // A tail is cut only from the last file, with no damage before it, not set aside.
        // After damage stepped over, zeroing could complete a frame that starts in that damage
        // and reaches into the tail (its CRC would then pass, and it would hide the records
        // after it). Nothing is appended to a set-aside segment, nor to one with a file after
        // it: their tail is not a torn write but a record answered 200 and damaged since (a
        // filler is written in the same write as the record after it). Such a tail is kept
        // and counted as damage, the same at every start.
        if last && tail && scan.skipped == 0 && !segment.corrupt {
            // Damage after the last valid record of the last segment is a torn write: the
            // fsync that would have answered 200 never returned. So is a filler with no record
            // after it: it is only ever written in front of a record, in the same write.
            // Zeroed (the segment is preallocated), so that nothing of it is ever read again;
            // the numbers of a cut filler held nothing and may be given out again.
            let from = match scan.filler_at_end {
                Some((offset, before, run)) => {
                    (high, frames) = (before, frames - run);
                    offset
                }
                None => scan.len - scan.trailing,
            };
            found.torn_bytes = segment::zero_from(&segment.path, from)?;
            tracing::warn!(
                segment = %segment.path.display(),
                bytes = found.torn_bytes,
                "spool recovery: zeroed a torn write at the end of the last segment (it was never answered 200)"
            );
        } else if tail {
            damaged += 1;
        }
        found.last_seq = found.last_seq.max(high.unwrap_or(0));
        // The numbers: within the segment, and from the segment before it. A break at the
        // start of this segment sets both aside (the earlier holds the frames a repeat
        // supersedes, or the last record before a gap).
        let between = across.segment(segment.first_seq);
        across.ended(segment.first_seq, high, scan.damaged_end);
        let mut breaks = scan.breaks;
        if let Some(between) = between {
            breaks.insert(0, between);
            if let Some(before) = found.segments.last_mut() {
                let old = before.path.clone();
                if !before.corrupt {
                    before.set_aside()?;
                    found.corrupt_segments.push(before.clone());
                }
                tracing::error!(
                    segment = %old.display(),
                    set_aside_as = %before.path.display(),
                    next = %segment.path.display(),
                    expected = between.expected,
                    found = between.found,
                    "spool recovery: the next segment does not follow this one; both are set \
                     aside, kept for inspection and forwarded"
                );
            }
        }
        let old = segment.path.clone();
        if (damaged > 0 || !breaks.is_empty()) && !segment.corrupt {
            segment.set_aside()?;
        }
        if let Some(at) = breaks.first() {
            // One line per segment, however many breaks it holds (`spool inspect` lists them).
            tracing::error!(
                segment = %old.display(),
                set_aside_as = %segment.path.display(),
                breaks = breaks.len(),
                expected = at.expected,
                found = at.found,
                "spool recovery: a break in the sequence numbers ({at}, the first); the segment is \
                 kept for inspection and forwarded (a number out of place is logged, never \
                 skipped silently)"
            );
        }
        found.sequence_breaks += breaks.len() as u64;
        if damaged > 0 {
            found.corrupt_records += damaged;
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
        if last && frames == 0 && !segment.corrupt {
            // The last file, empty once its torn write was cut (or never written, when the
            // read before the loop failed): removed; appending starts a new one.
            super::fs::remove_file(&segment.path)?;
            continue;
        }
        found.segments.push(segment);
    }
    // A set-aside segment's name is never given out again, even when no frame of it can be
    // read: a new segment of that name beside it would be renamed over it when set aside.
    for segment in found.segments.iter().filter(|s| s.corrupt) {
        found.last_seq = found.last_seq.max(segment.first_seq);
    }
    if !unwritten.is_empty() {
        segment::sync_dir(dir)?;
        for segment in unwritten {
            super::fs::remove_file(&segment.path)?;
            tracing::info!(
                segment = %segment.path.display(),
                "spool recovery: removed a segment at the end that was never written"
            );
        }
    }
    Ok(found)
}

/// How many segments to keep: all but those at the end that were never written (no frame, no
/// damage: zeros or nothing), with the last kept one's scan, so that it is not read twice.
fn unwritten_end(segments: &[Segment], position: u64) -> (usize, Option<Scan>) {
    let mut keep = segments.len();
    while let Some(segment) = keep.checked_sub(1).map(|i| &segments[i]) {
        if segment.corrupt {
            break;
        }
        // A read error is left to the loop, which tries again and sets the segment aside.
        let Ok(scan) = scan(&segment.path, segment.first_seq, position) else {
            break;
        };
        if scan.frames > 0 || scan.skipped > 0 || scan.trailing > 0 {
            return (keep, Some(scan));
        }
        keep -= 1;
    }
    (keep, None)
}

/// The highest sequence number a segment starting at `first_seq` can hold, from its size
/// (every frame takes more than a header): numbers up to it are not reused.
fn reserved_until(first_seq: u64, path: &Path) -> u64 {
    let len = std::fs::symlink_metadata(path).map_or(0, |m| m.len());
    first_seq + len / segment::HEADER_BYTES_U64
}

struct Scan {
    len: u64,
    /// Frames read, fillers included.
    frames: u64,
    /// The highest number a frame covered.
    high: Option<u64>,
    unforwarded: u64,
    /// Damaged places stepped over, with valid records after them.
    skipped: u64,
    /// Bytes after the last valid record.
    trailing: u64,
    /// Where the numbers do not follow each other.
    breaks: Vec<sequence::Break>,
    /// Ended in damage: the next segment may start further on.
    damaged_end: bool,
    /// The last frames are fillers (one, or a run with no record between them): the first
    /// one's offset, the highest number before it, and how many. Cut, they all go, so that the
    /// next start does not find a filler at the end again.
    filler_at_end: Option<(u64, Option<u64>, u64)>,
}

fn scan(path: &Path, first_seq: u64, position: u64) -> io::Result<Scan> {
    let mut reader = Reader::open(path)?;
    let mut scan = Scan {
        len: std::fs::metadata(path)?.len(),
        frames: 0,
        high: None,
        unforwarded: 0,
        skipped: 0,
        trailing: 0,
        breaks: Vec::new(),
        damaged_end: false,
        filler_at_end: None,
    };
    let mut check = sequence::InSegment::new(first_seq);
    loop {
        let offset = reader.offset();
        match reader.next_step()? {
            Step::Record { seq, payload } => {
                scan.frames += 1;
                let before = check.high();
                scan.breaks.extend(check.frame(seq, &payload));
                scan.high = check.high();
                if frame::filler_first(seq, &payload).is_some() {
                    match &mut scan.filler_at_end {
                        Some((_, _, run)) => *run += 1,
                        None => scan.filler_at_end = Some((offset, before, 1)),
                    }
                } else {
                    scan.filler_at_end = None;
                    scan.unforwarded += u64::from(seq > position);
                }
            }
            Step::Skipped { .. } => {
                scan.skipped += 1;
                check.damage();
            }
            Step::End { trailing } => {
                scan.trailing = trailing;
                scan.damaged_end = check.ended_in_damage() || trailing > 0;
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

    /// Breaks within a segment and between two are counted, and their segments set aside.
    #[test]
    fn breaks_in_the_numbers_are_counted_and_their_segments_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 10);
        // 11..=15 missing between the segments; 20 and 21 missing within the third.
        write_segment(dir.path(), 16, 4);
        let mut third = Vec::new();
        for seq in [22, 23] {
            put_frame(&mut third, seq, &encode_payload(&record("g", seq)));
        }
        std::fs::write(Segment::path_for(dir.path(), 20), third).unwrap();
        let found = recover(dir.path(), 0).unwrap();
        assert_eq!(found.sequence_breaks, 2);
        assert_eq!(found.corrupt_records, 0);
        let aside: Vec<u64> = found.corrupt_segments.iter().map(|s| s.first_seq).collect();
        assert_eq!(aside, [1, 16, 20]);
        assert_eq!(found.last_seq, 23);
        assert_eq!(found.unforwarded, 10 + 4 + 2);
        // Once the position passed the gap, a set-aside segment kept behind it is no break.
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 10);
        write_segment(dir.path(), 500, 10);
        assert_eq!(recover(dir.path(), 499).unwrap().sequence_breaks, 0);
    }

    /// A filler is only ever written in front of a record: one at the end of the last segment
    /// is a torn write and cut, and its numbers are free again.
    #[test]
    fn a_filler_with_no_record_after_it_is_cut_like_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 1, 3);
        let mut bytes = std::fs::read(&path).unwrap();
        let written = bytes.len();
        frame::put_filler(&mut bytes, 4, 5);
        bytes.resize(4096, 0);
        std::fs::write(&path, &bytes).unwrap();
        let found = recover(dir.path(), 0).unwrap();
        assert_eq!((found.last_seq, found.sequence_breaks), (3, 0));
        assert!(found.torn_bytes > 0);
        assert!(std::fs::read(&path).unwrap()[written..]
            .iter()
            .all(|b| *b == 0));
        // Alone in the last segment: the segment goes, as an empty one does.
        let mut filler = Vec::new();
        frame::put_filler(&mut filler, 4, 5);
        let alone = Segment::path_for(dir.path(), 4);
        std::fs::write(&alone, filler).unwrap();
        let found = recover(dir.path(), 0).unwrap();
        assert_eq!((found.last_seq, found.sequence_breaks), (3, 0));
        assert!(!alone.exists());
        // Followed by a record, it stands for its numbers.
        let mut more = Vec::new();
        frame::put_filler(&mut more, 4, 5);
        put_frame(&mut more, 6, &encode_payload(&record("g", 6)));
        std::fs::write(&alone, more).unwrap();
        let found = recover(dir.path(), 0).unwrap();
        assert_eq!((found.last_seq, found.sequence_breaks), (6, 0));
        assert_eq!(found.unforwarded, 3 + 1);
    }

    /// Every record of a segment, read as the forwarder reads it (fillers left out).
    fn readable(path: &Path) -> Vec<u64> {
        let mut reader = Reader::open(path).unwrap();
        let mut seqs = Vec::new();
        loop {
            match reader.next_step().unwrap() {
                Step::Record { seq, payload } if frame::filler_first(seq, &payload).is_none() => {
                    seqs.push(seq)
                }
                Step::End { .. } => return seqs,
                _ => {}
            }
        }
    }

    /// Records 1 and 2, record 3 damaged, and a filler with no record after it (its batch
    /// torn). Record 3 had been answered 200: it is counted as corrupt at every start, never
    /// cut as a torn write at the second (which it was, once the first start had cut the
    /// filler). Found by the recovery fuzz target.
    #[test]
    fn damage_before_a_cut_filler_is_counted_the_same_at_every_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 1, 3);
        let mut bytes = std::fs::read(&path).unwrap();
        let third = std::fs::read(write_segment(tempfile::tempdir().unwrap().path(), 1, 2))
            .unwrap()
            .len();
        bytes[third + 20] ^= 0x40;
        frame::put_filler(&mut bytes, 4, 5);
        bytes.resize(4096, 0);
        std::fs::write(&path, &bytes).unwrap();

        let first = recover(dir.path(), 0).unwrap();
        let again = recover(dir.path(), 0).unwrap();
        for found in [&first, &again] {
            // Record 3, and the filler kept (in a segment with damage it is not cut).
            assert_eq!(found.corrupt_records, 2);
            assert_eq!(found.torn_bytes, 0);
            assert_eq!(found.corrupt_segments.len(), 1);
            assert!(found.last_seq >= 3);
        }
        assert_eq!(first.last_seq, again.last_seq);
        assert_eq!(readable(&again.segments[0].path), [1, 2]);
    }

    /// Segments at the end that were never written (created, then the process died) are
    /// removed first; the segment before them is not the last file: every batch in it was
    /// durable before they were made, so damage at its end is a record answered 200, set
    /// aside and counted at this start and the next, never cut. Here record 3 lost its last
    /// byte, or a filler lost the record written after it.
    #[test]
    fn unwritten_segments_at_the_end_go_and_the_one_before_them_keeps_its_tail() {
        for filler in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = write_segment(dir.path(), 1, 3);
            let mut bytes = std::fs::read(&path).unwrap();
            if filler {
                frame::put_filler(&mut bytes, 4, 5);
            } else {
                bytes.pop();
            }
            bytes.resize(bytes.len() + 64, 0);
            std::fs::write(&path, &bytes).unwrap();
            std::fs::write(Segment::path_for(dir.path(), 6), [0u8; 64]).unwrap();
            std::fs::write(Segment::path_for(dir.path(), 7), []).unwrap();

            let first = recover(dir.path(), 0).unwrap();
            assert!(!Segment::path_for(dir.path(), 6).exists());
            assert!(!Segment::path_for(dir.path(), 7).exists());
            let again = recover(dir.path(), 0).unwrap();
            for found in [&first, &again] {
                assert_eq!(found.torn_bytes, 0, "filler {filler}");
                assert_eq!(found.corrupt_records, 1, "filler {filler}");
                assert_eq!(found.corrupt_segments.len(), 1, "filler {filler}");
                // Past every readable record (the filler's numbers too); a damaged record's
                // number may be given out again, as for damage anywhere.
                assert_eq!(
                    found.last_seq,
                    if filler { 5 } else { 2 },
                    "filler {filler}"
                );
            }
            let kept = &again.segments[0].path;
            assert!(kept.to_str().unwrap().ends_with(".seg.corrupt"));
            let expected: &[u64] = if filler { &[1, 2, 3] } else { &[1, 2] };
            assert_eq!(readable(kept), expected, "filler {filler}");
            assert_eq!(std::fs::read(kept).unwrap(), bytes, "nothing of it zeroed");
        }
    }

    /// Two fillers at the end of the last segment, no record after them (a crafted spool:
    /// the writer puts a record after each filler): both are cut at the first start, so the
    /// second does not find the first one at the end and count it. Found by the recovery
    /// fuzz target.
    #[test]
    fn a_run_of_fillers_at_the_end_is_cut_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 1, 3);
        let mut bytes = std::fs::read(&path).unwrap();
        let written = bytes.len();
        frame::put_filler(&mut bytes, 4, 4);
        frame::put_filler(&mut bytes, 5, 6);
        bytes.resize(4096, 0);
        std::fs::write(&path, &bytes).unwrap();
        let first = recover(dir.path(), 0).unwrap();
        assert_eq!((first.last_seq, first.corrupt_records), (3, 0));
        assert!(first.torn_bytes > 0);
        assert!(std::fs::read(&path).unwrap()[written..]
            .iter()
            .all(|b| *b == 0));
        let again = recover(dir.path(), 0).unwrap();
        assert_eq!(
            (again.last_seq, again.corrupt_records, again.torn_bytes),
            (3, 0, 0)
        );
    }

    /// A set-aside segment of which nothing can be read still holds its name: appending
    /// resumes past it, so that no new segment takes the name (a break would later rename the
    /// new one over the damaged one). Found in review.
    #[test]
    fn a_set_aside_segment_with_nothing_readable_keeps_its_name() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 3);
        let aside = dir.path().join("00000000000000000004.seg.corrupt");
        assert_eq!(
            Segment::path_for(dir.path(), 4).with_extension("seg.corrupt"),
            aside
        );
        std::fs::write(&aside, [0xab; 40]).unwrap();
        let found = recover(dir.path(), 0).unwrap();
        assert!(found.last_seq >= 4, "resumes at {}", found.last_seq);
    }

    /// A frame that starts in damage and reaches into a torn tail, whose CRC matches the
    /// bytes once that tail is zeroed (a crafted spool, or a 32-bit coincidence): recovery
    /// must not complete it, or the reader would return it and step over records 2 and 3,
    /// answered 200. Found by the recovery fuzz target.
    #[test]
    fn cutting_a_torn_tail_never_completes_a_frame_over_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        put_frame(&mut bytes, 1, &encode_payload(&record("g", 1)));
        let forged = bytes.len();
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&900u64.to_le_bytes());
        bytes.extend_from_slice(b"junk");
        for seq in [2, 3] {
            put_frame(&mut bytes, seq, &encode_payload(&record("g", seq)));
        }
        let torn = bytes.len();
        bytes.extend_from_slice(&[0xab; 20]);
        // The forged frame's length reaches the end of the file; its CRC is that of the bytes
        // as they would be once the tail is zeroed.
        let mut zeroed = bytes.clone();
        zeroed[torn..].fill(0);
        let len = (bytes.len() - forged - 8) as u32;
        let crc = crc32c::crc32c(&zeroed[forged + 8..]);
        bytes[forged..forged + 4].copy_from_slice(&len.to_le_bytes());
        bytes[forged + 4..forged + 8].copy_from_slice(&crc.to_le_bytes());
        let path = Segment::path_for(dir.path(), 1);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(readable(&path), [1, 2, 3]);

        let first = recover(dir.path(), 0).unwrap();
        assert_eq!(first.last_seq, 3);
        // The damage and the tail after it, kept and counted.
        assert_eq!((first.corrupt_records, first.torn_bytes), (2, 0));
        assert_eq!(readable(&first.segments[0].path), [1, 2, 3]);
        let again = recover(dir.path(), 0).unwrap();
        assert_eq!((again.corrupt_records, again.last_seq), (2, 3));
        assert_eq!(readable(&again.segments[0].path), [1, 2, 3]);
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
