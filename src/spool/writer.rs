//! The one writer: group commit on its own thread. Every append that arrived while the previous
//! `fdatasync` ran goes into the next batch (bounded in records and bytes), so one fsync covers
//! many callbacks with no artificial delay. A request is answered only after its batch's
//! fsync returned.
//!
//! A failed fsync is fatal: on Linux it may have dropped the dirty pages (PostgreSQL's
//! "fsyncgate"), so retrying could report success for data that is gone. Every waiter gets an
//! error, the spool turns unhealthy and the process exits non-zero. A full disk is not fatal:
//! the partial write is cut off again, the batch is refused, and appends are refused at once
//! for a moment before the next try.
//!
//! A sequence number is never given out twice: a refused batch's numbers are burned, and the
//! next batch written starts with a filler frame standing for them (`frame::put_filler`), so
//! that the numbers on disk stay contiguous (`sequence.rs`). Reusing them could leave two
//! frames with one number after a crash, one refused and one answered 200.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::frame::{put_filler, put_record_frame, FILLER_FRAME_BYTES};
use super::segment;
use super::SpoolState;
use crate::core::deliver::DeliveryError;
use crate::core::Record;

/// What the request path sends the writer.
pub enum Msg {
    Append(Append),
    /// Commit what is queued and stop (shutdown).
    Close(oneshot::Sender<()>),
}

pub struct Append {
    /// Encoded by the writer, straight into its batch buffer.
    pub record: Arc<Record>,
    /// Its frame's length (`frame::payload_len` + the header), computed once.
    pub frame_len: usize,
    pub reply: oneshot::Sender<Result<u64, DeliveryError>>,
}

pub struct Writer {
    pub state: Arc<SpoolState>,
    /// The segment being appended to, its first sequence number and its length.
    pub file: Option<File>,
    pub segment_first: u64,
    pub segment_len: u64,
    /// The file's size: preallocated, larger only when one batch did not fit.
    pub file_len: u64,
    pub next_seq: u64,
    /// The first number of refused batches not yet covered by a filler (they run to
    /// `next_seq - 1`): the next batch written starts with the filler.
    burned_from: Option<u64>,
    /// The batch's bytes, reused (a fresh buffer per batch grows and shrinks the heap).
    pub buf: Vec<u8>,
    /// The next segment's file (its bytes counted).
    pub spare: Option<Spare>,
    /// The batch's reply senders, reused.
    replies: Vec<oneshot::Sender<Result<u64, DeliveryError>>>,
    /// When the current segment got its first record: how long it takes to fill paces the
    /// zeroing of the next spare.
    segment_started: std::time::Instant,
}

/// The next segment's preallocated file.
pub enum Spare {
    Ready(io::Result<PathBuf>),
    /// Being zeroed by a thread of its own, at the pace given.
    Preparing(JoinHandle<io::Result<PathBuf>>, Arc<segment::Pace>),
}

impl Spare {
    fn take(self) -> io::Result<PathBuf> {
        match self {
            Spare::Ready(prepared) => prepared,
            Spare::Preparing(thread, pace) => {
                pace.hurry.store(true, std::sync::atomic::Ordering::Relaxed);
                thread
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("the spare's thread panicked")))
            }
        }
    }
}

impl Writer {
    pub fn new(state: Arc<SpoolState>, next_seq: u64) -> Writer {
        Writer {
            state,
            file: None,
            segment_first: 0,
            segment_len: 0,
            file_len: 0,
            next_seq,
            burned_from: None,
            buf: Vec::new(),
            spare: None,
            replies: Vec::new(),
            segment_started: std::time::Instant::now(),
        }
    }
}

