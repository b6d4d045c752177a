//! The auditor's Prometheus metrics, on a registry of its own (`timbridge audit` is its own
//! process), its Kafka producer's gauges included. Labels come from fixed sets: never group ids.

use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use super::ordered::metrics::OrderedMetrics;
use super::resolve::Reason;
use super::tracker::Seen;
use crate::sink::metrics::KafkaGauges;
use crate::tencent::rest::group;

#[derive(Clone)]
pub struct AuditMetrics {
    registry: Registry,
    /// Seqs by what happened to them once found missing: found, backfilled, settled,
    /// unrecoverable.
    pub gap_seqs: IntCounterVec,
    pub unrecoverable: IntCounterVec,
    /// Consumed group-message records by [`Seen`].
    pub seen: IntCounterVec,
    pub rest_calls: IntCounterVec,
    pub groups: IntGauge,
    pub evicted: IntCounterVec,
    pub lag: Gauge,
    pub pending_gaps: IntGauge,
    pub credentials_ok: IntGauge,
    /// Lookups that failed (the REST reads, or publishing what they found).
    pub lookup_failures: IntCounter,
    /// Groups whose last lookup failed: waiting for their next try, or due for it.
    pub backing_off: IntGauge,
    /// librdkafka's statistics of the backfill producer (`--sink kafka`).
    pub kafka: KafkaGauges,
    /// The ordered stream's (registered whether it is on or not).
    pub ordered: OrderedMetrics,
    /// Samples compared with Tencent's history (`--verify-sample`), by result.
    verified: IntCounterVec,
    /// Published group messages found forged, by reason.
    forged: IntCounterVec,
}

