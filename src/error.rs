//! Every way a callback can fail to be accepted, with the HTTP status, the Tencent `ErrorCode`
//! and the metric label that go with it.
//!
//! The `ErrorCode` values are documented in the README; changing one is a breaking change for
//! anyone who alerts on them.

use std::time::Duration;

use http::StatusCode;

/// Why a request was not answered with OK. Every variant maps to exactly one reason label, so
/// `timbridge_rejections_total{reason}` has a small fixed label set.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("no callback endpoint at this path")]
    NotFound,
    #[error("method not allowed: callbacks are POSTed")]
    MethodNotAllowed,
    #[error("bad query string: {0}")]
    BadQuery(String),
    #[error("unsupported contenttype {0:?}: only json is accepted")]
    BadContentType(String),
    #[error("SdkAppid {0} is not served by this bridge")]
    ForbiddenAppId(u64),
    #[error("Sign and RequestTime are required")]
    MissingSignature,
    #[error("Sign does not match")]
    BadSignature,
    #[error(
        "RequestTime is {skew_secs}s away from this server's clock (at most {max_secs}s allowed)"
    )]
    StaleRequestTime { skew_secs: u64, max_secs: u64 },
    #[error("body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("could not read the body: {0}")]
    BodyRead(String),
    #[error("body is not a JSON object: {0}")]
    BadJson(String),
    #[error("CallbackCommand {body:?} in the body differs from {url:?} in the URL")]
    CommandMismatch { url: String, body: String },
    #[error("invalid body: {0}")]
    InvalidBody(String),
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
    #[error("the broker cannot keep up: {0}")]
    SinkBackpressure(String),
}

/// The outcome label of `timbridge_callbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Published and acknowledged by the broker: answered 200.
    Ok,
    /// The request itself was wrong (4xx): sending it again will not help.
    Rejected,
    /// The bridge or its broker could not take it (5xx): the message was not stored.
    Failed,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
        }
    }
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::BadQuery(_)
            | Rejection::BadContentType(_)
            | Rejection::BodyRead(_)
            | Rejection::BadJson(_)
            | Rejection::CommandMismatch { .. }
            | Rejection::InvalidBody(_) => StatusCode::BAD_REQUEST,
            Rejection::ForbiddenAppId(_) => StatusCode::FORBIDDEN,
            Rejection::MissingSignature
            | Rejection::BadSignature
            | Rejection::StaleRequestTime { .. } => StatusCode::UNAUTHORIZED,
            Rejection::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            // A permanent refusal by the broker (too large for it, not authorised, no such
            // topic) is the bridge's configuration problem, not the sender's.
            Rejection::SinkRejected(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Rejection::SinkUnavailable(_)
            | Rejection::PublishTimeout(_)
            | Rejection::Overloaded(_)
            | Rejection::SinkBackpressure(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `ErrorCode` of the Tencent-format FAIL body (never 0).
    pub fn error_code(&self) -> u32 {
        match self {
            Rejection::BadQuery(_) => 4000,
            Rejection::BadContentType(_) => 4001,
            Rejection::BadJson(_) => 4002,
            Rejection::CommandMismatch { .. } => 4003,
            Rejection::InvalidBody(_) => 4004,
            Rejection::BodyRead(_) => 4005,
            Rejection::MissingSignature => 4010,
            Rejection::BadSignature => 4011,
            Rejection::StaleRequestTime { .. } => 4012,
            Rejection::ForbiddenAppId(_) => 4030,
            Rejection::NotFound => 4040,
            Rejection::MethodNotAllowed => 4050,
            Rejection::BodyTimeout(_) => 4080,
            Rejection::BodyTooLarge(_) => 4130,
            Rejection::SinkRejected(_) => 5000,
            Rejection::SinkUnavailable(_) => 5030,
            Rejection::PublishTimeout(_) => 5031,
            Rejection::Overloaded(_) => 5032,
            Rejection::SinkBackpressure(_) => 5034,
        }
    }

    /// The `reason` label of `timbridge_rejections_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::NotFound => "not_found",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::BadQuery(_) => "bad_query",
            Rejection::BadContentType(_) => "bad_content_type",
            Rejection::ForbiddenAppId(_) => "forbidden_sdkappid",
            Rejection::MissingSignature => "missing_signature",
            Rejection::BadSignature => "bad_signature",
            Rejection::StaleRequestTime { .. } => "stale_request_time",
            Rejection::BodyTooLarge(_) => "body_too_large",
            Rejection::BodyRead(_) => "body_read",
            Rejection::BadJson(_) => "bad_json",
            Rejection::CommandMismatch { .. } => "command_mismatch",
            Rejection::InvalidBody(_) => "invalid_body",
            Rejection::SinkRejected(_) => "sink_rejected",
            Rejection::SinkUnavailable(_) => "sink_unavailable",
            Rejection::PublishTimeout(_) => "publish_timeout",
            Rejection::BodyTimeout(_) => "body_timeout",
            Rejection::Overloaded(_) => "overloaded",
            Rejection::SinkBackpressure(_) => "sink_backpressure",
        }
    }

    pub fn outcome(&self) -> Outcome {
        if self.status().is_server_error() {
            Outcome::Failed
        } else {
            Outcome::Rejected
        }
    }

    /// Every reason label, so the metric series exist (at zero) from the first scrape. A unit
    /// test keeps it in step with `reason()`.
    pub const REASONS: &'static [&'static str] = &[
        "not_found",
        "method_not_allowed",
        "bad_query",
        "bad_content_type",
        "forbidden_sdkappid",
        "missing_signature",
        "bad_signature",
        "stale_request_time",
        "body_too_large",
        "body_read",
        "bad_json",
        "command_mismatch",
        "invalid_body",
        "sink_rejected",
        "sink_unavailable",
        "publish_timeout",
        "body_timeout",
        "overloaded",
        "sink_backpressure",
    ];
}

/// A configuration that cannot work; `main` prints it on one line and exits with 64.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(flag: &'static str, message: impl Into<String>) -> Self {
        ConfigError {
            flag,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_a_listed_reason_and_a_distinct_code() {
        let all = [
            Rejection::NotFound,
            Rejection::MethodNotAllowed,
            Rejection::BadQuery(String::new()),
            Rejection::BadContentType(String::new()),
            Rejection::ForbiddenAppId(1),
            Rejection::MissingSignature,
            Rejection::BadSignature,
            Rejection::StaleRequestTime {
                skew_secs: 0,
                max_secs: 0,
            },
            Rejection::BodyTooLarge(0),
            Rejection::BodyRead(String::new()),
            Rejection::BadJson(String::new()),
            Rejection::CommandMismatch {
                url: String::new(),
                body: String::new(),
            },
            Rejection::InvalidBody(String::new()),
            Rejection::SinkRejected(String::new()),
            Rejection::SinkUnavailable(String::new()),
            Rejection::PublishTimeout(Duration::ZERO),
            Rejection::BodyTimeout(Duration::ZERO),
            Rejection::Overloaded(""),
            Rejection::SinkBackpressure(String::new()),
        ];
        assert_eq!(all.len(), Rejection::REASONS.len());
        let mut codes = std::collections::HashSet::new();
        for r in &all {
            assert!(Rejection::REASONS.contains(&r.reason()), "{}", r.reason());
            assert!(
                codes.insert(r.error_code()),
                "duplicate code {}",
                r.error_code()
            );
            assert_ne!(r.error_code(), 0);
            assert!(!r.status().is_success());
        }
    }
}
