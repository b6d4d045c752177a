//! Segment files: `DIR/<first seq, 20 digits>.seg`, frames back to back. A segment that held a
//! corrupt record is renamed `….seg.corrupt` by recovery: still read, never deleted.
//!
//! Segments are preallocated: written with zeros to their full size and made durable before
//! the first record goes in (`DIR/spare.tmp`, prepared ahead by a thread of its own, then
//! renamed). Appending then overwrites blocks that exist, so an `fdatasync` writes the data and
//! nothing else: no block allocation, no inode (the size does not change). On this project's
//! VM that is a third less CPU per fsync and two I/O waits instead of four (docs/spool.md).
//! The written part ends at the first all-zero frame header; what follows it is zeros.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::frame::{self, Read, HEADER_BYTES};

const SUFFIX: &str = ".seg";
const CORRUPT_SUFFIX: &str = ".seg.corrupt";
const UNREADABLE_SUFFIX: &str = ".seg.unreadable";
/// A frame header's length, as a file offset.
pub const HEADER_BYTES_U64: u64 = HEADER_BYTES as u64;

/// A segment on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The sequence number of its first record (its name).
    pub first_seq: u64,
    pub path: PathBuf,
    /// Renamed by recovery after a corrupt record: kept for inspection once forwarded.
    pub corrupt: bool,
}

impl Segment {
    pub fn path_for(dir: &Path, first_seq: u64) -> PathBuf {
        dir.join(format!("{first_seq:020}{SUFFIX}"))
    }

    /// Renames it `….seg.corrupt`.
    pub fn set_aside(&mut self) -> io::Result<()> {
        let renamed = self.path.with_extension("seg.corrupt");
        super::fs::rename(&self.path, &renamed)?;
        self.path = renamed;
        self.corrupt = true;
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        fs::metadata(&self.path).map_or(0, |m| m.len())
    }
}

/// The segments in `dir`, in sequence order.
pub fn list(dir: &Path) -> io::Result<Vec<Segment>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let (stem, corrupt) = if let Some(stem) = name.strip_suffix(CORRUPT_SUFFIX) {
            (stem, true)
        } else if let Some(stem) = name.strip_suffix(SUFFIX) {
            (stem, false)
        } else {
            continue;
        };
        if let Ok(first_seq) = stem.parse() {
            segments.push(Segment {
                first_seq,
                path,
                corrupt,
            });
        }
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(segments)
}

/// Renames a segment that cannot be read `….seg.unreadable` (durably): never read or deleted
/// by the spool again.
pub fn set_aside_unreadable(path: &Path) -> io::Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(".unreadable");
    let aside = PathBuf::from(name);
    super::fs::rename(path, &aside)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(aside)
}

/// Segments set aside as unreadable, with the first sequence number of each.
pub fn list_unreadable(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(UNREADABLE_SUFFIX))
            .and_then(|stem| stem.parse().ok());
        if let Some(first) = first {
            found.push((first, path));
        }
    }
    Ok(found)
}

/// The preallocated file the next segment is made from.
pub const SPARE: &str = "spare.tmp";

/// How fast a spare is zeroed: as fast as the disk takes it, or spread over a time budget.
#[derive(Debug, Default)]
pub struct Pace {
    /// Finish in about this long (`None`: no pauses beyond the writeback's).
    pub budget: Option<std::time::Duration>,
    /// Set by the writer when it needs the spare now: the pauses stop.
    pub hurry: std::sync::atomic::AtomicBool,
}

/// Writes `DIR/spare.tmp`: `size` bytes of zeros, durable. A failure (a full disk) leaves no
/// file behind.
///
/// Written back a chunk at a time with a pause between chunks: one large writeback at the end
/// would queue the writer's next fdatasync behind tens of MiB, and every fdatasync's cache
/// flush carries what was written since the last one, so the zeros are spread over `pace`'s
/// budget (half the time the current segment is expected to take to fill) rather than sent
/// in a burst.
pub fn prepare_spare(dir: &Path, size: u64, pace: &Pace) -> io::Result<PathBuf> {
    let path = dir.join(SPARE);
    let started = std::time::Instant::now();
    let written = (|| {
        let mut file = super::fs::open(
            OpenOptions::new().create(true).truncate(true).write(true),
            &path,
        )?;
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut left = size;
        while left > 0 {
            let n = left.min(ZERO_CHUNK as u64) as usize;
            super::fs::write_all(&mut file, &zeros[..n], &path)?;
            left -= n as u64;
            let done = size - left;
            if left > 0 && done.is_multiple_of(ZERO_SYNC_BYTES) {
                super::fs::sync_data(&file, &path)?;
                let mut pause = ZERO_PAUSE;
                if let Some(budget) = pace.budget {
                    let due = budget.mul_f64(done as f64 / size as f64);
                    pause = pause.max(due.saturating_sub(started.elapsed()));
                }
                if !pace.hurry.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(pause.min(ZERO_MAX_PAUSE));
                }
            }
        }
        super::fs::sync_all(&file, &path)
    })();
    if let Err(err) = written {
        let _ = fs::remove_file(&path);
        return Err(err);
    }
    Ok(path)
}

