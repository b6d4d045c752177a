//! `timbridge spool drain DIR`: forwards what a spool holds and returns once it is empty: the
//! volume of a pod that will not come back (a StatefulSet scaled down keeps it) is emptied by
//! a Job running this.

use std::time::Duration;

use super::{OpenError, Spool, SpoolConfig};
use crate::config::{ConfigError, SinkConfig};
use crate::deliver::Deliver;
use crate::metrics::Metrics;
use crate::sink::Sink;

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("the spool could not be recovered or read (see the log)")]
    Failed,
}

/// Forwards every record of the spool to `sink`; the number forwarded.
pub async fn drain(sink: SinkConfig, config: SpoolConfig) -> Result<u64, DrainError> {
    let metrics = Metrics::new().map_err(|e| ConfigError::new("metrics", e.to_string()))?;
    let sink = Sink::connect(&sink, config.publish_timeout, &metrics).await?;
    let spool = Spool::open(config, sink, &metrics, None)?;
    while !spool.is_recovered() {
        if spool.fatal().is_cancelled() {
            return Err(DrainError::Failed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // No deadline: the point is to empty it. A signal kills the process; the position is
    // durable every few hundred ms, so a second run forwards only what is left (again).
    spool.close(Duration::from_secs(365 * 24 * 3600)).await;
    Ok(metrics.spool().forwarded.get())
}
