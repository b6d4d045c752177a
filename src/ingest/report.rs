//! What the request path reports: its metrics, registered on the shared registry (one method
//! per thing that happens), and its log lines. The log line and the counters of an answered
//! request come from one function, so they cannot disagree.
//!
//! Label values come from fixed sets (command names Tencent documents or `other`, rejection
//! reasons, sink names): never raw error text, user or group ids.
//!
//! A flood of bad or shed requests must not become a flood of log lines: each refusal logs at
//! debug, and at most once per [`SUMMARY_EVERY`] per reason a warn line says how many there were
//! since the last one. A permanent broker refusal (`sink_rejected`: a configuration problem)
//! logs every time at warn.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use super::{Attempt, Delivered, Rejection};
use crate::before::metrics::BeforeMetrics;
use crate::before::BeforeOutcome;
use crate::core::metrics::LATENCY_BUCKETS;

/// What the admin listener samples at scrape time.
pub struct State {
    pub ready: bool,
    pub inflight_bytes: usize,
    pub ack_latency: Duration,
    pub backpressure: bool,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    callbacks: IntCounterVec,
    rejections: IntCounterVec,
    app_callbacks: IntCounterVec,
    signature_failures: IntCounterVec,
    app_signed: IntGaugeVec,
    request_duration: Histogram,
    request_time_skew: Histogram,
    publish_duration: HistogramVec,
    broker_duplicates: IntCounterVec,
    inflight: IntGauge,
    open_connections: IntGauge,
    connections_evicted: IntCounter,
    replays: IntCounter,
    replays_forgotten: IntCounter,
    delivery_ready: IntGaugeVec,
    inflight_bytes: IntGauge,
    delivery_ack_latency: GaugeVec,
    delivery_backpressure: IntGaugeVec,
    draining: IntGauge,
    /// The before-callbacks' own, counted where their background publishes end.
    pub before: BeforeMetrics,
}

