//! Every way a callback can fail to be accepted, with the HTTP status, the Tencent `ErrorCode`
//! and the metric label that go with it, each written once in [`Rejection::meta`].
//!
//! The `ErrorCode` values are documented in the README (a test holds the table to this file);
//! changing one is a breaking change for anyone who alerts on them.

use std::time::Duration;

use http::StatusCode;

use super::Outcome;
use crate::core::deliver::DeliveryError;
use crate::tencent::callback::CallbackError;

/// Why a request was not answered with OK. Every variant maps to exactly one reason label, so
/// `timbridge_rejections_total{reason}` has a small fixed label set.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("no callback endpoint at this path")]
    NotFound,
    #[error("source {0} is not allowed to call (--allow-source)")]
    SourceNotAllowed(std::net::IpAddr),
    #[error("method not allowed: callbacks are POSTed")]
    MethodNotAllowed,
    /// Not what Tencent sends: the query, the signature or the body (the protocol's own error,
    /// with its own message).
    #[error(transparent)]
    Protocol(#[from] CallbackError),
    #[error("body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("malformed HTTP request: {0}")]
    BadHttp(&'static str),
    #[error("Content-Encoding {0:?} is not supported: callbacks are sent uncompressed")]
    UnsupportedEncoding(String),
    #[error("could not read the body: {0}")]
    BodyRead(String),
    #[error("the broker refused the message: {0}")]
    SinkRejected(String),
    #[error("the broker is unavailable: {0}")]
    SinkUnavailable(String),
    #[error("the broker did not acknowledge within {0:?}")]
    PublishTimeout(Duration),
    #[error("the body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    #[error("deliveries are not acknowledged in time: {0}")]
    Backpressure(String),
    #[error("the spool is full: {0}")]
    SpoolFull(String),
}

/// What a rejection answers with: one row per variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub status: StatusCode,
    /// The `ErrorCode` of the Tencent-format FAIL body (never 0).
    pub code: u32,
    /// The `reason` label of `timbridge_rejections_total`.
    pub reason: &'static str,
}

const fn meta(status: StatusCode, code: u32, reason: &'static str) -> Meta {
    Meta {
        status,
        code,
        reason,
    }
}

impl Rejection {
    /// The status, ErrorCode and reason label of this rejection.
    pub fn meta(&self) -> Meta {
        use CallbackError as C;
        use StatusCode as S;
        match self {
            Rejection::Protocol(C::BadQuery(_)) => meta(S::BAD_REQUEST, 4000, "bad_query"),
            Rejection::Protocol(C::BadContentType(_)) => {
                meta(S::BAD_REQUEST, 4001, "bad_content_type")
            }
            Rejection::Protocol(C::BadJson(_)) => meta(S::BAD_REQUEST, 4002, "bad_json"),
            Rejection::Protocol(C::CommandMismatch { .. }) => {
                meta(S::BAD_REQUEST, 4003, "command_mismatch")
            }
            Rejection::Protocol(C::InvalidBody(_)) => meta(S::BAD_REQUEST, 4004, "invalid_body"),
            Rejection::BodyRead(_) => meta(S::BAD_REQUEST, 4005, "body_read"),
            Rejection::BadHttp(_) => meta(S::BAD_REQUEST, 4006, "bad_http"),
            Rejection::Protocol(C::MissingSignature) => {
                meta(S::UNAUTHORIZED, 4010, "missing_signature")
            }
            Rejection::Protocol(C::BadSignature) => meta(S::UNAUTHORIZED, 4011, "bad_signature"),
            Rejection::Protocol(C::StaleRequestTime { .. }) => {
                meta(S::UNAUTHORIZED, 4012, "stale_request_time")
            }
            Rejection::Protocol(C::ForbiddenAppId(_)) => {
                meta(S::FORBIDDEN, 4030, "forbidden_sdkappid")
            }
            Rejection::SourceNotAllowed(_) => meta(S::FORBIDDEN, 4031, "source_not_allowed"),
            Rejection::NotFound => meta(S::NOT_FOUND, 4040, "not_found"),
            Rejection::MethodNotAllowed => meta(S::METHOD_NOT_ALLOWED, 4050, "method_not_allowed"),
            Rejection::BodyTimeout(_) => meta(S::REQUEST_TIMEOUT, 4080, "body_timeout"),
            Rejection::BodyTooLarge(_) => meta(S::PAYLOAD_TOO_LARGE, 4130, "body_too_large"),
            Rejection::UnsupportedEncoding(_) => {
                meta(S::UNSUPPORTED_MEDIA_TYPE, 4150, "unsupported_encoding")
            }
            Rejection::HeadTooLarge(_) => {
                meta(S::REQUEST_HEADER_FIELDS_TOO_LARGE, 4310, "head_too_large")
            }
            // A permanent refusal by the broker (too large for it, not authorised, no such
            // topic) is the bridge's configuration problem, not the sender's.
            Rejection::SinkRejected(_) => meta(S::INTERNAL_SERVER_ERROR, 5000, "sink_rejected"),
            Rejection::SinkUnavailable(_) => meta(S::SERVICE_UNAVAILABLE, 5030, "sink_unavailable"),
            Rejection::PublishTimeout(_) => meta(S::SERVICE_UNAVAILABLE, 5031, "publish_timeout"),
            Rejection::Overloaded(_) => meta(S::SERVICE_UNAVAILABLE, 5032, "overloaded"),
            Rejection::Backpressure(_) => meta(S::SERVICE_UNAVAILABLE, 5034, "backpressure"),
            // Spooled mode: --spool-max-bytes reached or the disk is full. Never the oldest
            // data dropped to make room.
            Rejection::SpoolFull(_) => meta(S::SERVICE_UNAVAILABLE, 5035, "spool_full"),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.meta().status
    }

    pub fn error_code(&self) -> u32 {
        self.meta().code
    }

    pub fn reason(&self) -> &'static str {
        self.meta().reason
    }

