//! The request path's metrics, registered on the shared registry: one method per thing that
//! happens.
//!
//! Label values come from fixed sets (command names Tencent documents or `other`, rejection
//! reasons, sink names): never raw error text, user or group ids.

use std::time::Duration;

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::before::metrics::BeforeMetrics;
use crate::core::metrics::{GaugeGuard, LATENCY_BUCKETS};
use crate::ingest::{Outcome, Rejection};

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
    request_duration: Histogram,
    request_time_skew: Histogram,
    publish_duration: HistogramVec,
    broker_duplicates: IntCounterVec,
    inflight: IntGauge,
    open_connections: IntGauge,
    connections_evicted: IntCounter,
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
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(request_time_skew.clone()))?;
        registry.register(Box::new(publish_duration.clone()))?;
        registry.register(Box::new(broker_duplicates.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        registry.register(Box::new(open_connections.clone()))?;
        registry.register(Box::new(connections_evicted.clone()))?;
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
            request_duration,
            request_time_skew,
            publish_duration,
            broker_duplicates,
            inflight,
            open_connections,
            connections_evicted,
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
