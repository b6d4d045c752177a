//! `timbridge spool inspect DIR`: what a spool holds, read-only (it changes nothing, so it is
//! safe beside a running bridge): segments with their record counts, the acknowledged
//! position, the oldest unforwarded record's age, and any damage found.

use std::fmt;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::frame::{decode_payload, filler_first};
use super::position;
use super::segment::{self, Reader, Step};
use super::sequence::{Across, Break, InSegment};
use crate::core::record::header;

#[derive(Debug, Default)]
pub struct Report {
    pub position: u64,
    pub segments: Vec<SegmentReport>,
    /// Records after the position.
    pub unforwarded: u64,
    /// Received-at (unix ms) of the oldest unforwarded record.
    pub oldest_unforwarded_ms: Option<u64>,
    pub dead_letters: u64,
    /// Records this build cannot read (a newer build's format): forwarding stops at the first.
    pub unreadable: u64,
    pub first_unreadable: Option<(u64, String)>,
    /// Segments set aside at start-up because they could not be read.
    pub unreadable_segments: Vec<String>,
}

#[derive(Debug)]
pub struct SegmentReport {
    pub name: String,
    pub bytes: u64,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub corrupt: u64,
    /// Bytes after the last whole record (a torn write, cut at the next start).
    pub trailing: u64,
    pub set_aside: bool,
    /// Where the sequence numbers break: at its start (from the segment before it) or within.
    pub breaks: Vec<Break>,
}

impl Report {
    /// Damage found: corrupt records, or torn bytes anywhere but a last segment's end.
    pub fn is_corrupt(&self) -> bool {
        let last = self.segments.len().saturating_sub(1);
        self.segments.iter().enumerate().any(|(i, s)| {
            s.corrupt > 0 || s.set_aside || !s.breaks.is_empty() || (i < last && s.trailing > 0)
        }) || !self.unreadable_segments.is_empty()
    }
}

pub fn inspect(dir: &Path) -> io::Result<Report> {
    let mut report = Report {
        position: position::read(dir)?,
        ..Report::default()
    };
    let mut unreadable = segment::list_unreadable(dir)?;
    unreadable.sort();
    let mut unreadable = unreadable.into_iter().peekable();
    let mut across = Across::new(report.position);
    for segment in segment::list(dir)? {
        while let Some((first, _)) = unreadable.next_if(|(f, _)| *f < segment.first_seq) {
            across.unreadable(first);
        }
        let mut check = InSegment::new(segment.first_seq);
        let mut breaks: Vec<Break> = across.segment(segment.first_seq).into_iter().collect();
        let mut reader = Reader::open(&segment.path)?;
        let mut s = SegmentReport {
            name: segment
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            bytes: segment.bytes(),
            records: 0,
            first_seq: None,
            last_seq: None,
            corrupt: 0,
            trailing: 0,
            set_aside: segment.corrupt,
            breaks: Vec::new(),
        };
        loop {
            match reader.next_step()? {
                Step::Record { seq, payload } => {
                    breaks.extend(check.frame(seq, &payload));
                    if let Some(first) = filler_first(seq, &payload) {
                        // Numbers a refused batch took: no record.
                        s.first_seq.get_or_insert(first);
                        s.last_seq = Some(seq);
                        continue;
                    }
                    s.records += 1;
                    s.first_seq.get_or_insert(seq);
                    let decoded = decode_payload(&payload);
                    if let Err(why) = &decoded {
                        report.unreadable += 1;
                        report
                            .first_unreadable
                            .get_or_insert_with(|| (seq, why.to_string()));
                    }
                    s.last_seq = Some(seq);
                    if seq > report.position {
                        report.unforwarded += 1;
                        if report.oldest_unforwarded_ms.is_none() {
                            report.oldest_unforwarded_ms = decoded.ok().and_then(|r| {
                                r.headers
                                    .iter()
                                    .find(|(n, _)| *n == header::RECEIVED_AT)
                                    .and_then(|(_, v)| v.parse().ok())
                            });
                        }
                    }
                }
                Step::Skipped { .. } => {
                    s.corrupt += 1;
                    check.damage();
                }
                Step::End { trailing } => {
                    s.trailing = trailing;
                    break;
                }
            }
        }
        across.ended(
            segment.first_seq,
            check.high(),
            check.ended_in_damage() || s.trailing > 0,
        );
        s.breaks = breaks;
        report.segments.push(s);
    }
    for (_, path) in segment::list_unreadable(dir)? {
        report.unreadable_segments.push(path.display().to_string());
    }
    let dead = dir.join("dead-letters.log");
    if dead.exists() {
        let mut reader = Reader::open(&dead)?;
        while let Step::Record { .. } | Step::Skipped { .. } = reader.next_step()? {
            report.dead_letters += 1;
        }
    }
    Ok(report)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "acknowledged position: {}", self.position)?;
        writeln!(f, "unforwarded records: {}", self.unforwarded)?;
        match self.oldest_unforwarded_ms {
            Some(at) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                writeln!(
                    f,
                    "oldest unforwarded record: {:.1} s old",
                    now.saturating_sub(at) as f64 / 1000.0
                )?;
            }
            None => writeln!(f, "oldest unforwarded record: none")?,
        }
        writeln!(f, "dead letters: {}", self.dead_letters)?;
        if let Some((seq, why)) = &self.first_unreadable {
            writeln!(
                f,
                "records of a newer build's format: {} (the first, seq {seq}: {why}); this \
                 build's forwarder stops there",
                self.unreadable
            )?;
        }
        for path in &self.unreadable_segments {
            writeln!(f, "UNREADABLE segment set aside (not forwarded): {path}")?;
        }
        writeln!(f, "segments: {}", self.segments.len())?;
        for s in &self.segments {
            let range = match (s.first_seq, s.last_seq) {
                (Some(a), Some(b)) => format!("{a}..={b}"),
                _ => "-".into(),
            };
            writeln!(
                f,
                "  {}  {} bytes  {} records  seq {}  corrupt {}  trailing {} bytes{}",
                s.name,
                s.bytes,
                s.records,
                range,
                s.corrupt,
                s.trailing,
                if s.set_aside { "  (set aside)" } else { "" }
            )?;
            for at in &s.breaks {
                writeln!(f, "    BREAK in the sequence numbers: {at}")?;
            }
        }
        if self.is_corrupt() {
            writeln!(
                f,
                "CORRUPT: damage, or a break in the sequence numbers (see above)"
            )?;
        }
        Ok(())
    }
}