    pub fn outcome(&self) -> Outcome {
        if self.status().is_server_error() {
            Outcome::Failed
        } else {
            Outcome::Rejected
        }
    }

    /// Shedding: refused at once because a bound was reached, before any work was done.
    pub fn is_shedding(&self) -> bool {
        matches!(self, Rejection::Overloaded(_) | Rejection::Backpressure(_))
    }

    /// The answer to a delivery that failed; `publish_timeout` names the bound a timeout hit.
    pub fn from_delivery(err: DeliveryError, publish_timeout: Duration) -> Rejection {
        match err {
            DeliveryError::Unavailable(why) => Rejection::SinkUnavailable(why),
            DeliveryError::Rejected(why) | DeliveryError::Misconfigured(why) => {
                Rejection::SinkRejected(why)
            }
            DeliveryError::Backpressure(why) => Rejection::Backpressure(why),
            DeliveryError::TimedOut => Rejection::PublishTimeout(publish_timeout),
            DeliveryError::Full(why) => Rejection::SpoolFull(why),
        }
    }

    /// One of each variant, in ErrorCode order: the metric series exist (at zero) from the
    /// first scrape, and tests hold the README's table to it. Add a new variant here too.
    pub fn examples() -> Vec<Rejection> {
        use CallbackError as C;
        vec![
            Rejection::Protocol(C::BadQuery(String::new())),
            Rejection::Protocol(C::BadContentType(String::new())),
            Rejection::Protocol(C::BadJson(String::new())),
            Rejection::Protocol(C::CommandMismatch {
                url: String::new(),
                body: String::new(),
            }),
            Rejection::Protocol(C::InvalidBody(String::new())),
            Rejection::BodyRead(String::new()),
            Rejection::BadHttp(""),
            Rejection::Protocol(C::MissingSignature),
            Rejection::Protocol(C::BadSignature),
            Rejection::Protocol(C::StaleRequestTime {
                skew_secs: 0,
                max_secs: 0,
            }),
            Rejection::Protocol(C::ForbiddenAppId(0)),
            Rejection::SourceNotAllowed(std::net::Ipv4Addr::UNSPECIFIED.into()),
            Rejection::NotFound,
            Rejection::MethodNotAllowed,
            Rejection::BodyTimeout(Duration::ZERO),
            Rejection::BodyTooLarge(0),
            Rejection::UnsupportedEncoding(String::new()),
            Rejection::HeadTooLarge(0),
            Rejection::SinkRejected(String::new()),
            Rejection::SinkUnavailable(String::new()),
            Rejection::PublishTimeout(Duration::ZERO),
            Rejection::Overloaded(""),
            Rejection::Backpressure(String::new()),
            Rejection::SpoolFull(String::new()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each protocol error keeps its reason label (tencent's tests use it) and its message.
    #[test]
    fn protocol_errors_keep_their_reason() {
        for err in CallbackError::examples() {
            let (reason, message) = (err.reason(), err.to_string());
            let rejection = Rejection::from(err);
            assert_eq!(rejection.reason(), reason);
            assert_eq!(rejection.to_string(), message);
        }
    }

    #[test]
    fn every_variant_has_a_distinct_reason_and_code() {
        let all = Rejection::examples();
        let reasons: std::collections::HashSet<_> = all.iter().map(|r| r.reason()).collect();
        let codes: std::collections::HashSet<_> = all.iter().map(|r| r.error_code()).collect();
        assert_eq!(reasons.len(), all.len());
        assert_eq!(codes.len(), all.len());
        for r in &all {
            assert_ne!(r.error_code(), 0);
            assert!(!r.status().is_success());
            // The first digits of the code are the status, so a FAIL body alone tells it.
            assert_eq!(r.error_code() / 10, u32::from(r.status().as_u16()), "{r:?}");
        }
    }

    /// The README's ErrorCode table is this file's table, row for row.
    #[test]
    fn the_readme_table_matches_the_code() {
        let mut rows = Vec::new();
        for line in crate::core::readme::section("## Answers").lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // | HTTP | ErrorCode | reason label | meaning |
            if cells.len() == 6 && cells[1].parse::<u16>().is_ok() && cells[3].starts_with('`') {
                rows.push((
                    cells[1].parse::<u16>().unwrap(),
                    cells[2].parse::<u32>().unwrap(),
                    cells[3].trim_matches('`').to_owned(),
                ));
            }
        }
        let code: Vec<(u16, u32, String)> = Rejection::examples()
            .iter()
            .map(|r| (r.status().as_u16(), r.error_code(), r.reason().to_owned()))
            .collect();
        assert_eq!(rows, code, "README rows (left) vs Rejection::meta (right)");
    }
}
