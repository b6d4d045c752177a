//! Why a callback's URL or body is not one Tencent would send. The handler turns each into the
//! rejection that wraps it (its status, ErrorCode and reason label live there).

/// A callback that fails Tencent's protocol: its query, signature or body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
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
    #[error("body is not a JSON object: {0}")]
    BadJson(String),
    #[error("CallbackCommand {body:?} in the body differs from {url:?} in the URL")]
    CommandMismatch { url: String, body: String },
    #[error("invalid body: {0}")]
    InvalidBody(String),
}

#[cfg(test)]
impl CallbackError {
    /// The reason label of the rejection each becomes, for this layer's tests (the ingest
    /// layer's test holds the two to one another).
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            CallbackError::BadQuery(_) => "bad_query",
            CallbackError::BadContentType(_) => "bad_content_type",
            CallbackError::ForbiddenAppId(_) => "forbidden_sdkappid",
            CallbackError::MissingSignature => "missing_signature",
            CallbackError::BadSignature => "bad_signature",
            CallbackError::StaleRequestTime { .. } => "stale_request_time",
            CallbackError::BadJson(_) => "bad_json",
            CallbackError::CommandMismatch { .. } => "command_mismatch",
            CallbackError::InvalidBody(_) => "invalid_body",
        }
    }

    /// One of each.
    pub(crate) fn examples() -> Vec<CallbackError> {
        vec![
            CallbackError::BadQuery(String::new()),
            CallbackError::BadContentType(String::new()),
            CallbackError::ForbiddenAppId(0),
            CallbackError::MissingSignature,
            CallbackError::BadSignature,
            CallbackError::StaleRequestTime {
                skew_secs: 0,
                max_secs: 0,
            },
            CallbackError::BadJson(String::new()),
            CallbackError::CommandMismatch {
                url: String::new(),
                body: String::new(),
            },
            CallbackError::InvalidBody(String::new()),
        ]
    }
}
