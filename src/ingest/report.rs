//! One place per event: the log line and the counters of an answered request come from one
//! function, so they cannot disagree.
//!
//! A flood of bad or shed requests must not become a flood of log lines: each refusal logs at
//! debug, and at most once per [`SUMMARY_EVERY`] per reason a warn line says how many there were
//! since the last one. A permanent broker refusal (`sink_rejected`: a configuration problem)
//! logs every time at warn.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Attempt, Delivered, Rejection};
use crate::before::BeforeOutcome;
use crate::ingest::metrics::Metrics;

/// The longest a reason stays silent at warn while it keeps happening.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

pub(super) struct Report {
    metrics: Metrics,
    origin: Instant,
    /// Per reason (the index in `Rejection::examples()`): when it last logged at warn, in ms
    /// since `origin` plus one (0: never), and how many happened since.
    last_warn_ms: Vec<AtomicU64>,
    since: Vec<AtomicU64>,
    reasons: Vec<&'static str>,
}

impl Report {
    pub(super) fn new(metrics: Metrics) -> Report {
        let reasons: Vec<&'static str> = Rejection::examples().iter().map(|r| r.reason()).collect();
        Report {
            metrics,
            origin: Instant::now(),
            last_warn_ms: reasons.iter().map(|_| AtomicU64::new(0)).collect(),
            since: reasons.iter().map(|_| AtomicU64::new(0)).collect(),
            reasons,
        }
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(super) fn delivered(
        &self,
        attempt: &Attempt,
        sink: &'static str,
        delivered: &Delivered,
        took: Duration,
        peer: SocketAddr,
    ) {
        self.metrics.delivered(
            attempt.command,
            sink,
            took,
            delivered.took,
            delivered.ack.duplicate,
        );
        tracing::debug!(
            %peer,
            command = attempt.command,
            group_id = attempt.group_id.as_deref(),
            msg_seq = attempt.msg_seq,
            duplicate = delivered.ack.duplicate,
            latency_us = took.as_micros() as u64,
            "published"
        );
    }

    pub(super) fn before(
        &self,
        attempt: &Attempt,
        outcome: BeforeOutcome,
        took: Duration,
        peer: SocketAddr,
    ) {
        self.metrics.before_answered(attempt.command, took);
        self.metrics.before.outcome(outcome);
        tracing::debug!(
            %peer,
            command = attempt.command,
            group_id = attempt.group_id.as_deref(),
            outcome = outcome.label(),
            latency_us = took.as_micros() as u64,
            "before-callback answered OK"
        );
    }

    pub(super) fn refused(
        &self,
        attempt: &Attempt,
        rejection: &Rejection,
        took: Duration,
        peer: SocketAddr,
    ) {
        self.metrics.refused(attempt.command, rejection, took);
        let status = rejection.status().as_u16();
        let reason = rejection.reason();
        macro_rules! line {
            ($level:ident, $($extra:tt)*) => {
                tracing::$level!(
                    %peer,
                    command = attempt.command,
                    group_id = attempt.group_id.as_deref(),
                    msg_seq = attempt.msg_seq,
                    status,
                    reason,
                    error = %rejection,
                    latency_us = took.as_micros() as u64,
                    $($extra)*
                )
            };
        }
        if matches!(rejection, Rejection::SinkRejected(_)) {
            line!(warn, "callback not accepted");
            return;
        }
        match self.summary_due(reason) {
            Some(count) => line!(
                warn,
                count,
                "callbacks not accepted for this reason since its last warning (this one shown)"
            ),
            None => line!(debug, "callback not accepted"),
        }
    }

    /// Counts one refusal of `reason`; when its warn line is due, returns how many there were
    /// since the last one (this one included) and starts a new window.
    fn summary_due(&self, reason: &'static str) -> Option<u64> {
        let i = self.reasons.iter().position(|r| *r == reason)?;
        let count = self.since[i].fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.last_warn_ms[i].load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= SUMMARY_EVERY.as_millis() as u64;
        // One thread wins the window; the others count into the next one.
        if due
            && self.last_warn_ms[i]
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.since[i].fetch_sub(count, Ordering::Relaxed);
            Some(count)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_warns_once_per_window_with_the_count() {
        let report = Report::new(Metrics::new(&prometheus::Registry::new()).unwrap());
        assert_eq!(report.summary_due("bad_json"), Some(1));
        for _ in 0..99 {
            assert_eq!(report.summary_due("bad_json"), None);
        }
        // Another reason has its own window.
        assert_eq!(report.summary_due("overloaded"), Some(1));
        // The window passes: the next one reports the 99 held back plus itself.
        let i = report
            .reasons
            .iter()
            .position(|r| *r == "bad_json")
            .unwrap();
        let now = report.origin.elapsed().as_millis() as u64 + 1;
        report.last_warn_ms[i].store(
            now.saturating_sub(SUMMARY_EVERY.as_millis() as u64),
            Ordering::Relaxed,
        );
        assert_eq!(report.summary_due("bad_json"), Some(100));
        assert_eq!(report.summary_due("bad_json"), None);
    }
}
