//! Where Tencent's REST API is reached: the flags `timbridge audit` and, for
//! `--allow-tencent-egress`, `timbridge serve` share.

use clap::Args;

use crate::core::ConfigError;

#[derive(Debug, Clone, Args)]
pub struct RestEndpointArgs {
    /// Base URL instead of https://{region domain} (an egress proxy).
    #[arg(
        long,
        env = "TIMBRIDGE_REST_ENDPOINT",
        help_heading = "Tencent REST API"
    )]
    pub rest_endpoint: Option<String>,

    /// Let --rest-endpoint be plain http:// (a local simulator in tests). Every call carries the
    /// admin's UserSig in its query: anywhere else it must travel over https://.
    #[arg(
        long,
        env = "TIMBRIDGE_REST_ALLOW_HTTP",
        help_heading = "Tencent REST API"
    )]
    pub rest_allow_http: bool,
}

impl RestEndpointArgs {
    /// The endpoint, checked: https://, or http:// when allowed for a local test endpoint.
    pub fn into_endpoint(self) -> Result<Option<String>, ConfigError> {
        if let Some(endpoint) = &self.rest_endpoint {
            check_rest_endpoint(endpoint, self.rest_allow_http)?;
        }
        Ok(self.rest_endpoint)
    }
}

/// The REST endpoint is https:// (the UserSig is in every call's query), or http:// when
/// allowed for a local test endpoint.
fn check_rest_endpoint(endpoint: &str, allow_http: bool) -> Result<(), ConfigError> {
    let flag = "--rest-endpoint";
    match endpoint.split_once("://") {
        Some(("https", rest)) if !rest.is_empty() => Ok(()),
        Some(("http", rest)) if !rest.is_empty() && allow_http => Ok(()),
        Some(("http", _)) => Err(ConfigError::new(
            flag,
            "must be https:// (every call carries the admin's UserSig); --rest-allow-http allows \
             http:// for a local test endpoint",
        )),
        _ => Err(ConfigError::new(
            flag,
            format!("{endpoint:?} is not an https://host[:port] URL"),
        )),
    }
}
