//! The request path: from an HTTP request to the broker's acknowledgement and Tencent's answer.
//!
//! Order of checks, cheapest and most telling first: path and method, admission (a request slot),
//! the query (app id, then signature), the broker's health (slow acks), the body (memory budget,
//! size and time while reading, then validation), then the publish, bounded by the publish
//! timeout. Nothing is published unless every check passed, and 200 is sent only after the broker
//! acknowledged.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;

use crate::admission::Admission;
use crate::callback::{command_label, reply, Callback, Policy, VerifiedQuery};
use crate::config::Config;
use crate::error::{Outcome, Rejection};
use crate::metrics::Metrics;
use crate::sink::{Sink, SinkError};

/// Seconds Tencent (or a load balancer) is told to wait after a 503.
const RETRY_AFTER_SECS: &str = "1";

pub struct App {
    path: String,
    policy: Policy,
    max_body_bytes: usize,
    body_read_timeout: Duration,
    publish_timeout: Duration,
    admission: Admission,
    sink: Sink,
    metrics: Metrics,
    draining: AtomicBool,
}

impl App {
    pub fn new(config: &Config, sink: Sink, metrics: Metrics) -> App {
        App {
            path: config.path.clone(),
            policy: config.policy.clone(),
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: config.body_read_timeout,
            publish_timeout: config.publish_timeout,
            admission: Admission::new(config.admission),
            sink,
            metrics,
            draining: AtomicBool::new(false),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Why the bridge should not get traffic now, if it should not.
    pub fn unready_reason(&self) -> Option<&'static str> {
        if self.is_draining() {
            Some("draining")
        } else if !self.sink.is_ready() {
            Some("sink not ready")
        } else if self.admission.is_saturated() {
            Some("saturated")
        } else {
            None
        }
    }

    /// Ready for traffic: the sink can publish, the bridge is not at a bound and not shutting
    /// down.
    pub fn is_ready(&self) -> bool {
        self.unready_reason().is_none()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Readiness goes false at once; requests are still served until the listener stops.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.metrics.set_draining(true);
    }

    /// Answers one request. Never fails: every error becomes a Tencent-format FAIL answer.
    pub async fn handle<B>(&self, request: Request<B>, peer: SocketAddr) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let _inflight = self.metrics.inflight();
        let mut command = "other";
        let mut seen = None;
        let result = self.process(request, &mut command, &mut seen).await;
        let took = started.elapsed();
        let group_id = seen.as_ref().and_then(|c| c.fields().group_id.as_deref());
        let msg_seq = seen.as_ref().and_then(|c| c.fields().msg_seq);
        match result {
            Ok(()) => {
                self.metrics.answered(command, Outcome::Ok, took);
                tracing::debug!(%peer, command, group_id, msg_seq, latency_us = took.as_micros() as u64, "published");
                respond(StatusCode::OK, reply::ok())
            }
            Err(rejection) => {
                self.metrics.answered(command, rejection.outcome(), took);
                self.metrics.rejected(&rejection);
                tracing::warn!(
                    %peer,
                    command,
                    group_id,
                    msg_seq,
                    status = rejection.status().as_u16(),
                    reason = rejection.reason(),
                    error = %rejection,
                    latency_us = took.as_micros() as u64,
                    "callback not accepted"
                );
                fail(&rejection)
            }
        }
    }

    async fn process<B>(
        &self,
        request: Request<B>,
        command: &mut &'static str,
        seen: &mut Option<Callback>,
    ) -> Result<(), Rejection>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if request.uri().path() != self.path {
            return Err(Rejection::NotFound);
        }
        if request.method() != Method::POST {
            return Err(Rejection::MethodNotAllowed);
        }
        let mut admitted = self.admission.admit()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let query = VerifiedQuery::verify(
            request.uri().query().unwrap_or(""),
            &self.policy,
            now.as_secs(),
        )?;
        *command = command_label(query.command());
        // Refused before the body is read: a callback admitted now would most likely time out.
        self.admission.check_sink()?;

        // A declared length over the limit is refused before reading anything; a body without
        // one (chunked) is cut off by `Limited` as soon as it passes the limit.
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body_bytes as u64) {
            return Err(Rejection::BodyTooLarge(self.max_body_bytes));
        }
        let reserve = declared.map_or(self.max_body_bytes, |len| len as usize);
        self.admission.reserve_body(&mut admitted, reserve)?;
        let read = Limited::new(request.into_body(), self.max_body_bytes).collect();
        let body = tokio::time::timeout(self.body_read_timeout, read)
            .await
            .map_err(|_| Rejection::BodyTimeout(self.body_read_timeout))?
            .map_err(|err| {
                if err.downcast_ref::<LengthLimitError>().is_some() {
                    Rejection::BodyTooLarge(self.max_body_bytes)
                } else {
                    Rejection::BodyRead(err.to_string())
                }
            })?
            .to_bytes();

        let callback = seen.insert(query.accept(body, now.as_millis() as u64)?);
        let publish_started = Instant::now();
        let published =
            tokio::time::timeout(self.publish_timeout, self.sink.publish(callback)).await;
        let took = publish_started.elapsed();
        let ack = match published {
            Ok(Ok(ack)) => ack,
            Ok(Err(SinkError::TimedOut)) | Err(_) => {
                // Slow acks are what admission control sheds on.
                self.admission.record_ack(took);
                return Err(Rejection::PublishTimeout(self.publish_timeout));
            }
            Ok(Err(err)) => return Err(err.into_rejection(self.publish_timeout)),
        };
        self.admission.record_ack(took);
        self.metrics
            .published(self.sink.name(), took, ack.duplicate);
        drop(admitted);
        Ok(())
    }
}

fn respond(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn fail(rejection: &Rejection) -> Response<Full<Bytes>> {
    let status = rejection.status();
    let mut response = respond(
        status,
        reply::fail(rejection.error_code(), &rejection.to_string()),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    response
}
