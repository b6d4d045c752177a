//! The ordered stream's metrics, on the auditor's registry.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::entry::Skip;

#[derive(Clone)]
pub struct OrderedMetrics {
    /// Entries stored in the ordered stream, by kind: message, marker, passthrough.
    pub released: IntCounterVec,
    pub markers: IntCounterVec,
    pub held_records: IntGauge,
    pub held_bytes: IntGauge,
    pub oldest_hole: IntGauge,
    pub latency: Histogram,
    pub duplicates: IntCounter,
    pub refetched: IntCounter,
    pub publish_failures: IntCounter,
}

impl OrderedMetrics {
    pub fn new(registry: &Registry) -> OrderedMetrics {
        fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
            r.register(Box::new(m.clone())).expect("registered once");
            m
        }
        let released = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "timbridge_audit_ordered_released_total",
                    "Entries stored in the ordered stream, by kind: message (a group message, live or backfilled), marker (a seq that is gone), passthrough (another command, in arrival order).",
                ),
                &["kind"],
            )
            .expect("valid metric"),
        );
        let markers = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "timbridge_audit_ordered_markers_total",
                    "Markers stored in the ordered stream, by reason: system, deleted, no_history, expired, not_found, group_gone, refused.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
        );
        let gauge = |name: &str, help: &str| {
            register(registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let counter = |name: &str, help: &str| {
            register(registry, IntCounter::new(name, help).expect("valid metric"))
        };
        let latency = register(
            registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "timbridge_audit_ordered_release_latency_seconds",
                    "From the main stream's append of a record to its store in the ordered stream.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                ]),
            )
            .expect("valid metric"),
        );
        for kind in ["message", "marker", "passthrough"] {
            released.with_label_values(&[kind]);
        }
        for reason in Skip::ALL {
            markers.with_label_values(&[reason.label()]);
        }
        OrderedMetrics {
            released,
            markers,
            held_records: gauge(
                "timbridge_audit_ordered_held_records",
                "Records and markers waiting behind holes for the ordered stream.",
            ),
            held_bytes: gauge(
                "timbridge_audit_ordered_held_bytes",
                "Bytes of held records kept in memory (bounded by --ordered-max-held-bytes; the rest is read back from the main stream).",
            ),
            oldest_hole: gauge(
                "timbridge_audit_ordered_oldest_hole_seconds",
                "Age of the oldest hole holding a group's records back from the ordered stream; 0 when none.",
            ),
            latency,
            duplicates: counter(
                "timbridge_audit_ordered_duplicates_total",
                "Records of seqs already released or held, not stored again.",
            ),
            refetched: counter(
                "timbridge_audit_ordered_refetched_total",
                "Held records whose body was read back from the main stream (dropped from memory, or held across a restart).",
            ),
            publish_failures: counter(
                "timbridge_audit_ordered_publish_failures_total",
                "Ordered publishes that failed and were retried (NATS).",
            ),
        }
    }
}