impl Writer {
    /// Runs until `Close` (or every sender is gone).
    pub fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let limits = self.state.config.clone();
        let mut closing = None;
        while closing.is_none() {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut batch = Vec::new();
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append(append) => {
                        bytes += append.frame_len;
                        batch.push(append);
                    }
                    Msg::Close(done) => {
                        closing = Some(done);
                        break;
                    }
                }
                if batch.len() < limits.batch_records && bytes < limits.batch_bytes {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit(batch);
            }
        }
        // Anything sent after Close is refused (its sender sees the reply dropped).
        rx.close();
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }

    fn commit(&mut self, batch: Vec<Append>) {
        if self.state.fatal.is_cancelled() {
            return refuse(batch, DeliveryError::Unavailable("the spool failed".into()));
        }
        let filler = self.burned_from.map(|first| (first, self.next_seq - 1));
        let filler_bytes = filler.map_or(0, |_| FILLER_FRAME_BYTES as u64);
        let bytes: u64 = batch.iter().map(|a| a.frame_len as u64).sum::<u64>() + filler_bytes;
        match self.rotate_if_needed(bytes) {
            Ok(true) => {}
            Ok(false) => {
                self.state
                    .no_room
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return refuse(
                    batch,
                    DeliveryError::Full("--spool-max-bytes reached".into()),
                );
            }
            Err(err) => return self.failed_write(batch, err, "creating a segment"),
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if let Some((first, last)) = filler {
            // In the same write as the records after it: on disk, never one without them.
            put_filler(&mut buf, first, last);
        }
        let first_seq = self.next_seq;
        for (i, append) in batch.iter().enumerate() {
            put_record_frame(&mut buf, first_seq + i as u64, &append.record);
        }
        self.write_batch(&buf, batch, first_seq);
        // Keep the buffer, unless one large batch made it large.
        if buf.capacity() <= self.state.config.batch_bytes * 2 {
            self.buf = buf;
        }
    }

    fn write_batch(&mut self, buf: &[u8], batch: Vec<Append>, first_seq: u64) {
        let Some(file) = self.file.as_mut() else {
            return refuse(batch, DeliveryError::Unavailable("no segment".into()));
        };
        if let Err(err) = write_at(file, buf, self.segment_len, &self.state.config.dir) {
            // The batch's numbers are burned, never given out again (its frames may be on
            // disk): the next batch written starts with a filler standing for them.
            self.burned_from.get_or_insert(first_seq);
            self.next_seq = first_seq + batch.len() as u64;
            // Undo the partial write: nothing of this batch was answered 200. Durable before
            // anything else is written: a later batch may go to another segment, whose fsync
            // would not carry these zeros, and the refused frames must not outlive a crash.
            let undone = if self.segment_len + buf.len() as u64 > self.file_len {
                file.set_len(self.file_len.max(self.segment_len))
            } else {
                file.write_all_at(&vec![0; buf.len()], self.segment_len)
            }
            .and_then(|()| sync_data(file, &self.state.config.dir));
            if let Err(undo) = undone {
                return self.fatal(batch, undo, "undoing a failed write");
            }
            return self.failed_write(batch, err, "writing");
        }
        let started = Instant::now();
        if let Err(err) = sync_data(file, &self.state.config.dir) {
            return self.fatal(batch, err, "fdatasync");
        }
        self.state
            .metrics
            .committed(started.elapsed(), batch.len(), buf.len());
        self.segment_len += buf.len() as u64;
        if self.segment_len > self.file_len {
            self.state.add_bytes(self.segment_len - self.file_len);
            self.file_len = self.segment_len;
        }
        self.state.set_active(self.segment_first, self.segment_len);
        self.burned_from = None;
        self.next_seq += batch.len() as u64;
        let last_seq = self.next_seq - 1;
        let mut replies = std::mem::take(&mut self.replies);
        {
            // Each frame's place, for the forwarder to read it back (a parked key's records).
            let mut offset = self.segment_len - buf.len() as u64;
            let mut tail = self.state.lock_tail();
            for (i, append) in batch.into_iter().enumerate() {
                let at = super::Location {
                    segment: self.segment_first,
                    offset,
                };
                offset += append.frame_len as u64;
                tail.push(first_seq + i as u64, append.record, append.frame_len, at);
                replies.push(append.reply);
            }
        }
        self.state.durable.send_replace(last_seq);
        tracing::trace!(
            first_seq,
            last_seq,
            segment = self.segment_first,
            "spool: batch durable"
        );
        for (i, reply) in replies.drain(..).enumerate() {
            let _ = reply.send(Ok(first_seq + i as u64));
        }
        self.replies = replies;
    }

    /// A new segment when the current one would pass its size (never for an empty one), from
    /// the spare when it is ready; `false` when a new segment would pass `--spool-max-bytes`.
    fn rotate_if_needed(&mut self, bytes: u64) -> io::Result<bool> {
        let size = self.state.config.segment_bytes;
        let full = self.segment_len > 0 && self.segment_len + bytes > size;
        if self.file.is_some() && !full {
            return Ok(true);
        }
        let dir = self.state.config.dir.clone();
        let spare = match self.spare.take().map(Spare::take) {
            Some(Ok(spare)) => spare,
            taken => {
                if let Some(Err(err)) = taken {
                    tracing::warn!(error = %err, "spool: the spare segment could not be prepared; preparing it now");
                    self.state.sub_bytes(size);
                }
                if !self.reserve() {
                    return Ok(false);
                }
                segment::prepare_spare(&dir, size, &segment::Pace::default())
                    .inspect_err(|_| self.state.sub_bytes(size))?
            }
        };
        // Zeroing the next spare may take half as long as this one took to fill (2 s when
        // that is not known yet); if the writer needs it sooner, the pauses stop.
        let budget = if self.file.is_some() && full {
            self.segment_started.elapsed() / 2
        } else {
            std::time::Duration::from_secs(2)
        };
        let budget = Some(budget.min(std::time::Duration::from_secs(10)));
        // Named after the first number its first frame covers: a filler's, when one is due.
        let first_seq = self.burned_from.unwrap_or(self.next_seq);
        let (segment, file) = segment::install(&dir, &spare, first_seq)?;
        self.segment_started = std::time::Instant::now();
        self.state.set_active(first_seq, 0);
        self.state.lock_segments().push(segment);
        self.file = Some(file);
        self.file_len = size;
        self.segment_first = first_seq;
        self.segment_len = 0;
        // The next one is zeroed meanwhile, off this thread, when there is room for it.
        if self.reserve() {
            let pace = Arc::new(segment::Pace {
                budget,
                ..Default::default()
            });
            let paced = pace.clone();
            let prepare = move || segment::prepare_spare(&dir, size, &paced);
            self.spare = match std::thread::Builder::new()
                .name("spool-spare".into())
                .spawn(prepare)
            {
                Ok(thread) => Some(Spare::Preparing(thread, pace)),
                Err(err) => Some(Spare::Ready(Err(err))),
            };
        }
        Ok(true)
    }

    /// Zeroes the spare on this thread (at start-up, before the spool is ready). A failure
    /// (a full disk) is not fatal here: the first append tries again and reports it.
    pub fn prepare_spare_now(&mut self) {
        let size = self.state.config.segment_bytes;
        if !self.reserve() {
            return;
        }
        let dir = self.state.config.dir.clone();
        let prepared = segment::prepare_spare(&dir, size, &segment::Pace::default());
        if let Err(err) = &prepared {
            tracing::warn!(error = %err, "spool: cannot prepare the first segment");
        }
        self.spare = Some(Spare::Ready(prepared));
    }

    /// Counts a new segment's bytes when they fit in `--spool-max-bytes`.
    fn reserve(&self) -> bool {
        let size = self.state.config.segment_bytes;
        if self.state.bytes() + size > self.state.config.max_bytes {
            return false;
        }
        self.state.add_bytes(size);
        true
    }

    /// A write that failed: a full disk refuses this batch and, for a moment, new appends;
    /// anything else is fatal.
    fn failed_write(&mut self, batch: Vec<Append>, err: io::Error, what: &str) {
        if is_disk_full(&err) {
            tracing::warn!(error = %err, "spool: disk full while {what}; refusing callbacks (503) until there is room");
            self.state.disk_full();
            return refuse(batch, DeliveryError::Full(format!("disk full: {err}")));
        }
        self.fatal(batch, err, what)
    }

    fn fatal(&mut self, batch: Vec<Append>, err: io::Error, what: &str) {
        tracing::error!(error = %err, "spool: {what} failed; the spool cannot be trusted any more and the process exits (it never retries an fsync)");
        self.state.fatal.cancel();
        refuse(
            batch,
            DeliveryError::Unavailable(format!("spool {what} failed: {err}")),
        );
    }
}

