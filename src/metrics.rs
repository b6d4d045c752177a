//! Prometheus metrics on the bridge's own registry, one method per thing that happens.
//!
//! Label values come from fixed sets (command names Tencent documents or `other`, rejection
//! reasons, sink names): never raw error text, user or group ids.

use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::before::BeforeOutcome;
use crate::ingest::{Outcome, Rejection};

/// Seconds; dense below 10 ms (the normal case) and around Tencent's 2 s deadline.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    callbacks: IntCounterVec,
    rejections: IntCounterVec,
    app_callbacks: IntCounterVec,
    signature_failures: IntCounterVec,
    request_duration: Histogram,
    request_time_skew: Histogram,
    publish_duration: HistogramVec,
    broker_duplicates: IntCounterVec,
    before_callbacks: IntCounterVec,
    before_verdicts: IntCounterVec,
    inflight: IntGauge,
    open_connections: IntGauge,
    connections_evicted: IntCounter,
    sink_ready: IntGauge,
    inflight_bytes: IntGauge,
    sink_ack_latency: Gauge,
    sink_backpressure: IntGauge,
    draining: IntGauge,
    kafka: KafkaGauges,
    spool: SpoolMetrics,
}

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
    fn new(registry: &Registry) -> prometheus::Result<SpoolMetrics> {
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

/// librdkafka's statistics that operators watch, updated by the Kafka sink every few seconds.
#[derive(Clone)]
pub struct KafkaGauges {
    queue_messages: IntGauge,
    queue_bytes: IntGauge,
    broker_rtt: Gauge,
    broker_inflight: IntGauge,
}

impl KafkaGauges {
    /// Registers the gauges on `registry`: the bridge's, or the auditor's own.
    pub fn new(registry: &Registry) -> prometheus::Result<KafkaGauges> {
        let gauges = KafkaGauges {
            queue_messages: IntGauge::new(
                "timbridge_kafka_producer_queue_messages",
                "Messages in the Kafka producer's queue (waiting or in flight).",
            )?,
            queue_bytes: IntGauge::new(
                "timbridge_kafka_producer_queue_bytes",
                "Bytes of the messages in the Kafka producer's queue.",
            )?,
            broker_rtt: Gauge::new(
                "timbridge_kafka_broker_rtt_seconds",
                "Average broker round-trip time of the slowest broker over the last statistics window.",
            )?,
            broker_inflight: IntGauge::new(
                "timbridge_kafka_broker_inflight_messages",
                "Messages in produce requests sent to or awaiting a response from the brokers.",
            )?,
        };
        registry.register(Box::new(gauges.queue_messages.clone()))?;
        registry.register(Box::new(gauges.queue_bytes.clone()))?;
        registry.register(Box::new(gauges.broker_rtt.clone()))?;
        registry.register(Box::new(gauges.broker_inflight.clone()))?;
        Ok(gauges)
    }

    pub fn update(&self, queue_messages: u64, queue_bytes: u64, rtt_us: i64, inflight: i64) {
        self.queue_messages
            .set(i64::try_from(queue_messages).unwrap_or(i64::MAX));
        self.queue_bytes
            .set(i64::try_from(queue_bytes).unwrap_or(i64::MAX));
        self.broker_rtt.set(rtt_us as f64 / 1e6);
        self.broker_inflight.set(inflight);
    }
}

impl Metrics {
    /// Registers every metric. Fails only on a programming error (a duplicate name).
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let callbacks = IntCounterVec::new(
            Opts::new(
                "timbridge_callbacks_total",
                "Callbacks answered, by command and outcome (ok: published and acknowledged; rejected: 4xx; failed: 5xx).",
            ),
            &["command", "outcome"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new(
                "timbridge_rejections_total",
                "Requests not answered OK, by reason.",
            ),
            &["reason"],
        )?;
        let app_callbacks = IntCounterVec::new(
            Opts::new(
                "timbridge_app_callbacks_total",
                "Callbacks answered, by the app they claim (a configured SdkAppid, or other) and outcome (ok, rejected, failed).",
            ),
            &["sdkappid", "outcome"],
        )?;
        let signature_failures = IntCounterVec::new(
            Opts::new(
                "timbridge_signature_failures_total",
                "Callbacks refused for their signature (missing, wrong or stale), by the app they claimed: a configured SdkAppid, or other.",
            ),
            &["sdkappid"],
        )?;
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "timbridge_request_duration_seconds",
                "Time from the request's arrival to its answer.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let request_time_skew = Histogram::with_opts(
            HistogramOpts::new(
                "timbridge_request_time_skew_seconds",
                "Distance of a signed callback's RequestTime from this server's clock (accepted and stale ones): a drifting clock on either side shows here before requests are refused.",
            )
            .buckets(vec![1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0]),
        )?;
        let publish_duration = HistogramVec::new(
            HistogramOpts::new(
                "timbridge_publish_duration_seconds",
                "Time from handing a callback to the sink to the broker's acknowledgement (successful publishes).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["sink"],
        )?;
        let broker_duplicates = IntCounterVec::new(
            Opts::new(
                "timbridge_broker_duplicates_total",
                "Publishes the broker acknowledged as duplicates of a message it already had (the same callback delivered twice).",
            ),
            &["sink"],
        )?;
        let before_callbacks = IntCounterVec::new(
            Opts::new(
                "timbridge_before_callbacks_total",
                "Before-callbacks answered OK without waiting on the broker (--before-callbacks allow or skip), by what became of the event: queued, dropped (a bound was reached), skipped, and later published or publish_failed.",
            ),
            &["outcome"],
        )?;
        let before_verdicts = IntCounterVec::new(
            Opts::new(
                "timbridge_before_verdicts_total",
                "Before-callbacks relayed to the moderation service (--before-callbacks forward), by verdict: allow, deny, rewrite, or timeout/error (answered allow).",
            ),
            &["verdict"],
        )?;
        let inflight = IntGauge::new(
            "timbridge_inflight_requests",
            "Callback requests being processed now.",
        )?;
        let open_connections = IntGauge::new(
            "timbridge_open_connections",
            "Open client connections on the callback listener.",
        )?;
        let connections_evicted = IntCounter::new(
            "timbridge_connections_evicted_total",
            "Idle callback connections closed at --max-connections to admit a new one.",
        )?;
        let sink_ready = IntGauge::new(
            "timbridge_sink_ready",
            "1 when the sink is connected and can publish, 0 otherwise.",
        )?;
        let inflight_bytes = IntGauge::new(
            "timbridge_inflight_body_bytes",
            "Request-body bytes reserved by callbacks in flight (bounded by --max-inflight-bytes).",
        )?;
        let sink_ack_latency = Gauge::new(
            "timbridge_sink_ack_latency_seconds",
            "How long the oldest publish still awaiting the broker's acknowledgement has waited, as used for shedding.",
        )?;
        let sink_backpressure = IntGauge::new(
            "timbridge_sink_backpressure",
            "1 while new callbacks are refused because the broker is not acknowledging in time.",
        )?;
        let draining = IntGauge::new(
            "timbridge_draining",
            "1 once shutdown began (readiness false, draining in-flight requests).",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("timbridge_build_info", "Always 1; the version is a label."),
            &["version"],
        )?;

        registry.register(Box::new(callbacks.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(app_callbacks.clone()))?;
        registry.register(Box::new(signature_failures.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(request_time_skew.clone()))?;
        registry.register(Box::new(publish_duration.clone()))?;
        registry.register(Box::new(broker_duplicates.clone()))?;
        registry.register(Box::new(before_callbacks.clone()))?;
        registry.register(Box::new(before_verdicts.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        registry.register(Box::new(open_connections.clone()))?;
        registry.register(Box::new(connections_evicted.clone()))?;
        registry.register(Box::new(sink_ready.clone()))?;
        registry.register(Box::new(inflight_bytes.clone()))?;
        registry.register(Box::new(sink_ack_latency.clone()))?;
        registry.register(Box::new(sink_backpressure.clone()))?;
        registry.register(Box::new(draining.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        let kafka = KafkaGauges::new(&registry)?;
        let spool = SpoolMetrics::new(&registry)?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Series that alerts and dashboards rate() over exist from the first scrape.
        signature_failures.with_label_values(&["other"]);
        for outcome in Outcome::ALL {
            app_callbacks.with_label_values(&["other", outcome.label()]);
        }
        for rejection in Rejection::examples() {
            rejections.with_label_values(&[rejection.reason()]);
        }
        for outcome in crate::before::BeforeOutcome::ALL {
            before_callbacks.with_label_values(&[outcome.label()]);
        }
        for verdict in crate::before::forward::Verdict::ALL {
            before_verdicts.with_label_values(&[verdict.label()]);
        }
        for outcome in Outcome::ALL {
            callbacks.with_label_values(&["Group.CallbackAfterSendMsg", outcome.label()]);
        }

        Ok(Metrics {
            registry,
            callbacks,
            rejections,
            app_callbacks,
            signature_failures,
            request_duration,
            request_time_skew,
            publish_duration,
            broker_duplicates,
            before_callbacks,
            before_verdicts,
            inflight,
            open_connections,
            connections_evicted,
            sink_ready,
            inflight_bytes,
            sink_ack_latency,
            sink_backpressure,
            draining,
            kafka,
            spool,
        })
    }

    /// The gauges the Kafka sink feeds from librdkafka's statistics.
    pub fn kafka_gauges(&self) -> KafkaGauges {
        self.kafka.clone()
    }

    pub fn spool(&self) -> SpoolMetrics {
        self.spool.clone()
    }

    /// A callback was delivered and answered 200. `command` must come from
    /// `callback::command_label`; `publish` is the delivery's share of `took`.
    pub fn delivered(
        &self,
        command: &'static str,
        sink: &'static str,
        took: Duration,
        publish: Duration,
        duplicate: bool,
    ) {
        self.answered(command, Outcome::Ok, took);
        self.publish_duration
            .with_label_values(&[sink])
            .observe(publish.as_secs_f64());
        if duplicate {
            self.broker_duplicates.with_label_values(&[sink]).inc();
        }
    }

    /// Creates the per-app series up front for the configured apps (`other` always exists):
    /// the label's values are bounded by the configuration.
    pub fn for_apps(&self, labels: &[String]) {
        for label in labels {
            self.signature_failures.with_label_values(&[label]);
            for outcome in Outcome::ALL {
                self.app_callbacks
                    .with_label_values(&[label, outcome.label()]);
            }
        }
    }

    /// A request claiming the app `label` was answered.
    pub fn app_callback(&self, label: &str, outcome: Outcome) {
        self.app_callbacks
            .with_label_values(&[label, outcome.label()])
            .inc();
    }

    /// A callback claiming the app `label` was refused for its signature.
    pub fn signature_failure(&self, label: &str) {
        self.signature_failures.with_label_values(&[label]).inc();
    }

    /// A signed callback's `RequestTime` was this far from our clock.
    pub fn request_time_skew(&self, skew_secs: u64) {
        self.request_time_skew.observe(skew_secs as f64);
    }

    /// A before-callback was answered OK without waiting on the broker (`allow`, `skip`).
    pub fn before_answered(&self, command: &'static str, outcome: BeforeOutcome, took: Duration) {
        self.answered(command, Outcome::Ok, took);
        self.before_callback(outcome);
    }

    /// What the moderation service decided (`forward`).
    pub fn before_verdict(&self, verdict: crate::before::forward::Verdict) {
        self.before_verdicts
            .with_label_values(&[verdict.label()])
            .inc();
    }

    /// What became of a before-callback's event (also when its background publish ends).
    pub fn before_callback(&self, outcome: BeforeOutcome) {
        self.before_callbacks
            .with_label_values(&[outcome.label()])
            .inc();
    }

    /// A request was answered with a rejection.
    pub fn refused(&self, command: &'static str, rejection: &Rejection, took: Duration) {
        self.answered(command, rejection.outcome(), took);
        self.rejections
            .with_label_values(&[rejection.reason()])
            .inc();
    }

    fn answered(&self, command: &'static str, outcome: Outcome, took: Duration) {
        self.callbacks
            .with_label_values(&[command, outcome.label()])
            .inc();
        self.request_duration.observe(took.as_secs_f64());
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn inflight(&self) -> GaugeGuard {
        GaugeGuard::new(&self.inflight)
    }

    /// Counts a connection as open until the guard is dropped.
    pub fn connection(&self) -> GaugeGuard {
        GaugeGuard::new(&self.open_connections)
    }

    /// An idle connection was closed to admit a new one at the connection limit.
    pub fn connection_evicted(&self) {
        self.connections_evicted.inc();
    }

    /// The gauges sampled at scrape time.
    pub fn set_state(
        &self,
        sink_ready: bool,
        inflight_bytes: usize,
        ack_latency: Duration,
        backpressure: bool,
    ) {
        self.sink_ready.set(i64::from(sink_ready));
        self.inflight_bytes
            .set(i64::try_from(inflight_bytes).unwrap_or(i64::MAX));
        self.sink_ack_latency.set(ack_latency.as_secs_f64());
        self.sink_backpressure.set(i64::from(backpressure));
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.set(i64::from(draining));
    }

    /// Callback requests being processed now.
    pub fn inflight_now(&self) -> i64 {
        self.inflight.get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec fails only for metrics that are malformed by construction.
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %err, "encoding metrics failed");
        }
        out
    }
}

/// Decrements its gauge when dropped, so early returns and cancelled futures keep it right.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    fn new(gauge: &IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's metrics table names exactly the metrics this file registers.
    #[test]
    fn the_readme_table_matches_the_registry() {
        let section = crate::readme::section("### Metrics");
        let mut documented = std::collections::BTreeSet::new();
        for line in section.lines().filter(|l| l.starts_with("| `")) {
            let cell = line.split('|').nth(1).unwrap_or_default();
            let names: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
            // `a_total`, `..._bytes` abbreviates a second name with the first one's prefix.
            let first = names[0];
            for name in &names {
                match name.strip_prefix("...") {
                    Some(suffix) => {
                        let stem = first.rsplit_once('_').map_or(first, |(s, _)| s);
                        let stem = stem.rsplit_once('_').map_or(stem, |(s, _)| s);
                        documented.insert(format!("{stem}{suffix}"));
                    }
                    None => {
                        documented.insert((*name).to_owned());
                    }
                }
            }
        }
        let metrics = Metrics::new().unwrap();
        // A labelled family shows only once it has a series.
        metrics.delivered("other", "stdout", Duration::ZERO, Duration::ZERO, true);
        let registered: std::collections::BTreeSet<String> = metrics
            .registry
            .gather()
            .iter()
            .map(|family| family.name().to_owned())
            .filter(|name| name.starts_with("timbridge_"))
            .collect();
        let documented: std::collections::BTreeSet<String> = documented
            .into_iter()
            .filter(|name| name.starts_with("timbridge_"))
            .collect();
        assert_eq!(documented, registered, "README (left) vs registry (right)");
        assert!(section.contains("`process_*`"));
    }
}
