//! `--before-callbacks forward`: an app has one callback URL, so an app that moderates in its
//! own service puts the bridge in front of it. The bridge relays the before-callback (the same
//! query without `Sign` and `RequestTime`, the same body) to `--before-callback-url` over a
//! pooled keep-alive client (http://, or https:// checked against the system's roots or
//! `--before-callback-ca`) and answers Tencent with the service's answer; when the service
//! does not answer within `--before-callback-timeout`, or fails, the bridge answers allow (what
//! Tencent itself does on a timeout). The callback is published in the background with the
//! verdict in a header.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::core::ConfigError;

/// The largest answer read from the moderation service (Tencent's answer carries at most a
/// changed message body).
const MAX_ANSWER_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// `http(s)://host:port/path` of the moderation service.
    pub url: Uri,
    pub timeout: Duration,
    /// For https://: the CA certificates the service's certificate must chain to, besides the
    /// system's roots (`--before-callback-ca`).
    pub ca: Vec<CertificateDer<'static>>,
}

impl ForwardConfig {
    pub fn parse(url: &str, timeout: Duration) -> Result<ForwardConfig, ConfigError> {
        let flag = "--before-callback-url";
        let url: Uri = url
            .parse()
            .map_err(|e| ConfigError::new(flag, format!("{url:?}: {e}")))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.authority().is_none() {
            return Err(ConfigError::new(
                flag,
                "must be an http(s)://host[:port]/path URL",
            ));
        }
        if url.query().is_some() {
            return Err(ConfigError::new(
                flag,
                "must have no query: Tencent's query is passed on",
            ));
        }
        if timeout.is_zero() || timeout >= Duration::from_secs(2) {
            return Err(ConfigError::new(
                "--before-callback-timeout",
                "must be more than 0 and less than Tencent's 2 s",
            ));
        }
        Ok(ForwardConfig {
            url,
            timeout,
            ca: Vec::new(),
        })
    }

    /// Trusts the CA certificates of a PEM file too (a private CA of the service's).
    pub fn with_ca(mut self, path: &std::path::Path) -> Result<ForwardConfig, ConfigError> {
        let flag = "--before-callback-ca";
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ConfigError::new(flag, format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(ConfigError::new(
                flag,
                format!("{}: no PEM certificate", path.display()),
            ));
        }
        self.ca = certs;
        Ok(self)
    }
}

/// What the moderation service decided; the value of the `tim-before-verdict` header and the
/// `verdict` label of `timbridge_before_verdicts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    /// Allowed with a changed `MsgBody`, which replaces the message.
    Rewrite,
    /// No answer within the timeout: allowed.
    Timeout,
    /// Unreachable, not 200, or not a Tencent-format answer: allowed.
    Error,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::Allow,
        Verdict::Deny,
        Verdict::Rewrite,
        Verdict::Timeout,
        Verdict::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Rewrite => "rewrite",
            Verdict::Timeout => "timeout",
            Verdict::Error => "error",
        }
    }
}

pub struct Relay {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    config: ForwardConfig,
}

impl Relay {
    pub fn new(config: ForwardConfig) -> Relay {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(&config.ca))
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Relay { client, config }
    }

    /// Relays one before-callback; the answer for Tencent (`None`: allow) and the verdict.
    pub async fn relay(&self, query: &str, body: Bytes) -> (Option<Bytes>, Verdict) {
        match tokio::time::timeout(self.config.timeout, self.ask(query, body)).await {
            Ok(Ok((answer, verdict))) => (Some(answer), verdict),
            Ok(Err(why)) => {
                tracing::debug!(error = %why, "the moderation service failed: allowing");
                (None, Verdict::Error)
            }
            Err(_) => (None, Verdict::Timeout),
        }
    }

    async fn ask(&self, query: &str, body: Bytes) -> Result<(Bytes, Verdict), String> {
        let path = self.config.url.path();
        let uri = Uri::builder()
            .scheme(self.config.url.scheme_str().unwrap_or("http"))
            .authority(
                self.config
                    .url
                    .authority()
                    .map(|a| a.as_str())
                    .unwrap_or_default(),
            )
            .path_and_query(format!("{path}?{}", without_signature(query)))
            .build()
            .map_err(|e| e.to_string())?;
        let request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let verdict = verdict_of(&answer)?;
        Ok((answer, verdict))
    }
}

/// The client side of https:// to the moderation service: the system's roots (unreadable ones
/// are skipped) and the configured CA certificates.
fn tls_config(ca: &[CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    roots.add_parsable_certificates(ca.iter().cloned());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Tencent's query without `Sign` and `RequestTime`: the moderation service gets no signed URL
/// it (or whoever reads its access log) could replay at the bridge within the clock skew. The
/// other parameters pass as they came, still percent-encoded.
fn without_signature(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let name = form_urlencoded::parse(pair.as_bytes())
                .next()
                .map(|(name, _)| name);
            !matches!(name.as_deref(), Some("Sign" | "RequestTime"))
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Reads a Tencent-format answer: `ErrorCode` 0 allows (with a `MsgBody`, rewrites).
fn verdict_of(answer: &[u8]) -> Result<Verdict, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "ErrorCode")]
        error_code: i64,
        #[serde(rename = "MsgBody", default)]
        msg_body: Option<serde::de::IgnoredAny>,
    }
    let answer: Answer =
        serde_json::from_slice(answer).map_err(|e| format!("not a Tencent answer: {e}"))?;
    Ok(match (answer.error_code, answer.msg_body) {
        (0, Some(_)) => Verdict::Rewrite,
        (0, None) => Verdict::Allow,
        _ => Verdict::Deny,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_read_from_tencent_format_answers() {
        let v = |s: &str| verdict_of(s.as_bytes());
        assert_eq!(
            v(r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#),
            Ok(Verdict::Allow)
        );
        assert_eq!(
            v(
                r#"{"ActionStatus":"OK","ErrorCode":0,"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"***"}}]}"#
            ),
            Ok(Verdict::Rewrite)
        );
        assert_eq!(
            v(r#"{"ActionStatus":"FAIL","ErrorInfo":"no","ErrorCode":1}"#),
            Ok(Verdict::Deny)
        );
        assert!(v("<html>").is_err());
    }

    #[test]
    fn the_signature_is_not_passed_on() {
        assert_eq!(
            without_signature(
                "SdkAppid=1&CallbackCommand=Group.CallbackBeforeSendMsg&RequestTime=1669872112&Sign=abc&ClientIP=1.2.3.4&OptPlatform=Mac%20OS"
            ),
            "SdkAppid=1&CallbackCommand=Group.CallbackBeforeSendMsg&ClientIP=1.2.3.4&OptPlatform=Mac%20OS"
        );
        // However the name is spelt on the wire.
        assert_eq!(
            without_signature("SdkAppid=1&Si%67n=abc&Request%54ime=1"),
            "SdkAppid=1"
        );
    }

    #[test]
    fn the_url_must_be_plain_http_without_a_query() {
        let t = Duration::from_millis(1500);
        assert!(ForwardConfig::parse("http://moderation:8080/tim", t).is_ok());
        assert!(ForwardConfig::parse("https://moderation/tim", t).is_ok());
        assert!(ForwardConfig::parse("ftp://moderation/tim", t).is_err());
        assert!(ForwardConfig::parse("http://moderation/tim?x=1", t).is_err());
        assert!(ForwardConfig::parse("moderation/tim", t).is_err());
        assert!(ForwardConfig::parse("http://moderation/tim", Duration::from_secs(2)).is_err());
    }
}
