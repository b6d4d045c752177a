//! Where the handler delivers: the sink itself (direct mode) or the spool in front of it
//! (spooled mode). One [`Deliver`] for both, so the handler and the listeners do not know which.
//!
//! A callback is matched here straight to the broker's client (or the spool): one dispatch per
//! callback, not one here and another in [`Sink`].

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
            Delivery::Direct(sink) => publish(sink, record).await,
            Delivery::Spooled(spool) => spool.deliver(record).await,
        }
    }

    async fn deliver_owned(&self, record: Record) -> Result<Ack, DeliveryError> {
        match self {
            Delivery::Direct(sink) => publish(sink, &record).await,
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

/// Direct mode: the broker's acknowledgement (stdout: the line written).
async fn publish(sink: &Sink, record: &Record) -> Result<Ack, DeliveryError> {
    match sink {
        Sink::Nats(nats) => nats.publish(record).await,
        Sink::Kafka(kafka) => kafka.publish(record).await,
        Sink::Stdout(stdout) => stdout.publish(record),
    }
}