impl AuditMetrics {
    pub fn new() -> AuditMetrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let gap_seqs = counter(
            "timbridge_audit_gap_seqs_total",
            "Missing MsgSeqs by outcome: found (due for a lookup), backfilled, settled (a system notice or placeholder), unrecoverable.",
            &["outcome"],
        );
        let unrecoverable = counter(
            "timbridge_audit_unrecoverable_seqs_total",
            "MsgSeqs that could not be repaired, by reason (no_history, expired, not_found, group_gone, refused).",
            &["reason"],
        );
        let seen = counter(
            "timbridge_audit_records_total",
            "Group-message records consumed, by kind: in_order, ahead (opens a gap), regression (arrived after a higher seq), repeat.",
            &["kind"],
        );
        let rest_calls = counter(
            "timbridge_audit_rest_calls_total",
            "Tencent REST calls (attempts) by command and result.",
            &["command", "result"],
        );
        let evicted = counter(
            "timbridge_audit_groups_evicted_total",
            "Groups dropped from tracking: idle, or cap (--audit-max-groups made room early).",
            &["reason"],
        );
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let groups = gauge("timbridge_audit_groups", "Groups tracked.");
        let pending_gaps = gauge(
            "timbridge_audit_pending_gaps",
            "Gaps past their grace waiting for (or in) a lookup.",
        );
        let credentials_ok = gauge(
            "timbridge_audit_rest_credentials_ok",
            "1 while Tencent accepts every app's REST credentials, 0 once one was refused.",
        );
        let backing_off = gauge(
            "timbridge_audit_groups_backing_off",
            "Groups whose last lookup failed: each waits 5 s after its first failure in a row, twice as long after each next one, up to --audit-retry-max.",
        );
        let lookup_failures = IntCounter::new(
            "timbridge_audit_lookup_failures_total",
            "Gap lookups that failed (Tencent's history unreadable after every attempt, or its backfills not published); the gap is tried again after the group's backoff.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(lookup_failures.clone()))
            .expect("registered once");
        let kafka = KafkaGauges::new(&registry).expect("registered once");
        let ordered = OrderedMetrics::new(&registry);
        credentials_ok.set(1);
        let lag = Gauge::new(
            "timbridge_audit_lag_seconds",
            "Age (tim-received-at) of the last record consumed: how far the auditor is behind the stream.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(lag.clone()))
            .expect("registered once");
        let verified = counter(
            "timbridge_audit_verified_total",
            "Live group messages sampled by --verify-sample and compared with Tencent's history, by result: ok, forged, unverifiable (deleted, recalled, expired), failed (the lookup), skipped (the queue was full).",
            &["result"],
        );
        let forged = counter(
            "timbridge_audit_forged_total",
            "Published group messages that are not Tencent's, by reason: mismatch (fields differ from the history), not_in_history (no message at that seq), above_next_msg_seq (a seq Tencent has not assigned yet opened a gap, which was not walked).",
            &["reason"],
        );
        for result in ["ok", "forged", "unverifiable", "failed", "skipped"] {
            verified.with_label_values(&[result]);
        }
        for reason in ["mismatch", "not_in_history", "above_next_msg_seq"] {
            forged.with_label_values(&[reason]);
        }
        for outcome in ["found", "backfilled", "settled", "unrecoverable"] {
            gap_seqs.with_label_values(&[outcome]);
        }
        for reason in [
            Reason::NoHistory,
            Reason::Expired,
            Reason::NotFound,
            Reason::GroupGone,
            Reason::Refused,
        ] {
            unrecoverable.with_label_values(&[reason.label()]);
        }
        for kind in [Seen::InOrder, Seen::Ahead, Seen::Regression, Seen::Repeat] {
            seen.with_label_values(&[seen_label(kind)]);
        }
        // The series dashboards and alerts read exist before the first call or eviction.
        for command in [group::HISTORY, group::GROUP_INFO] {
            for result in ["ok", "rate_limited", "unavailable", "credentials"] {
                rest_calls.with_label_values(&[command, result]);
            }
        }
        for reason in ["idle", "cap"] {
            evicted.with_label_values(&[reason]);
        }
        AuditMetrics {
            registry,
            gap_seqs,
            unrecoverable,
            seen,
            rest_calls,
            groups,
            evicted,
            lag,
            pending_gaps,
            credentials_ok,
            lookup_failures,
            backing_off,
            kafka,
            ordered,
            verified,
            forged,
        }
    }

    /// A sample's result: ok, forged, unverifiable, failed or skipped.
    pub fn verified(&self, result: &'static str) {
        self.verified.with_label_values(&[result]).inc();
    }

    /// A forged group message: mismatch, not_in_history or above_next_msg_seq.
    pub fn forged(&self, reason: &'static str) {
        self.forged.with_label_values(&[reason]).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for AuditMetrics {
    fn default() -> Self {
        AuditMetrics::new()
    }
}

pub fn seen_label(seen: Seen) -> &'static str {
    match seen {
        Seen::InOrder => "in_order",
        Seen::Ahead => "ahead",
        Seen::Regression => "regression",
        Seen::Repeat => "repeat",
    }
}

#[cfg(test)]
mod tests {
    /// The README's auditor metrics table names exactly what this registry holds.
    #[test]
    fn the_readme_table_matches_the_registry() {
        let documented: std::collections::BTreeSet<String> =
            crate::core::readme::section("### Auditor metrics")
                .lines()
                .filter(|l| l.starts_with("| `timbridge_"))
                .map(|l| l.split('`').nth(1).unwrap().to_owned())
                .collect();
        let metrics = super::AuditMetrics::new();
        let registered: std::collections::BTreeSet<String> = metrics
            .registry
            .gather()
            .iter()
            .map(|family| family.name().to_owned())
            .collect();
        assert_eq!(documented, registered, "README (left) vs registry (right)");
    }

    /// With `--sink kafka` the auditor's producer reports librdkafka's statistics into these
    /// gauges: they are on the auditor's `/metrics`, not on a registry nobody serves.
    #[test]
    fn the_kafka_client_gauges_are_exported() {
        let text = super::AuditMetrics::new().encode();
        for family in [
            "timbridge_kafka_producer_queue_messages",
            "timbridge_kafka_producer_queue_bytes",
            "timbridge_kafka_broker_rtt_seconds",
            "timbridge_kafka_broker_inflight_messages",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{family} "))),
                "{family} is not exported"
            );
        }
    }
}
