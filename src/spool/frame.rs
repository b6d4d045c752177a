//! One record on disk: `[len u32][crc32c u32][seq u64][payload]`, little-endian. `len` counts
//! the sequence number and the payload; the CRC32C covers both, so a torn write, a flipped bit
//! or a frame read at the wrong offset all fail the check.
//!
//! The payload is the whole wire record (destination, key, partition, headers, body), so that a
//! replayed message is byte-identical to what direct mode publishes, dedup id included.

use bytes::{Buf, BufMut, Bytes};

use crate::core::record::header;
use crate::core::Record;

/// Bytes before the payload: length, CRC, sequence number.
pub const HEADER_BYTES: usize = 16;
/// The payload format; a frame of another version is corrupt to this build.
const VERSION: u8 = 1;
/// The payload tag of a filler frame: no record, it stands for the sequence numbers a refused
/// batch took (`put_filler`). An older build reads it as a newer build's version and stops
/// there, which is the version rule: never skipped.
const FILLER: u8 = 0;
/// A filler's payload: the tag and the first sequence number it stands for.
const FILLER_PAYLOAD_BYTES: usize = 1 + 8;
/// A filler frame's length, header included.
pub const FILLER_FRAME_BYTES: usize = HEADER_BYTES + FILLER_PAYLOAD_BYTES;
/// Far above any record (bodies are bounded by --max-body-bytes, at most a few MiB): a length
/// past it is corruption, not a record to allocate for.
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// Room kept in a frame for everything but the body: the destination and key (at most 64 KiB
/// each) and the headers (the bridge's own, well under this).
const MAX_RECORD_OVERHEAD: usize = 256 << 10;
/// The largest body a frame holds (`--max-body-bytes` is refused above it in spooled mode).
pub const MAX_BODY_BYTES: usize = MAX_FRAME_BYTES - 8 - MAX_RECORD_OVERHEAD;

/// The record's payload.
pub fn encode_payload(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_len(record));
    put_payload(&mut out, record);
    out
}

/// The length of the record's payload, without encoding it.
pub fn payload_len(record: &Record) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|(n, v)| 1 + n.len() + 4 + v.len())
        .sum();
    1 + 2
        + record.destination.len().min(u16::MAX as usize)
        + 2
        + record.key.len().min(u16::MAX as usize)
        + 4
        + 1
        + headers
        + 4
        + record.body.len()
}

fn put_payload(out: &mut Vec<u8>, record: &Record) {
    out.put_u8(VERSION);
    put_short(out, record.destination.as_bytes());
    put_short(out, record.key.as_bytes());
    out.put_u32_le(record.partition);
    out.put_u8(record.headers.len() as u8);
    for (name, value) in &record.headers {
        out.put_u8(name.len() as u8);
        out.put_slice(name.as_bytes());
        out.put_u32_le(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
    out.put_u32_le(record.body.len() as u32);
    out.put_slice(&record.body);
}

/// Appends the frame of `record` with sequence number `seq` to `out`, encoding the payload in
/// place (the writer's batch buffer: no buffer of its own per record).
pub fn put_record_frame(out: &mut Vec<u8>, seq: u64, record: &Record) {
    let start = out.len();
    out.put_u64_le(0);
    out.put_slice(&seq.to_le_bytes());
    put_payload(out, record);
    let len = (out.len() - start - 8) as u32;
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Destinations and keys are short (templates, ids of at most 256 bytes).
fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    out.put_u16_le(bytes.len().min(u16::MAX as usize) as u16);
    out.put_slice(&bytes[..bytes.len().min(u16::MAX as usize)]);
}

/// Appends the frame of `payload` with sequence number `seq` to `out`.
pub fn put_frame(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let seq_bytes = seq.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&seq_bytes), payload);
    out.put_u32_le((8 + payload.len()) as u32);
    out.put_u32_le(crc);
    out.put_slice(&seq_bytes);
    out.put_slice(payload);
}

/// Appends a filler frame standing for sequence numbers `first..=last`, which hold nothing: a
/// refused batch took them (the writer never gives a number out twice), and the next batch
/// that is written starts with this frame so that the numbers on disk stay contiguous.
pub fn put_filler(out: &mut Vec<u8>, first: u64, last: u64) {
    let mut payload = [FILLER; FILLER_PAYLOAD_BYTES];
    payload[1..].copy_from_slice(&first.to_le_bytes());
    put_frame(out, last, &payload);
}

/// The first sequence number a filler frame (`seq` its last) stands for; `None` for a record.
/// A version-0 payload that is not a well-formed filler is `Malformed` to `decode_payload`.
pub fn filler_first(seq: u64, payload: &[u8]) -> Option<u64> {
    if payload.len() != FILLER_PAYLOAD_BYTES || payload[0] != FILLER {
        return None;
    }
    let first = u64::from_le_bytes(payload[1..].try_into().ok()?);
    (first <= seq).then_some(first)
}

