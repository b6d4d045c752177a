//! What every layer shares and nothing else: the record a consumer receives and its header
//! names, the delivery seam, the settings error, secrets, and the metric helpers. Imports
//! nothing from the crate.

pub mod deliver;
pub mod error;
pub mod metrics;
#[cfg(test)]
pub mod readme;
pub mod record;
pub mod secret;

/// What a 200 promises, in the one sentence the README, the docs, `--help` and the metrics'
/// help all use (a test holds them to it).
pub const OK_MEANS: &str = "A 200 means the callback is stored: in direct mode the broker acknowledged it; in spooled mode it is fsynced in the spool, which forwards it to the broker afterwards.";

pub use deliver::{Ack, Deliver, DeliveryError, StoredAt};
pub use error::ConfigError;
pub use record::{header, Record};
pub use secret::Secret;
