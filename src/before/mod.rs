//! Before-callbacks (`*.CallbackBefore*`, `Sns.CallbackPrev*`): Tencent reads their answer as a
//! verdict (`ErrorCode` 0 lets the user's message, join or group creation go ahead) and waits at
//! most 2 s for it. A bridge is not a moderation service, so by default (`allow`) it answers OK
//! at once and publishes the callback in the background, bounded: when the bound is reached or
//! the broker fails, the event is dropped and counted, never the user's action.
//!
//! - `allow`: OK at once; published in the background (at most `--before-callback-queue`
//!   waiting or in flight; at most once, and not ordered with the group's other events).
//! - `publish`: like every other callback (200 only after the broker's ack). A FAIL answer
//!   (broker down, shedding) may deny the user's action: only for apps that want that.
//! - `skip`: OK at once, nothing published.
//! - `forward`: relayed to the app's moderation service, answered with its verdict (see
//!   [`forward`]), published in the background as for `allow`.
//!
//! The request is still checked as any other (app id, signature, body): a malformed
//! before-callback is not Tencent's and is refused. Before-callbacks have their own request and
//! memory bounds (the same sizes as the others'), so a saturated bridge still answers them; past
//! those bounds, too, the answer is OK and the event is dropped.

pub mod forward;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::core::deliver::Deliver;
use crate::core::Record;
use metrics::BeforeMetrics;

/// What the bridge does with before-callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BeforePolicy {
    /// Answer OK at once; publish in the background, dropping (and counting) what cannot be.
    Allow,
    /// Publish and answer like any other callback (a FAIL answer may deny the user's action).
    Publish,
    /// Answer OK at once; publish nothing.
    Skip,
    /// Relay to --before-callback-url and answer with its verdict (allow when it does not
    /// answer in time); publish in the background, with the verdict, as for allow.
    Forward,
}

#[derive(Debug, Clone)]
pub struct BeforeConfig {
    pub policy: BeforePolicy,
    /// Background publishes waiting or in flight at once (`allow`, `forward`).
    pub queue: usize,
    /// The moderation service (`forward` only).
    pub forward: Option<forward::ForwardConfig>,
}

/// What happened to one before-callback; the `outcome` label of
/// `timbridge_before_callbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeforeOutcome {
    /// Answered OK and handed to the background publisher.
    Queued,
    /// Answered OK; dropped because a bound was reached.
    Dropped,
    /// Answered OK; `skip` publishes nothing.
    Skipped,
    /// The background publish was acknowledged.
    Published,
    /// The background publish failed or timed out; the event is lost (the action was not).
    PublishFailed,
}

impl BeforeOutcome {
    pub const ALL: [BeforeOutcome; 5] = [
        BeforeOutcome::Queued,
        BeforeOutcome::Dropped,
        BeforeOutcome::Skipped,
        BeforeOutcome::Published,
        BeforeOutcome::PublishFailed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            BeforeOutcome::Queued => "queued",
            BeforeOutcome::Dropped => "dropped",
            BeforeOutcome::Skipped => "skipped",
            BeforeOutcome::Published => "published",
            BeforeOutcome::PublishFailed => "publish_failed",
        }
    }
}

/// Publishes before-callbacks without the answer waiting: each record is a task holding one of
/// `queue` permits until its publish ends (acknowledged, failed or past the publish deadline).
pub struct Background<D> {
    delivery: Arc<D>,
    slots: Arc<Semaphore>,
    publish_timeout: Duration,
    metrics: BeforeMetrics,
}

impl<D: Deliver> Background<D> {
    pub fn new(
        delivery: Arc<D>,
        queue: usize,
        publish_timeout: Duration,
        metrics: BeforeMetrics,
    ) -> Self {
        Background {
            delivery,
            slots: Arc::new(Semaphore::new(queue.max(1))),
            publish_timeout,
            metrics,
        }
    }

    /// Hands `record` to the background, or drops it when `queue` publishes are already
    /// waiting or in flight.
    pub fn offer(&self, record: Record) -> BeforeOutcome {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return BeforeOutcome::Dropped;
        };
        let delivery = self.delivery.clone();
        let metrics = self.metrics.clone();
        let timeout = self.publish_timeout;
        tokio::spawn(async move {
            let published = tokio::time::timeout(timeout, delivery.deliver_owned(record)).await;
            let outcome = match published {
                Ok(Ok(_)) => BeforeOutcome::Published,
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "background publish of a before-callback failed");
                    BeforeOutcome::PublishFailed
                }
                Err(_) => BeforeOutcome::PublishFailed,
            };
            metrics.outcome(outcome);
            drop(slot);
        });
        BeforeOutcome::Queued
    }
}
