//! The spool in-process, in front of a scripted sink: what the forwarder does with each kind of
//! refusal, and the byte accounting.

use std::path::Path;
use std::time::Duration;

use super::frame::tests::record;
use super::frame::{encode_payload, put_frame};
use super::segment::Segment;
use super::*;
use crate::deliver::scripted::{Outcome, Scripted};

pub(crate) fn test_config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_owned(),
        segment_bytes: 1 << 20,
        max_bytes: 64 << 20,
        batch_records: 64,
        batch_bytes: 1 << 20,
        queue: 64,
        memory_bytes: 1 << 20,
        forward_max_inflight: 64,
        forward_max_rate: None,
        forward_retry_max: Duration::from_millis(100),
        forward_nice: 0,
        position_interval: Duration::from_millis(20),
        publish_timeout: Duration::from_secs(1),
        appends: true,
    }
}

pub(crate) async fn open(config: SpoolConfig, sink: Scripted) -> (Spool<Scripted>, Metrics) {
    let metrics = Metrics::new().unwrap();
    let spool = Spool::open(config, sink, &metrics, None).unwrap();
    until("recovered", || spool.is_recovered()).await;
    (spool, metrics)
}

pub(crate) async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn seqs(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .find(|(n, _)| *n == crate::sink::record::header::MSG_SEQ)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        })
        .collect()
}

/// A topic deleted and re-created, an ACL slip: the broker refuses for a reason an operator
/// can fix. The record waits (counted) and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_an_operator_can_fix_wait_and_nothing_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Scripted::new(Outcome::Ok);
    let refused = DeliveryError::Misconfigured("TopicAuthorizationFailed".into());
    sink.then(std::iter::repeat_n(Outcome::Fail(refused), 5));
    let (spool, metrics) = open(test_config(dir.path()), sink).await;
    for seq in 1..=10 {
        spool.deliver(&record("g", seq)).await.unwrap();
    }
    until("all forwarded", || spool.sink().delivered().len() == 10).await;
    let expected: Vec<String> = (1..=10).map(|s| s.to_string()).collect();
    assert_eq!(seqs(&spool.sink().delivered()), expected);
    assert_eq!(metrics.spool().refusals.get(), 5);
    assert_eq!(metrics.spool().dead_letters.get(), 0);
    assert!(!dead_letters::path(dir.path()).exists());
    assert!(spool.is_ready());
    spool.close(Duration::from_secs(5)).await;
}

/// A record the broker can never accept is in the dead-letter file, durably, once the
/// position passes it; the key goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_refused_for_good_is_a_durable_dead_letter_and_its_key_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Scripted::new(Outcome::Ok);
    sink.then([
        Outcome::Ok,
        Outcome::Fail(DeliveryError::Rejected("too large".into())),
    ]);
    let (spool, metrics) = open(test_config(dir.path()), sink).await;
    for seq in 1..=3 {
        spool.deliver(&record("g", seq)).await.unwrap();
    }
    until("forwarded", || spool.sink().delivered().len() == 2).await;
    until("dead-lettered", || metrics.spool().dead_letters.get() == 1).await;
    assert_eq!(seqs(&spool.sink().delivered()), ["1", "3"]);
    spool.close(Duration::from_secs(5)).await;
    let (letters, damaged) = dead_letters::list(dir.path()).unwrap();
    assert_eq!(damaged, 0);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].seq, 2);
    assert_eq!(letters[0].record.as_ref().unwrap(), &record("g", 2));
    assert_eq!(position::read(dir.path()).unwrap(), 3);
}

/// A set-aside segment is not counted in the spool's bytes, so forwarding it takes nothing
/// off (an earlier build subtracted its size: the count went below what is on disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_aside_segment_is_neither_counted_nor_subtracted() {
    let dir = tempfile::tempdir().unwrap();
    for first in [1, 11] {
        let mut bytes = Vec::new();
        for seq in first..first + 10 {
            put_frame(&mut bytes, seq, &encode_payload(&record("g", seq)));
        }
        if first == 1 {
            bytes[40] ^= 1;
        }
        std::fs::write(Segment::path_for(dir.path(), first), bytes).unwrap();
    }
    let good = std::fs::metadata(Segment::path_for(dir.path(), 11))
        .unwrap()
        .len();
    let mut config = test_config(dir.path());
    config.appends = false;
    let (spool, _metrics) = open(config, Scripted::new(Outcome::Ok)).await;
    assert_eq!(spool.shared().bytes(), good);
    until("forwarded", || spool.sink().delivered().len() == 19).await;
    spool.close(Duration::from_secs(5)).await;
    assert_eq!(spool.shared().bytes(), good);
}

/// The byte count's subtraction is one atomic step and never goes below zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_count_is_updated_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.appends = false;
    let (spool, _metrics) = open(config, Scripted::new(Outcome::Ok)).await;
    let shared = spool.shared().clone();
    shared.sub_bytes(100);
    assert_eq!(shared.bytes(), 0);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    shared.add_bytes(3);
                    shared.sub_bytes(3);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(shared.bytes(), 0);
    spool.close(Duration::from_secs(5)).await;
}
