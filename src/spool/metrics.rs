//! Spooled mode's metrics, registered on the bridge's registry.

use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::core::metrics::LATENCY_BUCKETS;

/// Spooled mode (`--spool-dir`): the log, its fsyncs and the forwarder.
#[derive(Clone)]
pub struct SpoolMetrics {
    pub bytes: IntGauge,
    pub max_bytes: IntGauge,
    pub unforwarded: IntGauge,
    pub oldest_age: Gauge,
    pub fsync_duration: Histogram,
    pub batch_records: Histogram,
    pub forwarded: IntCounter,
    pub retries: IntCounter,
    pub replayed: IntCounter,
    pub corrupt_records: IntCounter,
    pub corrupt_segments: IntGauge,
    pub dead_letters: IntCounter,
    pub forward_stopped: IntGaugeVec,
    pub refusals: IntCounter,
    pub unreadable_segments: IntGauge,
    pub parked_keys: IntGauge,
    pub parked_records: IntGauge,
    pub sequence_breaks: IntCounter,
    pub out_of_place: IntCounter,
}

impl SpoolMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<SpoolMetrics> {
        let m = SpoolMetrics {
            bytes: IntGauge::new(
                "timbridge_spool_bytes",
                "Bytes of the spool's segments on disk (bounded by --spool-max-bytes).",
            )?,
            max_bytes: IntGauge::new(
                "timbridge_spool_max_bytes",
                "--spool-max-bytes (0 in direct mode): the spool's fill ratio is timbridge_spool_bytes over it.",
            )?,
            unforwarded: IntGauge::new(
                "timbridge_spool_unforwarded_records",
                "Records answered 200 and not yet acknowledged by the broker: the forwarder's lag.",
            )?,
            oldest_age: Gauge::new(
                "timbridge_spool_oldest_unforwarded_age_seconds",
                "Age of the oldest record the forwarder has not had acknowledged (0 when caught up).",
            )?,
            fsync_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "timbridge_spool_fsync_duration_seconds",
                    "Time of each group commit's fdatasync.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            batch_records: Histogram::with_opts(
                HistogramOpts::new(
                    "timbridge_spool_batch_records",
                    "Callbacks made durable by one fdatasync (group commit).",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0]),
            )?,
            forwarded: IntCounter::new(
                "timbridge_spool_forwarded_records_total",
                "Records the forwarder had acknowledged by the broker.",
            )?,
            retries: IntCounter::new(
                "timbridge_spool_forward_retries_total",
                "Publishes the forwarder retried after a transient error (broker down, timeout).",
            )?,
            replayed: IntCounter::new(
                "timbridge_spool_replayed_records_total",
                "Records forwarded after a restart from what an earlier process had spooled.",
            )?,
            corrupt_records: IntCounter::new(
                "timbridge_spool_corrupt_records_total",
                "Records that failed their CRC check and were skipped.",
            )?,
            corrupt_segments: IntGauge::new(
                "timbridge_spool_corrupt_segments",
                "Segments set aside (renamed .corrupt) because they held a corrupt record or a break in the sequence numbers.",
            )?,
            dead_letters: IntCounter::new(
                "timbridge_spool_dead_letters_total",
                "Records the broker refused for good, written to DIR/dead-letters.log.",
            )?,
            forward_stopped: IntGaugeVec::new(
                Opts::new(
                    "timbridge_spool_forward_stopped",
                    "1 when the forwarder stopped at a record this build cannot read (a newer build's format); nothing after it is forwarded until a build that reads it runs.",
                ),
                &["reason"],
            )?,
            refusals: IntCounter::new(
                "timbridge_spool_forward_refusals_total",
                "Publishes the broker refused for a reason an operator can fix (a missing topic, an ACL, credentials); the record waits, its key only, and is tried again.",
            )?,
            unreadable_segments: IntGauge::new(
                "timbridge_spool_unreadable_segments",
                "Segments that could not be read at start-up (an I/O error, permissions), set aside as .seg.unreadable for an operator; their records are not forwarded.",
            )?,
            parked_keys: IntGauge::new(
                "timbridge_spool_parked_keys",
                "Keys (groups) whose record in flight keeps failing: their later records wait on disk, outside the forwarder's window, while other keys go on.",
            )?,
            parked_records: IntGauge::new(
                "timbridge_spool_parked_records",
                "Records waiting behind a parked key, kept on disk (bounded by --forward-max-parked).",
            )?,
            sequence_breaks: IntCounter::new(
                "timbridge_spool_sequence_breaks_total",
                "Places recovery found where the spool's sequence numbers do not follow each other (a number missing or repeated, within a segment or between two); the segments are set aside as .seg.corrupt and forwarded. Counted at each start while they are there.",
            )?,
            out_of_place: IntCounter::new(
                "timbridge_spool_out_of_place_records_total",
                "Records the forwarder did not forward because their sequence number was out of place (a repeat of a number forwarded, or an earlier segment's frame past where the next segment starts); kept in a set-aside segment and logged.",
            )?,
        };
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.max_bytes.clone()))?;
        registry.register(Box::new(m.unforwarded.clone()))?;
        registry.register(Box::new(m.oldest_age.clone()))?;
        registry.register(Box::new(m.fsync_duration.clone()))?;
        registry.register(Box::new(m.batch_records.clone()))?;
        registry.register(Box::new(m.forwarded.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.replayed.clone()))?;
        registry.register(Box::new(m.corrupt_records.clone()))?;
        registry.register(Box::new(m.corrupt_segments.clone()))?;
        registry.register(Box::new(m.dead_letters.clone()))?;
        registry.register(Box::new(m.forward_stopped.clone()))?;
        // Every reason's series from the first scrape (at 0), for the alert.
        // (spool::frame::Undecodable::LABELS; a test there holds the two lists together)
        for reason in ["newer_version", "unknown_header", "malformed"] {
            m.forward_stopped.with_label_values(&[reason]).set(0);
        }
        registry.register(Box::new(m.refusals.clone()))?;
        registry.register(Box::new(m.unreadable_segments.clone()))?;
        registry.register(Box::new(m.parked_keys.clone()))?;
        registry.register(Box::new(m.parked_records.clone()))?;
        registry.register(Box::new(m.sequence_breaks.clone()))?;
        registry.register(Box::new(m.out_of_place.clone()))?;
        Ok(m)
    }

    /// A group commit made `records` callbacks (`bytes` bytes) durable.
    pub fn committed(&self, fsync: Duration, records: usize, _bytes: usize) {
        self.fsync_duration.observe(fsync.as_secs_f64());
        self.batch_records.observe(records as f64);
    }
}
