//! The spool's frame decoder: `read_frame` (length, CRC32C, sequence number) and
//! `decode_payload` (the record), on any bytes.
//!
//! A CRC gates every payload on disk, and random bytes rarely pass it, so the payload decoder
//! is also fed the input directly, and the input is also framed with a valid CRC.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use timbridge::spool::frame::{self, Read};

/// A decoded payload encodes back to the same bytes: one spelling per record.
fn decode(payload: &Bytes) {
    if let Ok(record) = frame::decode_payload(payload) {
        assert_eq!(frame::encode_payload(&record), payload.as_ref());
        assert_eq!(frame::payload_len(&record), payload.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    match frame::read_frame(&bytes) {
        Read::Frame { seq, payload, len } => {
            assert!(len <= data.len() && len == frame::HEADER_BYTES + payload.len());
            if let Some(first) = frame::filler_first(seq, &payload) {
                assert!(first <= seq);
            } else {
                decode(&payload);
            }
        }
        Read::Short => {}
        Read::Corrupt { len } => assert!(len.is_none_or(|len| len <= data.len())),
    }
    decode(&bytes);

    let seq = data
        .iter()
        .fold(0u64, |acc, b| acc.rotate_left(5) ^ u64::from(*b));
    let mut framed = Vec::new();
    frame::put_frame(&mut framed, seq, data);
    match frame::read_frame(&Bytes::from(framed)) {
        Read::Frame {
            seq: read, payload, ..
        } => {
            assert_eq!(read, seq);
            assert_eq!(payload.as_ref(), data);
        }
        other => panic!("a frame just written reads as {other:?}"),
    }
});
