//! The delivery seam: the handler hands a [`Record`] to a [`Deliver`] and answers once it
//! resolves. The sinks (stdout, NATS, Kafka) implement it, and so does the spool. An
//! implementation resolves `Ok` only when the record is safe (the broker's ack, the line
//! written), so the HTTP answer can wait on it.
//!
//! The handler bounds every `deliver` by the publish deadline; an implementation need not.

#[cfg(any(test, feature = "test-util"))]
pub mod scripted;

use std::future::Future;
use std::time::Duration;

use crate::core::Record;

/// What the receiving end said about a record it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The broker already had this record (a redelivered callback) and did not store it again.
    pub duplicate: bool,
    /// Where the broker keeps it (the earlier copy's place for a duplicate), when it says.
    pub stored_at: Option<StoredAt>,
}

impl Ack {
    pub const STORED: Ack = Ack {
        duplicate: false,
        stored_at: None,
    };
}

/// A record's place in the broker: a JetStream stream sequence, or a Kafka partition and
/// offset (of the record's topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredAt {
    Stream(u64),
    Partition(i32, i64),
}

/// Why a record was not taken. Each maps to one rejection (and so one status and ErrorCode).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The broker cannot take records now (down, disconnected); a later attempt may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// The broker refused this record and would refuse it again whatever an operator does
    /// (too large, invalid for the broker).
    #[error("{0}")]
    Rejected(String),
    /// The broker refuses records of this destination for a reason an operator can fix (a
    /// topic missing or re-created, an ACL, credentials): the record itself is fine. Direct
    /// mode answers it like a refusal; the spool keeps the record and tries again.
    #[error("{0}")]
    Misconfigured(String),
    /// A bound of the client is full (producer queue, pending acks): the broker is not keeping
    /// up with the offered load.
    #[error("{0}")]
    Backpressure(String),
    /// No acknowledgement in time (the client's own timeout, or the publish deadline).
    #[error("no acknowledgement in time")]
    TimedOut,
    /// The spool has no room (its byte bound, or the disk itself).
    #[error("{0}")]
    Full(String),
}

/// Where accepted callbacks go.
pub trait Deliver: Send + Sync + 'static {
    /// The `sink` metric label.
    fn name(&self) -> &'static str;

    /// Takes `record` and resolves once it is safe, or with why it is not.
    fn deliver(&self, record: &Record) -> impl Future<Output = Result<Ack, DeliveryError>> + Send;

    /// The same for a record the caller is done with: a delivery that keeps records (the
    /// spool's memory tail) takes it instead of copying it.
    fn deliver_owned(
        &self,
        record: Record,
    ) -> impl Future<Output = Result<Ack, DeliveryError>> + Send {
        async move { self.deliver(&record).await }
    }

    /// Whether a delivery can succeed now (connected, stream present).
    fn is_ready(&self) -> bool;

    /// Why it is not ready (the `/readyz` body), `None` when it is.
    fn unready_reason(&self) -> Option<&'static str> {
        (!self.is_ready()).then_some("sink not ready")
    }

    /// False only when deliveries can never succeed again without a restart (a fatal producer
    /// error): `/healthz` fails so that Kubernetes restarts the pod.
    fn is_healthy(&self) -> bool {
        true
    }

    /// Flushes what is buffered, waiting at most `timeout`.
    fn close(&self, timeout: Duration) -> impl Future<Output = ()> + Send;
}
