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

pub use deliver::{Ack, Deliver, DeliveryError, StoredAt};
pub use error::ConfigError;
pub use record::{header, Record};
pub use secret::Secret;
