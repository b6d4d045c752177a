//! `DIR/dead-letters.log`: records the broker can never accept (too large, invalid for it),
//! framed like the segments. The forwarder appends one durably (file and directory entry)
//! before its position passes the record; `timbridge spool dead-letters DIR` lists them and
//! `… replay` sends them again (after the cause was fixed, e.g. a larger `message.max.bytes`).

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::frame::{decode_payload, encode_payload, put_frame};
use super::segment::{sync_dir, Reader, Step};
use super::OpenError;
use crate::core::deliver::{Deliver, DeliveryError};
use crate::core::ConfigError;
use crate::core::Record;
use crate::sink::KafkaGauges;
use crate::sink::Sink;
use crate::sink::SinkConfig;

pub const FILE: &str = "dead-letters.log";
const TEMPORARY: &str = "dead-letters.log.tmp";
/// How long a replay waits for the broker to be reachable before it gives up.
const READY_WAIT: Duration = Duration::from_secs(30);

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Appends `frame` durably: the data by `fdatasync`, and the directory entry when this call
/// created the file (a crash must not lose a file whose records the position has passed).
pub fn append(dir: &Path, frame: &[u8]) -> io::Result<()> {
    let path = path(dir);
    let created = !path.exists();
    let mut file = super::fs::open(OpenOptions::new().create(true).append(true), &path)?;
    super::fs::write_all(&mut file, frame, &path)?;
    if created {
        super::fs::sync_all(&file, &path)?;
        sync_dir(dir)
    } else {
        super::fs::sync_data(&file, &path)
    }
}

/// One dead letter.
#[derive(Debug)]
pub struct DeadLetter {
    /// Its sequence number in the spool.
    pub seq: u64,
    /// The record, or why this build cannot read it (kept all the same).
    pub record: Result<Record, super::frame::Undecodable>,
    /// Its frame, as on disk.
    pub frame: Vec<u8>,
}

/// The dead letters in `dir`, in the order they were written (none when there is no file), and
/// the damaged places found between them (a torn append, a flipped bit): reported, not hidden.
pub fn list(dir: &Path) -> io::Result<(Vec<DeadLetter>, u64)> {
    let path = path(dir);
    if !path.exists() {
        return Ok((Vec::new(), 0));
    }
    let mut reader = Reader::open(&path)?;
    let (mut letters, mut damaged) = (Vec::new(), 0);
    loop {
        match reader.next_step()? {
            Step::Record { seq, payload } => {
                let mut frame = Vec::new();
                put_frame(&mut frame, seq, &payload);
                letters.push(DeadLetter {
                    seq,
                    record: decode_payload(&payload),
                    frame,
                });
            }
            Step::Skipped { .. } => damaged += 1,
            Step::End { trailing } => return Ok((letters, damaged + u64::from(trailing > 0))),
        }
    }
}

/// Replaces the file with `kept` (none: the file is removed), durably.
fn rewrite(dir: &Path, kept: &[DeadLetter]) -> io::Result<()> {
    if kept.is_empty() {
        match super::fs::remove_file(&path(dir)) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        return sync_dir(dir);
    }
    let temporary = dir.join(TEMPORARY);
    let mut file = fs::File::create(&temporary)?;
    for letter in kept {
        file.write_all(&letter.frame)?;
    }
    file.sync_all()?;
    super::fs::rename(&temporary, &path(dir))?;
    sync_dir(dir)
}

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub sent: u64,
    /// Refused again (kept in the file).
    pub refused: u64,
    /// Not tried: the broker failed (unavailable, a timeout, a fixable refusal) and the
    /// replay stopped (kept in the file).
    pub left: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Sends every dead letter of `dir` to `sink` once, in order, and keeps in the file only those
/// not taken. Takes the spool's lock: the bridge using `dir` must be stopped.
pub async fn replay(
    dir: &Path,
    sink: SinkConfig,
    publish_timeout: Duration,
) -> Result<Replayed, ReplayError> {
    let _lock = super::lock(dir)?;
    let (letters, damaged) = list(dir)?;
    if damaged > 0 {
        // Rewriting the file would drop the damaged bytes: an operator looks first.
        return Err(ReplayError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} has {damaged} damaged places; not rewritten",
                path(dir).display()
            ),
        )));
    }
    let gauges = KafkaGauges::new(&prometheus::Registry::new())
        .map_err(|e| ConfigError::new("metrics", e.to_string()))?;
    let sink = Sink::connect(&sink, publish_timeout, &gauges).await?;
    // Connected and the stream or topic there: a publish before that would be judged by a
    // client that has not heard the server's limits yet.
    let ready_by = tokio::time::Instant::now() + READY_WAIT;
    while !sink.is_ready() {
        if tokio::time::Instant::now() > ready_by {
            return Err(ReplayError::Io(io::Error::other(format!(
                "the broker was not ready within {READY_WAIT:?}; nothing was sent"
            ))));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut report = Replayed::default();
    let mut kept = Vec::new();
    let mut stopped = false;
    for letter in letters {
        let Ok(record) = &letter.record else {
            tracing::warn!(
                seq = letter.seq,
                "dead letter of a format this build cannot read: kept"
            );
            report.left += 1;
            kept.push(letter);
            continue;
        };
        if stopped {
            report.left += 1;
            kept.push(letter);
            continue;
        }
        let result = match tokio::time::timeout(publish_timeout, sink.deliver(record)).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(DeliveryError::TimedOut),
        };
        match result {
            Ok(()) => {
                report.sent += 1;
                tracing::info!(seq = letter.seq, destination = %record.destination, "dead letter sent");
            }
            Err(DeliveryError::Rejected(why)) => {
                report.refused += 1;
                tracing::warn!(seq = letter.seq, error = %why, "dead letter refused again: kept");
                kept.push(letter);
            }
            Err(err) => {
                tracing::error!(seq = letter.seq, error = %err, "the broker failed: the replay stops here; the rest is kept");
                report.left += 1;
                stopped = true;
                kept.push(letter);
            }
        }
    }
    sink.close(publish_timeout).await;
    rewrite(dir, &kept)?;
    Ok(report)
}

/// Frames `record` as a dead letter (the forwarder appends these).
pub fn frame(seq: u64, record: &Record) -> Vec<u8> {
    let mut frame = Vec::new();
    put_frame(&mut frame, seq, &encode_payload(record));
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::frame::tests::record;

    #[test]
    fn dead_letters_append_list_and_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list(dir.path()).unwrap().0.is_empty());
        append(dir.path(), &frame(3, &record("g", 3))).unwrap();
        append(dir.path(), &frame(9, &record("h", 9))).unwrap();
        let (letters, damaged) = list(dir.path()).unwrap();
        assert_eq!(damaged, 0);
        let seqs: Vec<u64> = letters.iter().map(|l| l.seq).collect();
        assert_eq!(seqs, [3, 9]);
        assert_eq!(letters[1].record.as_ref().unwrap(), &record("h", 9));
        rewrite(dir.path(), &letters[1..]).unwrap();
        let seqs: Vec<u64> = list(dir.path()).unwrap().0.iter().map(|l| l.seq).collect();
        assert_eq!(seqs, [9]);
        rewrite(dir.path(), &[]).unwrap();
        assert!(!path(dir.path()).exists());
    }

    #[test]
    fn damage_in_the_dead_letter_file_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), &frame(3, &record("g", 3))).unwrap();
        let mut bytes = fs::read(path(dir.path())).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(path(dir.path()), bytes).unwrap();
        assert_eq!(list(dir.path()).unwrap().1, 1);
    }
}
