//! The bridge's one registry: the process's own series, then each component's metrics,
//! registered by the component that counts them.

use prometheus::Registry;

use crate::http::metrics::ListenerMetrics;
use crate::ingest::report::Metrics;
use crate::sink::KafkaGauges;
use crate::spool::metrics::SpoolMetrics;

/// Every component's metrics on one registry, which `/metrics` serves.
pub struct BridgeMetrics {
    pub registry: Registry,
    /// The callback listener's, before a request exists (TLS, PROXY headers).
    pub listener: ListenerMetrics,
    /// The request path's (and the before-callbacks').
    pub ingest: Metrics,
    /// Spooled mode's (registered in direct mode too: `timbridge_spool_max_bytes` says 0).
    pub spool: SpoolMetrics,
    /// Fed by the Kafka sink from librdkafka's statistics.
    pub kafka: KafkaGauges,
}

impl BridgeMetrics {
    /// Fails only on a programming error (two metrics of one name).
    pub fn new() -> prometheus::Result<BridgeMetrics> {
        let registry = crate::core::metrics::registry()?;
        Ok(BridgeMetrics {
            listener: ListenerMetrics::new(&registry)?,
            ingest: Metrics::new(&registry)?,
            spool: SpoolMetrics::new(&registry)?,
            kafka: KafkaGauges::new(&registry)?,
            registry,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;

    /// The README's metrics table names exactly the metrics the bridge registers.
    #[test]
    fn the_readme_table_matches_the_registry() {
        let section = crate::core::readme::section("### Metrics");
        let mut documented = BTreeSet::new();
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
        let metrics = BridgeMetrics::new().unwrap();
        // A labelled family shows only once it has a series.
        metrics
            .ingest
            .delivered("other", "stdout", Duration::ZERO, Duration::ZERO, true);
        metrics.ingest.app_signed("1400000000", true);
        metrics.ingest.set_state(
            "stdout",
            crate::ingest::report::State {
                ready: true,
                inflight_bytes: 0,
                ack_latency: Duration::ZERO,
                backpressure: false,
            },
        );
        let registered: BTreeSet<String> = metrics
            .registry
            .gather()
            .iter()
            .map(|family| family.name().to_owned())
            .filter(|name| name.starts_with("timbridge_"))
            .collect();
        let documented: BTreeSet<String> = documented
            .into_iter()
            .filter(|name| name.starts_with("timbridge_"))
            .collect();
        assert_eq!(documented, registered, "README (left) vs registry (right)");
        assert!(section.contains("`process_*`"));
    }
}
