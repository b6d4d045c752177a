//! Segment recovery: up to four segment files of any bytes, `spool::recovery::recover` over
//! their directory, each segment left then read to its end with `segment::Reader` (as the
//! forwarder reads them), and a second recovery (the next start). Neither start may resume
//! appending at or below the number of a record that was on disk.
//!
//! Input: a byte for the acknowledged position, a flags byte, then segments, each
//! `[first seq: u8][length: u16 le][bytes]`. With flag 1 the target rewrites the CRC of each
//! frame it can walk to from the segment's start, so that the fuzzer explores lengths,
//! sequence numbers and fillers instead of being stopped by the checksum.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use timbridge::spool::frame::{self, HEADER_BYTES};
use timbridge::spool::recovery::recover;
use timbridge::spool::segment::{self, Reader, Segment, Step};

/// One directory per process, on tmpfs when there is one (recovery renames and writes files).
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = match std::path::Path::new("/dev/shm").is_dir() {
            true => PathBuf::from("/dev/shm"),
            false => std::env::temp_dir(),
        };
        base.join(format!("timbridge-fuzz-recovery-{}", std::process::id()))
    })
}

/// Writes a valid CRC32C into every frame reachable by following the lengths.
fn fix_crcs(segment: &mut [u8]) {
    let mut at = 0;
    while segment.len() - at >= HEADER_BYTES {
        let len = u32::from_le_bytes(segment[at..at + 4].try_into().unwrap_or_default()) as usize;
        if len < 8 || segment.len() - at - 8 < len {
            return;
        }
        let crc = crc32c(&segment[at + 8..at + 8 + len]);
        segment[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at += 8 + len;
    }
}

/// CRC32C (Castagnoli), bit by bit: the target needs no dependency of its own for it.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82f6_3b78 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fuzz_target!(|data: &[u8]| {
    let [position, flags, segments @ ..] = data else {
        return;
    };
    let mut rest = segments;
    let dir = dir();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("the fuzz directory");

    for _ in 0..4 {
        let [first, lo, hi, tail @ ..] = rest else {
            break;
        };
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let mut segment = tail[..len].to_vec();
        rest = &tail[len..];
        if flags & 1 == 1 {
            fix_crcs(&mut segment);
        }
        // Segment 0 would hold sequence number 0, which the writer never gives out.
        let path = Segment::path_for(dir, u64::from(*first).max(1));
        std::fs::write(path, segment).expect("writing a segment");
    }

    let position = u64::from(*position);
    // The records on disk before the start, read as the forwarder reads.
    let stored = read_all(&segment::list(dir).expect("listing the segments"));
    let found = recover(dir, position).expect("recovery never fails on a readable directory");
    // Appending resumes after every number a stored record holds: never one given out twice.
    assert!(
        found.last_seq >= stored,
        "resumes at {} below record {stored}",
        found.last_seq
    );
    let left = read_all(&found.segments);

    let again = recover(dir, position).expect("a second recovery");
    assert!(
        again.last_seq >= stored,
        "a second start resumes at {} below record {stored}",
        again.last_seq
    );
    // What recovery zeroes never completes a frame (a record past where appending resumes),
    // and a start after a start finds the same damage and nothing left to cut: a record
    // answered 200 is never taken for a torn write later (docs/fuzzing.md, Findings).
    assert!(
        left <= found.last_seq,
        "a record {left} appeared after recovery, past {}",
        found.last_seq
    );
    assert_eq!(
        again.corrupt_records, found.corrupt_records,
        "counted differently"
    );
    assert_eq!(again.torn_bytes, 0, "the first recovery left a torn tail");
});

/// Reads every segment as the forwarder does; the highest sequence number of a record (not a
/// filler) in them.
fn read_all(segments: &[Segment]) -> u64 {
    let mut high = 0;
    for segment in segments {
        let mut reader = Reader::open(&segment.path).expect("a segment opens");
        // Each step consumes at least one byte of the file: the loop ends.
        let most = std::fs::metadata(&segment.path).map_or(0, |m| m.len()) + 2;
        let mut steps = 0;
        loop {
            match reader.next_step().expect("a segment reads") {
                Step::End { .. } => break,
                Step::Record { seq, payload } => {
                    if frame::filler_first(seq, &payload).is_none() {
                        high = high.max(seq);
                    }
                }
                Step::Skipped { .. } => {}
            }
            steps += 1;
            assert!(
                steps <= most,
                "{}: more steps than bytes",
                segment.path.display()
            );
        }
    }
    high
}
