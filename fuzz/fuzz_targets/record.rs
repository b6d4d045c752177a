//! The record builder: a body accepted under a command, through `VerifiedQuery::accept`, into
//! `RecordBuilder::build`; then the record through the spool's frame and back.
//!
//! Input: a byte choosing the command, a byte choosing the partition count and the template,
//! a byte of URL flags, then the body.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use timbridge::core::record::header;
use timbridge::spool::frame::{self, Read};
use timbridge::tencent::callback::commands::COMMANDS;
use timbridge::tencent::callback::{Policy, Signers, VerifiedQuery};
use timbridge::wire::{partition, RecordBuilder, Template};

const TEMPLATES: [&str; 4] = [
    "tim.{command}.{partition}",
    "tim.{sdkappid}.{command}",
    "tim-{command}",
    "fixed.subject",
];

fuzz_target!(|data: &[u8]| {
    let [pick, shape, flags, body @ ..] = data else {
        return;
    };
    let command = COMMANDS
        .get(usize::from(*pick) % (COMMANDS.len() + 1))
        .map_or("Group.CallbackSomethingNew", |spec| spec.name);
    let mut query = format!("SdkAppid=1400000000&CallbackCommand={command}");
    if flags & 1 == 1 {
        query.push_str("&ClientIP=127.0.0.1");
    }
    if flags & 2 == 2 {
        query.push_str("&OptPlatform=Mac%20OS");
    }
    let policy = Policy {
        signers: Signers::Any { token: None },
        max_clock_skew: Duration::from_secs(60),
    };
    let verified = VerifiedQuery::verify(&query, &policy, 0).expect("a fixed valid query");
    let body = Bytes::copy_from_slice(body);
    let Ok(callback) = verified.accept(body.clone(), 1_700_000_000_000) else {
        return;
    };
    let partitions = u32::from(shape & 0x3f) + 1;
    let template = Template::parse("--nats-subject", TEMPLATES[usize::from(shape >> 6)])
        .expect("a fixed valid template");
    let record = RecordBuilder::new(template, partitions).build(callback);

    assert_eq!(record.body, body);
    assert!(record.partition < partitions);
    assert_eq!(
        record.partition,
        partition(record.key.as_bytes(), partitions)
    );
    // Subjects and topics are made of the template and the command table: nothing a caller
    // chose.
    assert!(
        record
            .destination
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')),
        "{:?}",
        record.destination
    );
    for (name, value) in &record.headers {
        assert!(header::lookup(name).is_some(), "{name}");
        assert!(!value.chars().any(char::is_control), "{name}: {value:?}");
    }
    assert!(!record.key.is_empty() && !record.key.chars().any(char::is_control));

    // What the spool stores is the record itself.
    let mut out = Vec::new();
    frame::put_record_frame(&mut out, 7, &record);
    assert_eq!(out.len(), frame::HEADER_BYTES + frame::payload_len(&record));
    match frame::read_frame(&Bytes::from(out)) {
        Read::Frame { seq, payload, .. } => {
            assert_eq!(seq, 7);
            assert_eq!(payload.as_ref(), frame::encode_payload(&record).as_slice());
            assert_eq!(frame::decode_payload(&payload).as_ref(), Ok(&record));
        }
        other => panic!("a frame just written reads as {other:?}"),
    }
});
