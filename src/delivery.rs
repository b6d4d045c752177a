//! Where the handler delivers: the sink itself (direct mode) or the spool in front of it
//! (spooled mode). One [`Deliver`] for both, so the handler and the listeners do not know which.

use crate::core::deliver::{Ack, Deliver, DeliveryError};
use crate::core::Record;
use crate::sink::Sink;
use crate::spool::Spool;

/// What the handler delivers to: the sink itself (direct mode: 200 after the broker's ack), or
/// the spool in front of it (spooled mode: 200 once fsynced).
// One per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Delivery {
    Direct(Sink),
    Spooled(Spool<Sink>),
}

impl Deliver for Delivery {
    fn name(&self) -> &'static str {
        match self {
            Delivery::Direct(sink) => sink.name(),
            Delivery::Spooled(spool) => spool.name(),
        }
    }

    async fn deliver(&self, record: &Record) -> Result<Ack, DeliveryError> {
        match self {
            Delivery::Direct(sink) => sink.deliver(record).await,
            Delivery::Spooled(spool) => spool.deliver(record).await,
        }
    }

    async fn deliver_owned(&self, record: Record) -> Result<Ack, DeliveryError> {
        match self {
            Delivery::Direct(sink) => sink.deliver(&record).await,
            Delivery::Spooled(spool) => spool.deliver_owned(record).await,
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Delivery::Direct(sink) => sink.is_ready(),
            Delivery::Spooled(spool) => spool.is_ready(),
        }
    }

    fn unready_reason(&self) -> Option<&'static str> {
        match self {
            Delivery::Direct(sink) => sink.unready_reason(),
            Delivery::Spooled(spool) => spool.unready_reason(),
        }
    }

    fn is_healthy(&self) -> bool {
        match self {
            Delivery::Direct(sink) => sink.is_healthy(),
            Delivery::Spooled(spool) => spool.is_healthy() && spool.sink().is_healthy(),
        }
    }

    async fn close(&self, timeout: std::time::Duration) {
        match self {
            Delivery::Direct(sink) => sink.close(timeout).await,
            Delivery::Spooled(spool) => spool.close(timeout).await,
        }
    }
}