/// Turns a prepared spare into the segment that starts at `first_seq`, durable with its
/// directory entry before any record is written to it.
pub fn install(dir: &Path, spare: &Path, first_seq: u64) -> io::Result<(Segment, File)> {
    let path = Segment::path_for(dir, first_seq);
    super::fs::rename(spare, &path)?;
    sync_dir(dir)?;
    let file = super::fs::open(OpenOptions::new().read(true).write(true), &path)?;
    Ok((
        Segment {
            first_seq,
            path,
            corrupt: false,
        },
        file,
    ))
}

/// Writes zeros over whatever is not zero in `from..` (a torn write after the last valid
/// frame of the last segment), durable; returns how far the non-zero bytes reached past
/// `from` (0: the rest was zeros already).
pub fn zero_from(path: &Path, from: u64) -> io::Result<u64> {
    let file = super::fs::open(OpenOptions::new().read(true).write(true), path)?;
    let len = file.metadata()?.len();
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut chunk = vec![0u8; ZERO_CHUNK];
    let (mut at, mut reached) = (from, 0);
    while at < len {
        let n = (len - at).min(ZERO_CHUNK as u64) as usize;
        super::fs::check(super::fs::Op::Read, path)?;
        file.read_exact_at(&mut chunk[..n], at)?;
        if let Some(last) = chunk[..n].iter().rposition(|b| *b != 0) {
            super::fs::write_all_at(&file, &zeros[..n], at, path)?;
            reached = at + last as u64 + 1 - from;
        }
        at += n as u64;
    }
    if reached > 0 {
        super::fs::sync_data(&file, path)?;
    }
    Ok(reached)
}

const ZERO_CHUNK: usize = 256 << 10;
/// How much of a spare is written back at once while it is prepared, and the pause after each.
const ZERO_SYNC_BYTES: u64 = 256 << 10;
const ZERO_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);
/// The longest pause between two chunks, whatever the budget.
const ZERO_MAX_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Makes the directory's entries (a created, renamed or deleted file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    super::fs::sync_all(&super::fs::open_read(dir)?, dir)
}

/// One step of reading a segment.
#[derive(Debug)]
pub enum Step {
    Record {
        seq: u64,
        payload: Bytes,
    },
    /// Damage at `offset`: the bytes up to the next valid frame were skipped.
    Skipped {
        offset: u64,
    },
    /// The end: `trailing` bytes after the last valid frame (a torn write in the last segment;
    /// damage elsewhere).
    End {
        trailing: u64,
    },
}

/// Reads a segment's frames in order, never past a limit: the segment being appended to is
/// read only up to its durable length (what a reader buffered beyond it could be a write in
/// progress).
pub struct Reader {
    /// For the file layer's injected read failures.
    path: PathBuf,
    file: BufReader<io::Take<File>>,
    /// Where the next frame starts.
    offset: u64,
    len: u64,
    done: bool,
    /// Ended at the zeroed, never written rest of a preallocated segment.
    unwritten: bool,
}

impl Reader {
    pub fn open(path: &Path) -> io::Result<Reader> {
        Reader::open_at(path, 0, None)
    }

    /// Opens `path` with the next frame at `offset` (where an earlier reader stopped), reading
    /// no further than `limit` bytes into the file.
    pub fn open_at(path: &Path, offset: u64, limit: Option<u64>) -> io::Result<Reader> {
        let file = super::fs::open_read(path)?;
        let len = file.metadata()?.len().min(limit.unwrap_or(u64::MAX));
        let offset = offset.min(len);
        Ok(Reader {
            path: path.to_owned(),
            file: bounded(file, offset, len)?,
            offset,
            len,
            done: false,
            unwritten: false,
        })
    }

    /// The offset just past the last frame returned (or skipped).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The reader stopped at the zeroed rest of a preallocated segment: nothing more was ever
    /// written to it (unlike the end of what could be read of a segment being appended to).
    pub fn at_unwritten(&self) -> bool {
        self.unwritten
    }

