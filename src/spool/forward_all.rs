//! `timbridge spool forward DIR` (formerly `spool drain`, still accepted): forwards what a
//! spool holds and returns once it is empty: the volume of a pod that will not come back (a
//! StatefulSet scaled down keeps it) is emptied by a Job running this.

use std::time::Duration;

use super::metrics::SpoolMetrics;
use super::{OpenError, Spool, SpoolConfig};
use crate::core::deliver::Deliver;
use crate::core::ConfigError;
use crate::sink::KafkaGauges;
use crate::sink::Sink;
use crate::sink::SinkConfig;

#[derive(Debug, thiserror::Error)]
pub enum ForwardAllError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("the spool could not be recovered or read (see the log)")]
    Failed,
    /// The forwarder stopped with records left: never reported as emptied.
    #[error("{left} records are still in the spool, unforwarded ({forwarded} forwarded){}", stopped.as_ref().map(|s| format!("; forwarding stopped at {s}")).unwrap_or_default())]
    Left {
        forwarded: u64,
        left: u64,
        stopped: Option<String>,
    },
}

/// Forwards every record of the spool to `sink`; the number forwarded. An error when any
/// record is left unforwarded (unreadable, or of a newer build's format), with how many.
pub async fn forward_all(sink: SinkConfig, config: SpoolConfig) -> Result<u64, ForwardAllError> {
    // A registry of its own: nothing serves it, the counters say what was forwarded.
    let registry = prometheus::Registry::new();
    let metric_error = |e: prometheus::Error| ConfigError::new("metrics", e.to_string());
    let metrics = SpoolMetrics::new(&registry).map_err(metric_error)?;
    let kafka = KafkaGauges::new(&registry).map_err(metric_error)?;
    let sink = Sink::connect(&sink, config.publish_timeout, &kafka).await?;
    let spool = Spool::open(config, sink, &metrics, None)?;
    while !spool.is_recovered() {
        if spool.fatal().is_cancelled() {
            return Err(ForwardAllError::Failed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // No deadline: the point is to empty it. A signal kills the process; the position is
    // durable every few hundred ms, so a second run forwards only what is left (again).
    spool.close(Duration::from_secs(365 * 24 * 3600)).await;
    let forwarded = metrics.forwarded.get();
    // The forwarder stops early only when it cannot read on: what it did not pass is left.
    let left = metrics.unforwarded.get().max(0) as u64;
    if left > 0 {
        let stopped = spool
            .state()
            .stopped_at()
            .map(|(seq, why)| format!("seq {seq}: {why}"));
        return Err(ForwardAllError::Left {
            forwarded,
            left,
            stopped,
        });
    }
    Ok(forwarded)
}
