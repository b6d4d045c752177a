//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process serves) and
//! `/readyz` (the sink can publish and the bridge is not draining), apart from the callback port
//! so that probes and scrapes never queue behind callbacks.

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

use crate::deliver::Deliver;
use crate::ingest::Handler;

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve<D: Deliver>(
    listener: TcpListener,
    handler: Arc<Handler<D>>,
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
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(answer(&handler, &request)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer<D: Deliver, B>(handler: &Handler<D>, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match request.uri().path() {
        "/metrics" => {
            let admission = handler.admission();
            handler.metrics().set_state(
                handler.delivery().is_ready(),
                admission.inflight_bytes(),
                admission.ack_latency(),
                admission.sink_slow(),
            );
            let mut response = Response::new(Full::new(Bytes::from(handler.metrics().encode())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/healthz" => {
            if handler.delivery().is_healthy() {
                text(StatusCode::OK, "ok\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "sink failed fatally; restart needed\n",
                )
            }
        }
        "/readyz" => match handler.unready_reason() {
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
