//! Flags of spooled mode (`--spool-dir`) and its forwarder.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::parse::{parse_duration, parse_size};
use crate::core::ConfigError;
use crate::spool::SpoolConfig;

#[derive(Debug, Args)]
#[command(next_help_heading = "Spooled mode")]
pub struct SpoolArgs {
    /// Switches on spooled mode: each callback is answered 200 once it is fsynced in this
    /// directory, and forwarded to the broker from there (in per-group order).
    #[arg(long, env = "TIMBRIDGE_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Most bytes the spool holds on disk, segments counted in full (they are preallocated), the
    /// next one included; past it new callbacks get 503 at once (older data is never dropped to
    /// make room).
    #[arg(long, env = "TIMBRIDGE_SPOOL_MAX_BYTES", default_value = "2GiB", value_parser = parse_size)]
    pub spool_max_bytes: usize,

    /// Size of a segment file, preallocated with zeros; at most half of --spool-max-bytes
    /// (forwarded segments are deleted whole).
    #[arg(long, env = "TIMBRIDGE_SPOOL_SEGMENT_BYTES", default_value = "64MiB", value_parser = parse_size)]
    pub spool_segment_bytes: usize,

    /// Most callbacks made durable by one fdatasync (group commit).
    #[arg(long, env = "TIMBRIDGE_SPOOL_BATCH_RECORDS", default_value_t = 1024)]
    pub spool_batch_records: usize,

    /// Most bytes written by one group commit.
    #[arg(long, env = "TIMBRIDGE_SPOOL_BATCH_BYTES", default_value = "4MiB", value_parser = parse_size)]
    pub spool_batch_bytes: usize,

    /// The newest records kept in memory for the forwarder; when it is further behind it reads
    /// the disk.
    #[arg(long, env = "TIMBRIDGE_SPOOL_MEMORY_BYTES", default_value = "32MiB", value_parser = parse_size)]
    pub spool_memory_bytes: usize,

    /// How often the forwarder's acknowledged position is made durable (what a restart may
    /// forward again, with the same dedup ids).
    #[arg(long, env = "TIMBRIDGE_SPOOL_POSITION_INTERVAL", default_value = "200ms", value_parser = parse_duration)]
    pub spool_position_interval: Duration,

    #[command(flatten)]
    pub forward: ForwardArgs,
}

/// The forwarder's flags (also those of `timbridge spool forward`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Forwarder (spooled mode)")]
pub struct ForwardArgs {
    /// Records the forwarder has read and not yet had acknowledged, at most (one in flight per
    /// group; the rest of a group waits behind it).
    #[arg(long, env = "TIMBRIDGE_FORWARD_MAX_INFLIGHT", default_value_t = 1024)]
    pub forward_max_inflight: usize,

    /// Records waiting behind keys whose publish keeps failing (parked: tracked by their place
    /// on disk, about 50 bytes each, outside --forward-max-inflight), at most; past it the
    /// forwarder stops reading until a parked key's records go out.
    #[arg(long, env = "TIMBRIDGE_FORWARD_MAX_PARKED", default_value_t = crate::spool::DEFAULT_MAX_PARKED)]
    pub forward_max_parked: usize,

    /// Publishes per second the forwarder starts at most, so that a returning broker is not
    /// flattened by the backlog; 0: no limit. Keep it well above the steady callback rate.
    #[arg(long, env = "TIMBRIDGE_FORWARD_MAX_RATE", default_value_t = 10000)]
    pub forward_max_rate: u32,

    /// Longest wait between two attempts of one record (the backoff doubles from 100 ms).
    #[arg(long, env = "TIMBRIDGE_FORWARD_RETRY_MAX", default_value = "5s", value_parser = parse_duration)]
    pub forward_retry_max: Duration,

    /// Nice value of the forwarder's threads (0-19; the broker client's I/O runs there too):
    /// on shared cores the callbacks' answers go first, the forwarder takes the idle time.
    #[arg(long, env = "TIMBRIDGE_FORWARD_NICE", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub forward_nice: i32,
}

impl SpoolArgs {
    /// `None` in direct mode. `queue` bounds the appends waiting for the writer (the request
    /// slots of --max-inflight already bound them).
    pub fn into_config(
        self,
        queue: usize,
        publish_timeout: Duration,
    ) -> Result<Option<SpoolConfig>, ConfigError> {
        let Some(dir) = self.spool_dir.clone() else {
            return Ok(None);
        };
        self.into_spool(dir, queue, publish_timeout).map(Some)
    }

    /// The configuration for `dir`.
    pub fn into_spool(
        self,
        dir: PathBuf,
        queue: usize,
        publish_timeout: Duration,
    ) -> Result<SpoolConfig, ConfigError> {
        for (flag, value) in [
            ("--spool-max-bytes", self.spool_max_bytes),
            ("--spool-segment-bytes", self.spool_segment_bytes),
            ("--spool-batch-records", self.spool_batch_records),
            ("--spool-batch-bytes", self.spool_batch_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::new(flag, "must be more than 0"));
            }
        }
        if self.spool_segment_bytes > self.spool_max_bytes / 2 {
            return Err(ConfigError::new(
                "--spool-segment-bytes",
                "must be at most half of --spool-max-bytes (segments are preallocated: the one \
                 being written and the next one count in full)",
            ));
        }
        if self.spool_position_interval.is_zero()
            || self.spool_position_interval > Duration::from_secs(10)
        {
            return Err(ConfigError::new(
                "--spool-position-interval",
                "must be between 1ms and 10s",
            ));
        }
        let mut config = SpoolConfig {
            dir,
            segment_bytes: self.spool_segment_bytes as u64,
            max_bytes: self.spool_max_bytes as u64,
            batch_records: self.spool_batch_records,
            batch_bytes: self.spool_batch_bytes,
            queue,
            memory_bytes: self.spool_memory_bytes,
            forward_max_inflight: 0,
            forward_max_parked: 0,
            forward_max_rate: None,
            forward_retry_max: Duration::ZERO,
            forward_nice: 0,
            position_interval: self.spool_position_interval,
            publish_timeout,
            appends: true,
        };
        self.forward.apply(&mut config)?;
        Ok(config)
    }
}

impl ForwardArgs {
    pub fn apply(&self, config: &mut SpoolConfig) -> Result<(), ConfigError> {
        if self.forward_max_inflight == 0 {
            return Err(ConfigError::new(
                "--forward-max-inflight",
                "must be more than 0",
            ));
        }
        if self.forward_retry_max < Duration::from_millis(100)
            || self.forward_retry_max > Duration::from_secs(600)
        {
            return Err(ConfigError::new(
                "--forward-retry-max",
                "must be between 100ms and 10m",
            ));
        }
        if self.forward_max_parked == 0 {
            return Err(ConfigError::new(
                "--forward-max-parked",
                "must be more than 0",
            ));
        }
        config.forward_max_inflight = self.forward_max_inflight;
        config.forward_max_parked = self.forward_max_parked;
        config.forward_max_rate = Some(self.forward_max_rate).filter(|r| *r > 0);
        config.forward_retry_max = self.forward_retry_max;
        config.forward_nice = self.forward_nice;
        Ok(())
    }
}