/// A batch's write, or (in tests) the failure injected for this directory: part of the batch
/// written, then a full disk.
fn write_at(file: &File, buf: &[u8], at: u64, dir: &std::path::Path) -> io::Result<()> {
    #[cfg(any(test, feature = "test-util"))]
    if let Some(written) = faults::take_write(dir) {
        file.write_all_at(&buf[..written.min(buf.len())], at)?;
        return Err(io::Error::from(io::ErrorKind::StorageFull));
    }
    super::fs::write_all_at(file, buf, at, dir)
}

/// `fdatasync`, or (in tests, `test-util`) the failure injected for this directory.
fn sync_data(file: &File, dir: &std::path::Path) -> io::Result<()> {
    #[cfg(any(test, feature = "test-util"))]
    if faults::take(dir) {
        return Err(io::Error::other("injected fdatasync failure"));
    }
    super::fs::sync_data(file, dir)
}

/// Fault injection for the tests: the next fdatasync of a spool directory fails (a real one
/// cannot be made to fail on demand without a device-mapper target), or its next batch write
/// stops with a full disk after some bytes (a real ENOSPC in the middle of a batch needs a
/// filesystem filled to the byte).
#[cfg(any(test, feature = "test-util"))]
pub mod faults {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static FAIL_NEXT_FSYNC: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static FAIL_NEXT_WRITE: Mutex<Vec<(PathBuf, usize)>> = Mutex::new(Vec::new());

    /// The next batch written to `dir` writes `written` bytes and fails with ENOSPC.
    pub fn fail_next_write(dir: &Path, written: usize) {
        FAIL_NEXT_WRITE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((dir.to_owned(), written));
    }

    pub(super) fn take_write(dir: &Path) -> Option<usize> {
        let mut dirs = FAIL_NEXT_WRITE.lock().unwrap_or_else(|e| e.into_inner());
        let at = dirs.iter().position(|(d, _)| d == dir)?;
        Some(dirs.remove(at).1)
    }

    pub fn fail_next_fsync(dir: &Path) {
        FAIL_NEXT_FSYNC
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dir.to_owned());
    }

    pub(super) fn take(dir: &Path) -> bool {
        let mut dirs = FAIL_NEXT_FSYNC.lock().unwrap_or_else(|e| e.into_inner());
        let before = dirs.len();
        dirs.retain(|d| d != dir);
        dirs.len() != before
    }
}

fn refuse(batch: Vec<Append>, err: DeliveryError) {
    for append in batch {
        let _ = append.reply.send(Err(err.clone()));
    }
}

fn is_disk_full(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}
