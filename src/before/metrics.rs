//! The before-callbacks' metrics, registered on the shared registry.

use prometheus::{IntCounterVec, Opts, Registry};

use super::forward::Verdict;
use super::BeforeOutcome;

#[derive(Clone)]
pub struct BeforeMetrics {
    callbacks: IntCounterVec,
    verdicts: IntCounterVec,
}

impl BeforeMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<BeforeMetrics> {
        let callbacks = IntCounterVec::new(
            Opts::new(
                "timbridge_before_callbacks_total",
                "Before-callbacks answered OK without waiting on the broker (--before-callbacks allow or skip), by what became of the event: queued, dropped (a bound was reached), skipped, and later published or publish_failed.",
            ),
            &["outcome"],
        )?;
        let verdicts = IntCounterVec::new(
            Opts::new(
                "timbridge_before_verdicts_total",
                "Before-callbacks relayed to the moderation service (--before-callbacks forward), by verdict: allow, deny, rewrite, or timeout/error (answered allow).",
            ),
            &["verdict"],
        )?;
        registry.register(Box::new(callbacks.clone()))?;
        registry.register(Box::new(verdicts.clone()))?;
        // Series that alerts and dashboards rate() over exist from the first scrape.
        for outcome in BeforeOutcome::ALL {
            callbacks.with_label_values(&[outcome.label()]);
        }
        for verdict in Verdict::ALL {
            verdicts.with_label_values(&[verdict.label()]);
        }
        Ok(BeforeMetrics {
            callbacks,
            verdicts,
        })
    }

    /// What became of a before-callback's event (also when its background publish ends).
    pub fn outcome(&self, outcome: BeforeOutcome) {
        self.callbacks.with_label_values(&[outcome.label()]).inc();
    }

    /// What the moderation service decided (`forward`).
    pub fn verdict(&self, verdict: Verdict) {
        self.verdicts.with_label_values(&[verdict.label()]).inc();
    }
}