    pub fn next_step(&mut self) -> io::Result<Step> {
        if self.done {
            return Ok(Step::End { trailing: 0 });
        }
        super::fs::check(super::fs::Op::Read, &self.path)?;
        let left = self.len - self.offset;
        if left < HEADER_BYTES as u64 {
            // A sealed preallocated segment whose last batch left less room than a frame
            // header: zero slack is its clean end, not damage.
            let mut slack = [0u8; HEADER_BYTES];
            let slack = &mut slack[..left as usize];
            self.file.read_exact(slack)?;
            if slack.iter().all(|b| *b == 0) {
                self.unwritten = left > 0;
                return Ok(self.end(0));
            }
            return Ok(self.end(left));
        }
        let mut head = [0u8; HEADER_BYTES];
        self.file.read_exact(&mut head)?;
        if head == [0; HEADER_BYTES] {
            // The preallocated rest, if it is zeros to the end; else a damaged frame.
            let at = self.offset;
            return if self.rest_is_zero()? {
                self.unwritten = true;
                Ok(self.end(0))
            } else {
                self.resync(at)
            };
        }
        let claimed = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as u64 + 8;
        let at = self.offset;
        if claimed < HEADER_BYTES as u64 || claimed > frame::MAX_FRAME_BYTES as u64 {
            return self.resync(at);
        }
        if claimed > left {
            // A torn last write, or a damaged length: only a valid frame further on tells.
            return self.resync(at);
        }
        let mut whole = Vec::with_capacity(claimed as usize);
        whole.extend_from_slice(&head);
        whole.resize(claimed as usize, 0);
        self.file.read_exact(&mut whole[HEADER_BYTES..])?;
        match frame::read_frame(&Bytes::from(whole)) {
            Read::Frame { seq, payload, .. } => {
                self.offset += claimed;
                Ok(Step::Record { seq, payload })
            }
            Read::Corrupt { .. } | Read::Short => self.resync(at),
        }
    }

    /// After a frame at `at` failed its check: the next offset where a whole, valid frame
    /// starts (a skipped record), or the end (nothing valid after it: a torn tail, or a
    /// segment whose rest is lost). Reads the rest of the segment: only ever on damage.
    fn resync(&mut self, at: u64) -> io::Result<Step> {
        let mut rest = Vec::new();
        bounded(self.file.get_ref().get_ref().try_clone()?, at + 1, self.len)?
            .read_to_end(&mut rest)?;
        let rest = Bytes::from(rest);
        for i in 0..rest.len() {
            if let Read::Frame { .. } = frame::read_frame(&rest.slice(i..)) {
                self.offset = at + 1 + i as u64;
                self.file = bounded(
                    self.file.get_ref().get_ref().try_clone()?,
                    self.offset,
                    self.len,
                )?;
                return Ok(Step::Skipped { offset: at });
            }
        }
        self.offset = at;
        Ok(self.end(self.len - at))
    }

    /// Whether everything after the header just read is zeros (reads it: once per segment).
    fn rest_is_zero(&mut self) -> io::Result<bool> {
        let mut chunk = vec![0u8; ZERO_CHUNK];
        loop {
            let n = self.file.read(&mut chunk)?;
            if n == 0 {
                return Ok(true);
            }
            if chunk[..n].iter().any(|b| *b != 0) {
                return Ok(false);
            }
        }
    }

    fn end(&mut self, trailing: u64) -> Step {
        self.done = true;
        Step::End { trailing }
    }
}

/// The payload of record `seq` whose frame starts at `offset` in `path`; `None` when it is not
/// there.
pub fn read_record_at(path: &Path, offset: u64, seq: u64) -> Option<Bytes> {
    let mut reader = Reader::open_at(path, offset, None).ok()?;
    match reader.next_step() {
        Ok(Step::Record {
            seq: found,
            payload,
        }) if found == seq => Some(payload),
        _ => None,
    }
}

/// The payload of record `seq`, found by reading `path` from its start.
pub fn find_record(path: &Path, seq: u64) -> Option<Bytes> {
    let mut reader = Reader::open(path).ok()?;
    loop {
        match reader.next_step().ok()? {
            Step::Record {
                seq: found,
                payload,
            } if found == seq => return Some(payload),
            Step::Record { .. } | Step::Skipped { .. } => {}
            Step::End { .. } => return None,
        }
    }
}

