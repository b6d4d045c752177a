//! One app's REST client: the calling convention (`sdkappid`, `identifier`, `usersig`,
//! `random`, `contenttype=json` on every URL), a UserSig made once and remade before it
//! expires (or when Tencent says 70001), a client-side rate limit shared by every call of the
//! app, and retries with backoff for what Tencent says is worth retrying. Errors come back as
//! [`RestError`], split by what the caller should do about them.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::usersig;
use super::RestCredentials;
use crate::core::secret::Secret;

/// The flags of the REST client, the same for every app.
#[derive(Debug, Clone)]
pub struct RestConfig {
    /// Calls per second per app, all commands together (Tencent allows 200, shared with the
    /// app's own backend).
    pub max_rate: u32,
    /// Validity written into each UserSig; a new one is made when a tenth of it is left.
    pub usersig_ttl: Duration,
    /// One HTTP exchange, connect included.
    pub timeout: Duration,
    /// Attempts per call for retryable errors (rate limit, 10002, network), backoff between.
    pub attempts: usize,
    /// The longest pause between two attempts.
    pub retry_max: Duration,
    /// Replaces `https://{region domain}` (an egress proxy; the tests' simulator).
    pub endpoint: Option<String>,
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig {
            max_rate: 20,
            usersig_ttl: Duration::from_secs(86400),
            timeout: Duration::from_secs(5),
            attempts: 6,
            retry_max: Duration::from_secs(10),
            endpoint: None,
        }
    }
}

/// Unix seconds, injectable so that UserSig expiry can be tested without waiting.
pub trait Clock: Send + Sync {
    fn now(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// What went wrong with a call, by what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    /// The admin account, its key or the caller's address is not accepted (70009, 60021,
    /// 10007, or 70001 again right after a new UserSig): nothing works until the
    /// configuration is fixed.
    #[error("credentials refused by Tencent: {code} {info}")]
    Credentials { code: i64, info: String },
    /// Too many calls (60007, 60018, 60019), still so after every attempt.
    #[error("rate limited by Tencent after every attempt: {code}")]
    RateLimited { code: i64 },
    /// The network, an HTTP error or Tencent's 10002, still so after every attempt.
    #[error("Tencent unreachable or failing: {0}")]
    Unavailable(String),
    /// 10010: the group was dismissed.
    #[error("the group no longer exists")]
    GroupGone,
    /// Any other refusal (10015 invalid group id among them).
    #[error("refused by Tencent: {code} {info}")]
    Refused { code: i64, info: String },
}

impl RestError {
    fn from_code(code: i64, info: String) -> RestError {
        match code {
            60007 | 60018 | 60019 => RestError::RateLimited { code },
            10002 => RestError::Unavailable(format!("{code} {info}")),
            70001 | 70009 | 60021 | 10007 => RestError::Credentials { code, info },
            10010 => RestError::GroupGone,
            _ => RestError::Refused { code, info },
        }
    }

    /// A label for `timbridge_rest_calls_total{result}`.
    pub fn label(&self) -> &'static str {
        match self {
            RestError::Credentials { .. } => "credentials",
            RestError::RateLimited { .. } => "rate_limited",
            RestError::Unavailable(_) => "unavailable",
            RestError::GroupGone => "group_gone",
            RestError::Refused { .. } => "refused",
        }
    }
}

/// One attempt's outcome, before retries decide.
#[derive(Debug)]
enum Attempt {
    Failed(RestError),
    /// 70001: the UserSig expired (a clock jump, or Tencent's clock ahead of ours).
    SigExpired(String),
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "ErrorCode", default)]
    code: i64,
    #[serde(rename = "ErrorInfo", default)]
    info: String,
}

/// Per-call observer (the auditor's metrics): command and result label.
pub type Observer = Arc<dyn Fn(&'static str, &'static str) + Send + Sync>;

pub struct RestClient {
    http: reqwest::Client,
    base: String,
    sdkappid: u64,
    identifier: String,
    key: Secret,
    ttl: u64,
    /// The UserSig in use and the second from which a new one is made.
    sig: Mutex<Option<(String, u64)>>,
    clock: Arc<dyn Clock>,
    limiter: DefaultDirectRateLimiter,
    backoff: ExponentialBuilder,
    credentials_ok: AtomicBool,
    observe: Option<Observer>,
}