impl Metrics {
    /// Registers the request path's metrics (and the before-callbacks') on `registry`. Fails
    /// only on a programming error (a duplicate name).
    pub fn new(registry: &Registry) -> prometheus::Result<Metrics> {
        let callbacks = IntCounterVec::new(
            Opts::new(
                "timbridge_callbacks_total",
                "Callbacks answered, by command and outcome (ok: answered 200; rejected: 4xx; failed: 5xx). A 200 means the callback is stored: in direct mode the broker acknowledged it; in spooled mode it is fsynced in the spool, which forwards it to the broker afterwards.",
            ),
            &["command", "outcome"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new(
                "timbridge_rejections_total",
                "Requests not answered OK, by reason.",
            ),
            &["reason"],
        )?;
        let app_callbacks = IntCounterVec::new(
            Opts::new(
                "timbridge_app_callbacks_total",
                "Callbacks answered, by the app they claim (a configured SdkAppid, or other) and outcome (ok, rejected, failed).",
            ),
            &["sdkappid", "outcome"],
        )?;
        let signature_failures = IntCounterVec::new(
            Opts::new(
                "timbridge_signature_failures_total",
                "Callbacks refused for their signature (missing, wrong or stale), by the app they claimed: a configured SdkAppid, or other.",
            ),
            &["sdkappid"],
        )?;
        let app_signed = IntGaugeVec::new(
            Opts::new(
                "timbridge_app_signed",
                "1 when the app's callbacks must carry Tencent's Sign (it has a token), 0 when they are served unsigned (anyone who reaches the endpoint can publish); other: any SdkAppid (--allow-any-sdkappid).",
            ),
            &["sdkappid"],
        )?;
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "timbridge_request_duration_seconds",
                "Time from the request's arrival to its answer.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let request_time_skew = Histogram::with_opts(
            HistogramOpts::new(
                "timbridge_request_time_skew_seconds",
                "Distance of a signed callback's RequestTime from this server's clock (accepted and stale ones): a drifting clock on either side shows here before requests are refused.",
            )
            .buckets(vec![1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0]),
        )?;
        let publish_duration = HistogramVec::new(
            HistogramOpts::new(
                "timbridge_publish_duration_seconds",
                "Time from handing a callback to the sink to the broker's acknowledgement (successful publishes).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["sink"],
        )?;
        let broker_duplicates = IntCounterVec::new(
            Opts::new(
                "timbridge_broker_duplicates_total",
                "Publishes the broker acknowledged as duplicates of a message it already had (the same callback delivered twice).",
            ),
            &["sink"],
        )?;
        let inflight = IntGauge::new(
            "timbridge_inflight_requests",
            "Callback requests being processed now.",
        )?;
        let open_connections = IntGauge::new(
            "timbridge_open_connections",
            "Open client connections on the callback listener.",
        )?;
        let connections_evicted = IntCounter::new(
            "timbridge_connections_evicted_total",
            "Idle callback connections closed at --max-connections to admit a new one.",
        )?;
        let replays = IntCounter::new(
            "timbridge_replays_total",
            "Signed callbacks answered 200 without being delivered again: the same app, command, Sign, RequestTime and body were delivered already within the clock-skew window.",
        )?;
        let replays_forgotten = IntCounter::new(
            "timbridge_replay_cache_forgotten_total",
            "Delivered signed callbacks forgotten before their RequestTime left the skew window, to stay within --replay-cache-entries: a replay of one of them would be delivered again.",
        )?;
        // The handler's delivery: the sink in direct mode (label nats, kafka or stdout), the
        // spool in spooled mode (label spool).
        let delivery_ready = IntGaugeVec::new(
            Opts::new(
                "timbridge_delivery_ready",
                "1 when the delivery can take callbacks (direct mode: the sink is connected and can publish; spooled mode: the spool is recovered and has room), 0 otherwise.",
            ),
            &["delivery"],
        )?;
        let inflight_bytes = IntGauge::new(
            "timbridge_inflight_body_bytes",
            "Request-body bytes reserved by callbacks in flight (bounded by --max-inflight-bytes).",
        )?;
        let delivery_ack_latency = GaugeVec::new(
            Opts::new(
                "timbridge_delivery_ack_latency_seconds",
                "How long the oldest callback still awaiting its delivery's acknowledgement has waited (direct mode: the broker's ack; spooled mode: the spool's fsync), as used for shedding.",
            ),
            &["delivery"],
        )?;
        let delivery_backpressure = IntGaugeVec::new(
            Opts::new(
                "timbridge_delivery_backpressure",
                "1 while new callbacks are refused because the delivery (the broker, or the spool's fsync) is not acknowledging in time.",
            ),
            &["delivery"],
        )?;
        let draining = IntGauge::new(
            "timbridge_draining",
            "1 once shutdown began (readiness false, draining in-flight requests).",
        )?;

        registry.register(Box::new(callbacks.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(app_callbacks.clone()))?;
        registry.register(Box::new(signature_failures.clone()))?;
        registry.register(Box::new(app_signed.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(request_time_skew.clone()))?;
        registry.register(Box::new(publish_duration.clone()))?;
        registry.register(Box::new(broker_duplicates.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        registry.register(Box::new(open_connections.clone()))?;
        registry.register(Box::new(connections_evicted.clone()))?;
        registry.register(Box::new(replays.clone()))?;
        registry.register(Box::new(replays_forgotten.clone()))?;
        registry.register(Box::new(delivery_ready.clone()))?;
        registry.register(Box::new(inflight_bytes.clone()))?;
        registry.register(Box::new(delivery_ack_latency.clone()))?;
        registry.register(Box::new(delivery_backpressure.clone()))?;
        registry.register(Box::new(draining.clone()))?;
        // Series that alerts and dashboards rate() over exist from the first scrape.
        signature_failures.with_label_values(&["other"]);
        for outcome in Outcome::ALL {
            app_callbacks.with_label_values(&["other", outcome.label()]);
        }
        for rejection in Rejection::examples() {
            rejections.with_label_values(&[rejection.reason()]);
        }
        for outcome in Outcome::ALL {
            callbacks.with_label_values(&["Group.CallbackAfterSendMsg", outcome.label()]);
        }

        Ok(Metrics {
            registry: registry.clone(),
            callbacks,
            rejections,
            app_callbacks,
            signature_failures,
            app_signed,
            request_duration,
            request_time_skew,
            publish_duration,
            broker_duplicates,
            inflight,
            open_connections,
            connections_evicted,
            replays,
            replays_forgotten,
            delivery_ready,
            inflight_bytes,
            delivery_ack_latency,
            delivery_backpressure,
            draining,
            before: BeforeMetrics::new(registry)?,
        })
    }

    /// A callback was delivered and answered 200. `command` must come from
    /// `callback::command_label`; `publish` is the delivery's share of `took`.
    pub fn delivered(
        &self,
        command: &'static str,
        sink: &'static str,
        took: Duration,
        publish: Duration,
        duplicate: bool,
    ) {
        self.answered(command, Outcome::Ok, took);
        self.publish_duration
            .with_label_values(&[sink])
            .observe(publish.as_secs_f64());
        if duplicate {
            self.broker_duplicates.with_label_values(&[sink]).inc();
        }
    }

    /// Creates the per-app series up front for the configured apps (`other` always exists):
    /// the label's values are bounded by the configuration.
    pub fn for_apps(&self, labels: &[String]) {
        for label in labels {
            self.signature_failures.with_label_values(&[label]);
            for outcome in Outcome::ALL {
                self.app_callbacks
                    .with_label_values(&[label, outcome.label()]);
            }
        }
    }

    /// Whether the app `label`'s callbacks are signed (set once, from the configuration).
    pub fn app_signed(&self, label: &str, signed: bool) {
        self.app_signed
            .with_label_values(&[label])
            .set(i64::from(signed));
    }

    /// A request claiming the app `label` was answered.
    pub fn app_callback(&self, label: &str, outcome: Outcome) {
        self.app_callbacks
            .with_label_values(&[label, outcome.label()])
            .inc();
    }

    /// A callback claiming the app `label` was refused for its signature.
    pub fn signature_failure(&self, label: &str) {
        self.signature_failures.with_label_values(&[label]).inc();
    }

    /// A signed callback's `RequestTime` was this far from our clock.
    pub fn request_time_skew(&self, skew_secs: u64) {
        self.request_time_skew.observe(skew_secs as f64);
    }

    /// A before-callback was answered OK without waiting on the broker (`allow`, `skip`,
    /// `forward`).
    pub fn before_answered(&self, command: &'static str, took: Duration) {
        self.answered(command, Outcome::Ok, took);
    }

    /// A replay was answered OK without being delivered again.
    pub fn replayed(&self, command: &'static str, took: Duration) {
        self.answered(command, Outcome::Ok, took);
        self.replays.inc();
    }

    /// A remembered request was forgotten early, at the replay cache's bound.
    pub fn replay_forgotten(&self) {
        self.replays_forgotten.inc();
    }

    /// A request was answered with a rejection.
    pub fn refused(&self, command: &'static str, rejection: &Rejection, took: Duration) {
        self.answered(command, rejection.outcome(), took);
        self.rejections
            .with_label_values(&[rejection.reason()])
            .inc();
    }

    fn answered(&self, command: &'static str, outcome: Outcome, took: Duration) {
        self.callbacks
            .with_label_values(&[command, outcome.label()])
            .inc();
        self.request_duration.observe(took.as_secs_f64());
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn inflight(&self) -> GaugeGuard {
        GaugeGuard::new(&self.inflight)
    }

    /// Counts a connection as open until the guard is dropped.
    pub fn connection(&self) -> GaugeGuard {
        GaugeGuard::new(&self.open_connections)
    }

    /// An idle connection was closed to admit a new one at the connection limit.
    pub fn connection_evicted(&self) {
        self.connections_evicted.inc();
    }

    /// The gauges sampled at scrape time; `delivery` names what the handler delivers to (a
    /// sink's name, or `spool`).
    pub fn set_state(&self, delivery: &'static str, state: State) {
        self.delivery_ready
            .with_label_values(&[delivery])
            .set(i64::from(state.ready));
        self.inflight_bytes
            .set(i64::try_from(state.inflight_bytes).unwrap_or(i64::MAX));
        self.delivery_ack_latency
            .with_label_values(&[delivery])
            .set(state.ack_latency.as_secs_f64());
        self.delivery_backpressure
            .with_label_values(&[delivery])
            .set(i64::from(state.backpressure));
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.set(i64::from(draining));
    }

    /// Callback requests being processed now.
    pub fn inflight_now(&self) -> i64 {
        self.inflight.get()
    }

    /// The Prometheus text exposition of every metric of the shared registry (every
    /// component's, not only these).
    pub fn encode(&self) -> Vec<u8> {
        crate::core::metrics::encode(&self.registry)
    }
}

/// The outcome label of `timbridge_callbacks_total` and `timbridge_app_callbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered 200: stored (direct mode: acknowledged by the broker; spooled mode: fsynced in
    /// the spool). See [`crate::core::OK_MEANS`].
    Ok,
    /// The request itself was wrong (4xx): sending it again will not help.
    Rejected,
    /// The bridge or its broker could not take it (5xx): the message was not stored.
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Rejected, Outcome::Failed];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
        }
    }
}

/// Decrements its gauge when dropped, so early returns and cancelled futures keep it right.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn new(gauge: &IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

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

    pub(super) fn replayed(&self, attempt: &Attempt, took: Duration, peer: SocketAddr) {
        self.metrics.replayed(attempt.command, took);
        tracing::debug!(
            %peer,
            command = attempt.command,
            group_id = attempt.group_id.as_deref(),
            msg_seq = attempt.msg_seq,
            "a signed callback delivered already came again: answered OK, not delivered again"
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