/// `file` from `offset` up to `len`, buffered.
fn bounded(mut file: File, offset: u64, len: u64) -> io::Result<BufReader<io::Take<File>>> {
    io::Seek::seek(&mut file, io::SeekFrom::Start(offset))?;
    Ok(BufReader::with_capacity(
        256 << 10,
        file.take(len.saturating_sub(offset)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::frame::{encode_payload, put_frame, tests::record};

    /// A preallocated segment of `size` with records `first..first + count` at its start.
    fn preallocated(dir: &Path, first: u64, count: u64, size: u64) -> (PathBuf, u64) {
        let spare = prepare_spare(dir, size, &Pace::default()).unwrap();
        let (segment, file) = install(dir, &spare, first).unwrap();
        let mut buf = Vec::new();
        for seq in first..first + count {
            put_frame(&mut buf, seq, &encode_payload(&record("g", seq)));
        }
        file.write_all_at(&buf, 0).unwrap();
        (segment.path, buf.len() as u64)
    }

    fn read_all(path: &Path) -> (Vec<u64>, Vec<u64>, u64, bool) {
        let mut reader = Reader::open(path).unwrap();
        let (mut seqs, mut skipped) = (Vec::new(), Vec::new());
        loop {
            match reader.next_step().unwrap() {
                Step::Record { seq, .. } => seqs.push(seq),
                Step::Skipped { offset } => skipped.push(offset),
                Step::End { trailing } => return (seqs, skipped, trailing, reader.at_unwritten()),
            }
        }
    }

    #[test]
    fn the_zeroed_rest_of_a_preallocated_segment_is_its_clean_end() {
        let dir = tempfile::tempdir().unwrap();
        let (path, written) = preallocated(dir.path(), 5, 10, 64 << 10);
        assert_eq!(fs::metadata(&path).unwrap().len(), 64 << 10);
        assert!(!dir.path().join(SPARE).exists());
        let (seqs, skipped, trailing, unwritten) = read_all(&path);
        assert_eq!(seqs, (5..15).collect::<Vec<_>>());
        assert!(skipped.is_empty());
        assert_eq!(trailing, 0);
        assert!(unwritten);
        // Nothing to zero after the last record.
        assert_eq!(zero_from(&path, written).unwrap(), 0);
    }

    /// A sealed segment whose records end 1 to 15 bytes before its preallocated size: the
    /// zero slack is its end (an earlier build counted it as damage and set the segment aside).
    #[test]
    fn zero_slack_shorter_than_a_header_is_a_clean_end() {
        let dir = tempfile::tempdir().unwrap();
        let (path, written) = preallocated(dir.path(), 1, 10, 64 << 10);
        for slack in 1..HEADER_BYTES as u64 {
            fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(written + slack)
                .unwrap();
            let (seqs, skipped, trailing, _) = read_all(&path);
            assert_eq!(seqs.len(), 10, "slack {slack}");
            assert_eq!((skipped.len(), trailing), (0, 0), "slack {slack}");
        }
        // Non-zero bytes there are still a torn write.
        let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[7], written + 3).unwrap();
        let (_, _, trailing, _) = read_all(&path);
        assert!(trailing > 0);
    }

    #[test]
    fn a_zeroed_frame_before_more_records_is_damage_not_the_end() {
        // A lost sector in the middle must not hide the records after it.
        let dir = tempfile::tempdir().unwrap();
        let (path, written) = preallocated(dir.path(), 1, 10, 64 << 10);
        let frame = written / 10;
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&vec![0; frame as usize], 3 * frame)
            .unwrap();
        let (seqs, skipped, trailing, _) = read_all(&path);
        assert_eq!(seqs, vec![1, 2, 3, 5, 6, 7, 8, 9, 10]);
        assert_eq!(skipped, vec![3 * frame]);
        assert_eq!(trailing, 0);
    }

    #[test]
    fn a_torn_write_is_zeroed_and_appending_resumes_after_the_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let (path, written) = preallocated(dir.path(), 1, 10, 64 << 10);
        // Half a frame of an eleventh record, never made durable, then a crash.
        let mut torn = Vec::new();
        put_frame(&mut torn, 11, &encode_payload(&record("g", 11)));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&torn[..torn.len() / 2], written).unwrap();
        let (seqs, _, trailing, _) = read_all(&path);
        assert_eq!(seqs.len(), 10);
        assert!(trailing > 0);
        // It reports how far the non-zero bytes reached.
        let reach = torn[..torn.len() / 2]
            .iter()
            .rposition(|b| *b != 0)
            .unwrap()
            + 1;
        assert_eq!(zero_from(&path, written).unwrap(), reach as u64);
        let (seqs, skipped, trailing, unwritten) = read_all(&path);
        assert_eq!(
            (seqs.len(), skipped.len(), trailing, unwritten),
            (10, 0, 0, true)
        );
        // The record written where the torn one was reads back whole.
        let mut next = Vec::new();
        put_frame(&mut next, 11, &encode_payload(&record("g", 11)));
        file.write_all_at(&next, written).unwrap();
        let (seqs, skipped, trailing, _) = read_all(&path);
        assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
        assert_eq!((skipped.len(), trailing), (0, 0));
    }
}