impl RestClient {
    pub fn new(
        sdkappid: u64,
        credentials: &RestCredentials,
        config: &RestConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<RestClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()?;
        let base = config
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://{}", credentials.region.domain()));
        let rate = NonZeroU32::new(config.max_rate.max(1)).expect("at least 1");
        // A burst of one: calls are spaced evenly, never `max_rate` at once.
        let quota = Quota::per_second(rate).allow_burst(NonZeroU32::MIN);
        Ok(RestClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            sdkappid,
            identifier: credentials.identifier.clone(),
            key: credentials.secret_key.clone(),
            ttl: config.usersig_ttl.as_secs().max(60),
            sig: Mutex::new(None),
            clock,
            limiter: RateLimiter::direct(quota),
            backoff: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(config.retry_max)
                .with_max_times(config.attempts.saturating_sub(1))
                .with_jitter(),
            credentials_ok: AtomicBool::new(true),
            observe: None,
        })
    }

    /// Calls `observe(command, result)` after every attempt.
    pub fn with_observer(mut self, observe: Observer) -> RestClient {
        self.observe = Some(observe);
        self
    }

    pub fn sdkappid(&self) -> u64 {
        self.sdkappid
    }

    /// False once Tencent refused the credentials, until a call succeeds again.
    pub fn credentials_ok(&self) -> bool {
        self.credentials_ok.load(Ordering::Relaxed)
    }

    /// The UserSig for the next call: the current one, or a new one when it is within a tenth
    /// of its validity of expiring (or `renew`).
    pub fn usersig(&self, renew: bool) -> String {
        let now = self.clock.now();
        let mut sig = self
            .sig
            .lock()
            .expect("never poisoned: no panics while held");
        match &*sig {
            Some((current, refresh_at)) if !renew && now < *refresh_at => current.clone(),
            _ => {
                let made =
                    usersig::generate(&self.key, &self.identifier, self.sdkappid, now, self.ttl);
                *sig = Some((made.clone(), now + self.ttl - self.ttl / 10));
                made
            }
        }
    }

    /// `POST {base}/v4/{command}` with `body`, answered with `Answer`; retries rate limits,
    /// 10002 and network errors with backoff; remakes the UserSig once on 70001.
    pub async fn call<Req, Answer>(
        &self,
        command: &'static str,
        body: &Req,
    ) -> Result<Answer, RestError>
    where
        Req: Serialize + Sync,
        Answer: DeserializeOwned,
    {
        self.call_with(command, "", body).await
    }

    /// As [`RestClient::call`], with `extra` (`name=value&...`, already encoded) added to the
    /// URL's parameters.
    pub async fn call_with<Req, Answer>(
        &self,
        command: &'static str,
        extra: &str,
        body: &Req,
    ) -> Result<Answer, RestError>
    where
        Req: Serialize + Sync,
        Answer: DeserializeOwned,
    {
        let body = serde_json::to_vec(body).expect("request bodies are plain data");
        let once = || async {
            match self.attempt(command, extra, &body, false).await {
                Err(Attempt::SigExpired(info)) => {
                    match self.attempt(command, extra, &body, true).await {
                        Err(Attempt::SigExpired(_)) => {
                            Err(RestError::Credentials { code: 70001, info })
                        }
                        Err(Attempt::Failed(err)) => Err(err),
                        Ok(answer) => Ok(answer),
                    }
                }
                Err(Attempt::Failed(err)) => Err(err),
                Ok(answer) => Ok(answer),
            }
        };
        let result = once
            .retry(self.backoff)
            .sleep(tokio::time::sleep)
            .when(|err: &RestError| {
                matches!(
                    err,
                    RestError::RateLimited { .. } | RestError::Unavailable(_)
                )
            })
            .notify(
                |err, pause| tracing::debug!(command, error = %err, ?pause, "REST call: retrying"),
            )
            .await;
        match &result {
            Ok(_) => {
                if !self.credentials_ok.swap(true, Ordering::Relaxed) {
                    tracing::info!(sdkappid = self.sdkappid, "REST credentials accepted again");
                }
            }
            Err(err @ RestError::Credentials { .. }) => {
                // Logged once per episode, not once per call.
                if self.credentials_ok.swap(false, Ordering::Relaxed) {
                    tracing::error!(sdkappid = self.sdkappid, identifier = %self.identifier, error = %err,
                        "REST credentials refused: the auditor cannot look anything up for this app until they are fixed");
                }
            }
            Err(_) => {}
        }
        result
    }

    async fn attempt<Answer: DeserializeOwned>(
        &self,
        command: &'static str,
        extra: &str,
        body: &[u8],
        renew: bool,
    ) -> Result<Answer, Attempt> {
        self.limiter.until_ready().await;
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!("&{extra}")
        };
        let url = format!(
            "{}/v4/{command}?sdkappid={}&identifier={}&usersig={}&random={}&contenttype=json{extra}",
            self.base,
            self.sdkappid,
            form_urlencoded::byte_serialize(self.identifier.as_bytes()).collect::<String>(),
            self.usersig(renew),
            fastrand::u32(..),
        );
        let outcome = self.exchange(&url, body).await;
        let label = match &outcome {
            Ok(_) => "ok",
            Err(Attempt::SigExpired(_)) => "usersig_expired",
            Err(Attempt::Failed(err)) => err.label(),
        };
        if let Some(observe) = &self.observe {
            observe(command, label);
        }
        outcome
    }

    async fn exchange<Answer: DeserializeOwned>(
        &self,
        url: &str,
        body: &[u8],
    ) -> Result<Answer, Attempt> {
        let unavailable = |what: String| Attempt::Failed(RestError::Unavailable(what));
        let response = self
            .http
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| unavailable(e.without_url().to_string()))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| unavailable(e.without_url().to_string()))?;
        if !status.is_success() {
            return Err(unavailable(format!("HTTP {status}")));
        }
        let envelope: Envelope = serde_json::from_slice(&bytes)
            .map_err(|e| unavailable(format!("not a Tencent answer: {e}")))?;
        match envelope.code {
            0 => serde_json::from_slice(&bytes).map_err(|e| {
                Attempt::Failed(RestError::Refused {
                    code: 0,
                    info: format!("unexpected answer: {e}"),
                })
            }),
            70001 => Err(Attempt::SigExpired(envelope.info)),
            code => Err(Attempt::Failed(RestError::from_code(code, envelope.info))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::tencent::rest::Region;

    struct Fixed(AtomicU64);

    impl Clock for Fixed {
        fn now(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn a_usersig_is_remade_when_a_tenth_of_its_validity_is_left_or_on_70001() {
        let clock = Arc::new(Fixed(AtomicU64::new(1_000_000)));
        let key = Secret::new("the key");
        let credentials = RestCredentials {
            region: Region::Singapore,
            identifier: "admin".into(),
            secret_key: key.clone(),
        };
        let config = RestConfig {
            usersig_ttl: Duration::from_secs(1000),
            ..RestConfig::default()
        };
        let client = RestClient::new(1400000000, &credentials, &config, clock.clone()).unwrap();
        let first = client.usersig(false);
        let claims = usersig::verify(&key, &first, 1_000_001).unwrap();
        assert_eq!(
            (
                claims.identifier.as_str(),
                claims.sdkappid,
                claims.time,
                claims.expire
            ),
            ("admin", 1400000000, 1_000_000, 1000)
        );
        clock.0.store(1_000_899, Ordering::Relaxed);
        assert_eq!(client.usersig(false), first, "still 101 s of 1000 left");
        clock.0.store(1_000_900, Ordering::Relaxed);
        let second = client.usersig(false);
        assert_ne!(second, first);
        assert_eq!(
            usersig::verify(&key, &second, 1_000_901).unwrap().time,
            1_000_900
        );
        // The first one is no longer valid by then; the new one is.
        assert_eq!(
            usersig::verify(&key, &first, 1_001_000),
            Err(usersig::VerifyError::Expired(1_001_000))
        );
        // Tencent said 70001 (its clock ahead of ours): a new one at once.
        clock.0.store(1_000_950, Ordering::Relaxed);
        assert_ne!(client.usersig(true), second);
    }

    #[test]
    fn error_codes_are_sorted_by_what_to_do() {
        assert_eq!(
            RestError::from_code(60007, String::new()).label(),
            "rate_limited"
        );
        assert_eq!(
            RestError::from_code(60018, String::new()).label(),
            "rate_limited"
        );
        assert_eq!(
            RestError::from_code(10002, String::new()).label(),
            "unavailable"
        );
        assert_eq!(
            RestError::from_code(70009, String::new()).label(),
            "credentials"
        );
        assert_eq!(
            RestError::from_code(60021, String::new()).label(),
            "credentials"
        );
        assert_eq!(
            RestError::from_code(10010, String::new()),
            RestError::GroupGone
        );
        assert_eq!(
            RestError::from_code(10015, String::new()).label(),
            "refused"
        );
    }
}