/// What the bytes at an offset turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// A whole, intact frame of `len` bytes (header included).
    Frame {
        seq: u64,
        payload: Bytes,
        len: usize,
    },
    /// Fewer bytes than a header or than the frame's length: the end, or a torn write.
    Short,
    /// The CRC does not match, or the length is impossible. `len` is the claimed frame length
    /// when it is plausible (the next frame may start there), `None` when it is not.
    Corrupt { len: Option<usize> },
}

/// Reads the frame at the start of `bytes`.
pub fn read_frame(bytes: &Bytes) -> Read {
    if bytes.len() < HEADER_BYTES {
        return Read::Short;
    }
    let mut head = &bytes[..8];
    let len = head.get_u32_le() as usize;
    let crc = head.get_u32_le();
    if !(8..=MAX_FRAME_BYTES).contains(&len) {
        return Read::Corrupt { len: None };
    }
    let total = 8 + len;
    if bytes.len() < total {
        return Read::Short;
    }
    let body = &bytes[8..total];
    if crc32c::crc32c(body) != crc {
        return Read::Corrupt { len: Some(total) };
    }
    let seq = (&body[..8]).get_u64_le();
    Read::Frame {
        seq,
        payload: bytes.slice(16..total),
        len: total,
    }
}

/// Why a payload with a valid CRC is not a record to this build. Never damage (the CRC
/// matched): a newer build wrote it, or this build has a bug. Either way the frame is kept and
/// forwarding stops at it; it is never skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undecodable {
    #[error("payload version {0} (this build reads version {VERSION}): written by a newer build")]
    Version(u8),
    #[error("header {0:?} unknown to this build: written by a newer build")]
    Header(String),
    #[error("the payload does not decode although its CRC matched")]
    Malformed,
}

impl Undecodable {
    /// Every value of [`Undecodable::label`].
    pub const LABELS: [&'static str; 3] = ["newer_version", "unknown_header", "malformed"];

    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Undecodable::Version(_) => "newer_version",
            Undecodable::Header(_) => "unknown_header",
            Undecodable::Malformed => "malformed",
        }
    }
}

/// The record of a payload, or why this build cannot read it.
pub fn decode_payload(payload: &Bytes) -> Result<Record, Undecodable> {
    let mut buf = payload.clone();
    if buf.remaining() < 1 {
        return Err(Undecodable::Malformed);
    }
    let version = buf.get_u8();
    if version == FILLER {
        // A filler is recognised before this (`filler_first`); one that reaches here is not
        // well-formed.
        return Err(Undecodable::Malformed);
    }
    if version != VERSION {
        return Err(Undecodable::Version(version));
    }
    let malformed = Undecodable::Malformed;
    let destination = get_string(&mut buf, 2).ok_or(malformed.clone())?;
    let key = get_string(&mut buf, 2).ok_or(malformed.clone())?;
    if buf.remaining() < 5 {
        return Err(malformed);
    }
    let partition = buf.get_u32_le();
    let count = buf.get_u8() as usize;
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = get_string(&mut buf, 1).ok_or(malformed.clone())?;
        let value = get_string(&mut buf, 4).ok_or(malformed.clone())?;
        let name = header::lookup(&name).ok_or(Undecodable::Header(name))?;
        headers.push((name, value));
    }
    if buf.remaining() < 4 {
        return Err(malformed);
    }
    let len = buf.get_u32_le() as usize;
    if buf.remaining() != len {
        return Err(malformed);
    }
    Ok(Record {
        destination,
        key,
        partition,
        headers,
        body: buf,
    })
}

