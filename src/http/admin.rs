//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process serves) and
//! `/readyz` (the sink can publish and the bridge is not draining), apart from the callback port
//! so that probes and scrapes never queue behind callbacks. The auditor serves its own
//! [`Status`] through the same listener: one accept loop (backing off on accept errors) and one
//! head deadline for both.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::core::deliver::Deliver;
use crate::ingest::report::State;
use crate::ingest::Handler;

/// What the admin endpoints answer.
pub trait Status: Send + Sync + 'static {
    /// The Prometheus text exposition, brought up to date.
    fn exposition(&self) -> Vec<u8>;
    /// Why the process needs a restart (`/healthz` 503), if it does.
    fn unhealthy(&self) -> Option<&'static str>;
    /// Why the process should not get traffic now (`/readyz` 503), if so.
    fn unready(&self) -> Option<&'static str>;
}

/// A request head must arrive within this of the connection's accept (or of the previous
/// response): a scrape or a probe sends its head at once.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve<S: Status>(
    listener: TcpListener,
    status: Arc<S>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = super::accept(&listener, "admin") => match accepted {
                Some(accepted) => accepted,
                None => continue,
            },
        };
        let status = status.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let status = status.clone();
                async move { Ok::<_, Infallible>(answer(&*status, &request)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The bridge: its metrics with the admission state sampled at scrape time; healthy until the
/// sink failed fatally; ready while the sink can publish and the bridge is not draining.
impl<D: Deliver> Status for Handler<D> {
    fn exposition(&self) -> Vec<u8> {
        let admission = self.admission();
        self.metrics().set_state(
            self.delivery().name(),
            State {
                ready: self.delivery().is_ready(),
                inflight_bytes: admission.inflight_bytes(),
                ack_latency: admission.ack_latency(),
                backpressure: admission.delivery_slow(),
            },
        );
        self.metrics().encode()
    }

    fn unhealthy(&self) -> Option<&'static str> {
        (!self.delivery().is_healthy()).then_some("sink failed fatally; restart needed\n")
    }

    fn unready(&self) -> Option<&'static str> {
        self.unready_reason()
    }
}

fn answer<S: Status + ?Sized, B>(status: &S, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(status.exposition())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/healthz" => match status.unhealthy() {
            Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
            None => text(StatusCode::OK, "ok\n"),
        },
        "/readyz" => match status.unready() {
            Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
            None => text(StatusCode::OK, "ready"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
