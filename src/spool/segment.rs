//! Segment files: `DIR/<first seq, 20 digits>.seg`, frames back to back. A segment that held a
//! corrupt record is renamed `….seg.corrupt` by recovery: still read, never deleted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::frame::{self, Read, HEADER_BYTES};

const SUFFIX: &str = ".seg";
const CORRUPT_SUFFIX: &str = ".seg.corrupt";

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
        fs::rename(&self.path, &renamed)?;
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

/// Creates the segment that starts at `first_seq`, durable with its directory entry before
/// any record is written to it.
pub fn create(dir: &Path, first_seq: u64) -> io::Result<(Segment, File)> {
    let path = Segment::path_for(dir, first_seq);
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok((
        Segment {
            first_seq,
            path,
            corrupt: false,
        },
        file,
    ))
}

/// Makes the directory's entries (a created, renamed or deleted file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
    file: BufReader<io::Take<File>>,
    /// Where the next frame starts.
    offset: u64,
    len: u64,
    done: bool,
}

impl Reader {
    pub fn open(path: &Path) -> io::Result<Reader> {
        Reader::open_at(path, 0, None)
    }

    /// Opens `path` with the next frame at `offset` (where an earlier reader stopped), reading
    /// no further than `limit` bytes into the file.
    pub fn open_at(path: &Path, offset: u64, limit: Option<u64>) -> io::Result<Reader> {
        let file = File::open(path)?;
        let len = file.metadata()?.len().min(limit.unwrap_or(u64::MAX));
        let offset = offset.min(len);
        Ok(Reader {
            file: bounded(file, offset, len)?,
            offset,
            len,
            done: false,
        })
    }

    /// The offset just past the last frame returned (or skipped).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn next_step(&mut self) -> io::Result<Step> {
        if self.done {
            return Ok(Step::End { trailing: 0 });
        }
        let left = self.len - self.offset;
        if left < HEADER_BYTES as u64 {
            return Ok(self.end(left));
        }
        let mut head = [0u8; HEADER_BYTES];
        self.file.read_exact(&mut head)?;
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

    fn end(&mut self, trailing: u64) -> Step {
        self.done = true;
        Step::End { trailing }
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