fn get_string(buf: &mut Bytes, width: usize) -> Option<String> {
    if buf.remaining() < width {
        return None;
    }
    let len = match width {
        1 => buf.get_u8() as usize,
        2 => buf.get_u16_le() as usize,
        _ => buf.get_u32_le() as usize,
    };
    if buf.remaining() < len {
        return None;
    }
    String::from_utf8(buf.split_to(len).to_vec()).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(key: &str, seq: u64) -> Record {
        Record {
            destination: format!("tim.Group.CallbackAfterSendMsg.{}", seq % 16),
            key: key.to_owned(),
            partition: (seq % 16) as u32,
            headers: vec![
                (header::SDKAPPID, "1400000000".into()),
                (header::GROUP_ID, key.to_owned()),
                (header::MSG_SEQ, seq.to_string()),
                (header::DEDUP_ID, format!("g:1400000000:{seq}:{key}")),
            ],
            body: Bytes::from(format!(
                r#"{{"GroupId":"{key}","MsgSeq":{seq},"Text":"你好"}}"#
            )),
        }
    }

    #[test]
    fn a_record_comes_back_byte_for_byte() {
        let r = record("@TGS#1", 7);
        let mut buf = Vec::new();
        put_frame(&mut buf, 42, &encode_payload(&r));
        let bytes = Bytes::from(buf);
        let Read::Frame { seq, payload, len } = read_frame(&bytes) else {
            panic!("a frame")
        };
        assert_eq!((seq, len), (42, bytes.len()));
        assert_eq!(decode_payload(&payload), Ok(r));
    }

    /// Every reason has its series from the first scrape, and only these reasons.
    #[test]
    fn the_forward_stopped_reasons_are_the_metrics_series() {
        let labels = [
            Undecodable::Version(2).label(),
            Undecodable::Header(String::new()).label(),
            Undecodable::Malformed.label(),
        ];
        assert_eq!(labels, Undecodable::LABELS);
        let registry = prometheus::Registry::new();
        crate::spool::metrics::SpoolMetrics::new(&registry).unwrap();
        let text = String::from_utf8(crate::core::metrics::encode(&registry)).unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("timbridge_spool_forward_stopped{"))
            .count();
        assert_eq!(series, labels.len());
        for label in labels {
            assert!(
                text.contains(&format!(
                    "timbridge_spool_forward_stopped{{reason=\"{label}\"}} 0"
                )),
                "{label}"
            );
        }
    }

    /// A frame from "the future": a payload version or a header name this build does not know
    /// is reported as such (the forwarder stops there), never as damage to skip.
    #[test]
    fn a_newer_builds_payload_is_told_apart_from_damage() {
        let mut payload = encode_payload(&record("@TGS#1", 7));
        payload[0] = VERSION + 1;
        assert_eq!(
            decode_payload(&Bytes::from(payload)),
            Err(Undecodable::Version(VERSION + 1))
        );
        let mut newer = record("@TGS#1", 7);
        newer.headers.push(("tim-from-the-future", "1".into()));
        assert_eq!(
            decode_payload(&Bytes::from(encode_payload(&newer))),
            Err(Undecodable::Header("tim-from-the-future".into()))
        );
        let whole = encode_payload(&record("@TGS#1", 7));
        assert_eq!(
            decode_payload(&Bytes::from(whole[..whole.len() - 1].to_vec())),
            Err(Undecodable::Malformed)
        );
    }

    #[test]
    fn a_filler_is_told_apart_from_a_record() {
        let mut buf = Vec::new();
        put_filler(&mut buf, 4, 9);
        assert_eq!(buf.len(), FILLER_FRAME_BYTES);
        let Read::Frame { seq, payload, .. } = read_frame(&Bytes::from(buf)) else {
            panic!("a frame")
        };
        assert_eq!((seq, filler_first(seq, &payload)), (9, Some(4)));
        assert_eq!(decode_payload(&payload), Err(Undecodable::Malformed));
        let record = Bytes::from(encode_payload(&record("g", 1)));
        assert_eq!(filler_first(1, &record), None);
    }

    #[test]
    fn a_frame_encoded_in_place_is_the_same_as_one_of_its_payload() {
        let r = record("@TGS#1", 7);
        let (mut a, mut b) = (vec![1, 2, 3], vec![1, 2, 3]);
        put_frame(&mut a, 42, &encode_payload(&r));
        put_record_frame(&mut b, 42, &r);
        assert_eq!(a, b);
        assert_eq!(encode_payload(&r).len(), payload_len(&r));
    }

    #[test]
    fn every_damage_is_seen() {
        let mut buf = Vec::new();
        put_frame(&mut buf, 1, &encode_payload(&record("g", 1)));
        let whole = Bytes::from(buf.clone());
        // Torn anywhere: short.
        for cut in [0, 5, HEADER_BYTES, whole.len() - 1] {
            assert_eq!(read_frame(&whole.slice(..cut)), Read::Short, "cut at {cut}");
        }
        // A flipped bit anywhere past the length: corrupt, with the next frame's offset.
        for at in 4..whole.len() {
            let mut bad = buf.clone();
            bad[at] ^= 0x10;
            assert_eq!(
                read_frame(&Bytes::from(bad)),
                Read::Corrupt {
                    len: Some(whole.len())
                },
                "flip at {at}"
            );
        }
        // An impossible length.
        let mut bad = buf.clone();
        bad[3] = 0xff;
        assert_eq!(read_frame(&Bytes::from(bad)), Read::Corrupt { len: None });
    }
}
