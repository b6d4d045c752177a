//! The request path: from an HTTP request to the delivery's acknowledgement and Tencent's
//! answer.
//!
//! Order of checks, cheapest and most telling first: path and method, the query (app id, then
//! signature; the command is looked up once, there), then one branch: a before-callback takes
//! [`before`]'s path unless it is published like the others; every other callback reads
//! straight through: admission (a request slot, the broker's health), the body (memory budget,
//! size and time while reading, then validation), the wire record built and delivered, bounded
//! by one publish deadline. Nothing is delivered unless every check passed, and 200 is sent
//! only after the delivery acknowledged.

pub mod admission;
mod before;
pub mod rejection;
pub mod replay;
pub mod report;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;

use crate::before::forward::Verdict;
use crate::before::{BeforeConfig, BeforeOutcome};
use crate::core::deliver::{Ack, Deliver, DeliveryError};
use crate::core::Record;
use crate::tencent::callback::{
    reply, Callback, CallbackError, Policy, Query, Signers, VerifiedQuery,
};
use crate::wire::RecordBuilder;
use admission::{Admission, Admitted};
use before::BeforePath;
pub use rejection::Rejection;
use replay::{Remembered, Replays};
pub use report::Outcome;
use report::{Metrics, Report};

/// Seconds Tencent (or a load balancer) is told to wait after a 503.
const RETRY_AFTER_SECS: &str = "1";

/// The largest declared body an early refusal reads and discards, so that the keep-alive
/// connection goes on serving (the request pipelined behind it included); a larger one, or one
/// of unknown length, closes the connection instead.
const DISCARD_MAX_BYTES: u64 = 64 * 1024;

/// What the request path needs of the configuration, and nothing more.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The callback path, e.g. `/callback`.
    pub path: String,
    /// The apps served, their tokens and the clock skew allowed.
    pub policy: Policy,
    /// Where each callback's record goes (the apps' own destinations included).
    pub records: RecordBuilder,
    /// The configured apps, each counted under its own `sdkappid` label (others: `other`).
    pub app_ids: Vec<u64>,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    /// The bound on waiting for the delivery's acknowledgement.
    pub publish_timeout: Duration,
    pub admission: admission::Limits,
    pub before: BeforeConfig,
    /// Delivered signed requests remembered to answer a replay without delivering it again
    /// (`--replay-cache-entries`); 0: not looked for.
    pub replay_cache_entries: usize,
}

/// Answers callbacks: checks them, builds their record and waits for `D` to take it.
pub struct Handler<D> {
    path: String,
    policy: Policy,
    max_body_bytes: usize,
    body_read_timeout: Duration,
    publish_timeout: Duration,
    admission: Admission,
    records: RecordBuilder,
    delivery: Arc<D>,
    /// The delivery's metric label (asked once, not per callback).
    delivery_name: &'static str,
    /// The `sdkappid` label of each configured app (metrics of other apps say `other`).
    app_labels: Vec<(u64, String)>,
    /// Before-callbacks' own path; `None` when they are published like every other callback.
    before: Option<BeforePath<D>>,
    /// `None`: replays are not looked for.
    replays: Option<Replays>,
    report: Report,
    draining: AtomicBool,
}

/// What one request turned out to be, for its log line and metrics.
struct Attempt {
    /// The metric label of the URL's command, once the query was verified.
    command: &'static str,
    /// The SdkAppid the query claims, verified or not (for the per-app counter).
    sdkappid: Option<u64>,
    /// The request's body was not read to its end: the connection cannot carry another
    /// request, so the answer says `Connection: close`.
    body_unread: bool,
    /// (GroupId, MsgSeq) of a validated body, for the log line.
    group_id: Option<String>,
    msg_seq: Option<u64>,
    result: Result<Answered, Rejection>,
}

/// How an accepted callback was answered OK.
enum Answered {
    /// The delivery acknowledged it.
    Delivered(Delivered),
    /// The same signed request was delivered already: answered without delivering it again.
    Replayed,
    /// A before-callback answered without waiting on the broker.
    Before(BeforeOutcome),
    /// A before-callback answered with the moderation service's answer (`None`: allow).
    Forwarded(Option<Bytes>, Verdict, BeforeOutcome),
}

impl Attempt {
    /// An attempt that ended before a body was validated: no group or seq to log.
    fn ended(
        command: &'static str,
        sdkappid: Option<u64>,
        result: Result<Answered, Rejection>,
        body_unread: bool,
    ) -> Attempt {
        Attempt {
            command,
            sdkappid,
            body_unread,
            group_id: None,
            msg_seq: None,
            result,
        }
    }

    fn refused(
        command: &'static str,
        sdkappid: Option<u64>,
        rejection: Rejection,
        body_unread: bool,
    ) -> Attempt {
        Attempt::ended(command, sdkappid, Err(rejection), body_unread)
    }

    /// Refused while reading the body: a refusal of the body itself (invalid JSON...) came
    /// after reading it whole.
    fn unreadable(
        command: &'static str,
        sdkappid: Option<u64>,
        rejection: Rejection,
        has_body: bool,
    ) -> Attempt {
        let read_whole = matches!(
            rejection,
            Rejection::Protocol(
                CallbackError::BadJson(_)
                    | CallbackError::CommandMismatch { .. }
                    | CallbackError::InvalidBody(_)
            )
        );
        Attempt::refused(command, sdkappid, rejection, has_body && !read_whole)
    }
}

/// What the log line keeps of a validated callback, taken before its record is built (which
/// consumes it).
struct Seen {
    sdkappid: u64,
    group_id: Option<String>,
    msg_seq: Option<u64>,
}

impl Seen {
    fn of(callback: &Callback) -> Seen {
        let fields = callback.fields();
        Seen {
            sdkappid: callback.sdkappid(),
            group_id: fields.group_id.clone(),
            msg_seq: fields.msg_seq,
        }
    }

    /// The attempt, answered with `result`.
    fn answered(self, command: &'static str, result: Result<Answered, Rejection>) -> Attempt {
        Attempt {
            command,
            sdkappid: Some(self.sdkappid),
            body_unread: false,
            group_id: self.group_id,
            msg_seq: self.msg_seq,
            result,
        }
    }
}

struct Delivered {
    ack: Ack,
    took: Duration,
}

impl<D: Deliver> Handler<D> {
    pub fn new(settings: Settings, delivery: D, metrics: Metrics) -> Handler<D> {
        let delivery = Arc::new(delivery);
        let app_labels: Vec<(u64, String)> = settings
            .app_ids
            .iter()
            .map(|id| (*id, id.to_string()))
            .collect();
        metrics.for_apps(
            &app_labels
                .iter()
                .map(|(_, l)| l.clone())
                .collect::<Vec<_>>(),
        );
        match &settings.policy.signers {
            Signers::Any { token } => metrics.app_signed("other", token.is_some()),
            Signers::Listed(apps) => {
                for (id, token) in apps {
                    metrics.app_signed(&id.to_string(), token.is_some());
                }
            }
        }
        let before = BeforePath::new(
            &settings.before,
            settings.admission,
            delivery.clone(),
            settings.publish_timeout,
            metrics.before.clone(),
        );
        let replays = Replays::new(
            settings.replay_cache_entries,
            settings.policy.max_clock_skew.as_secs(),
        );
        Handler {
            path: settings.path,
            policy: settings.policy,
            max_body_bytes: settings.max_body_bytes,
            body_read_timeout: settings.body_read_timeout,
            publish_timeout: settings.publish_timeout,
            admission: Admission::new(settings.admission),
            records: settings.records,
            delivery_name: delivery.name(),
            delivery,
            app_labels,
            before,
            replays,
            report: Report::new(metrics),
            draining: AtomicBool::new(false),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        self.report.metrics()
    }

    pub fn delivery(&self) -> &D {
        self.delivery.as_ref()
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Why the bridge should not get traffic now, if it should not.
    pub fn unready_reason(&self) -> Option<&'static str> {
        if self.is_draining() {
            Some("draining")
        } else if let Some(reason) = self.delivery.unready_reason() {
            Some(reason)
        } else if self.admission.is_saturated() {
            Some("saturated")
        } else {
            None
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Readiness goes false at once; requests are still served until the listener stops.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.metrics().set_draining(true);
    }

    /// Answers one request. Never fails: every error becomes a Tencent-format FAIL answer.
    pub async fn handle<B>(&self, request: Request<B>, peer: SocketAddr) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let _inflight = self.metrics().inflight();
        let attempt = self.process(request, peer.ip()).await;
        let took = started.elapsed();
        let outcome = match &attempt.result {
            Ok(_) => Outcome::Ok,
            Err(rejection) => rejection.outcome(),
        };
        self.metrics()
            .app_callback(self.app_label(attempt.sdkappid), outcome);
        let mut response = match &attempt.result {
            Ok(Answered::Before(outcome)) => {
                self.report.before(&attempt, *outcome, took, peer);
                respond(StatusCode::OK, reply::OK)
            }
            Ok(Answered::Forwarded(answer, verdict, outcome)) => {
                self.report.before(&attempt, *outcome, took, peer);
                self.metrics().before.verdict(*verdict);
                respond(StatusCode::OK, answer.clone().unwrap_or(reply::OK))
            }
            Ok(Answered::Replayed) => {
                self.report.replayed(&attempt, took, peer);
                respond(StatusCode::OK, reply::OK)
            }
            Ok(Answered::Delivered(delivered)) => {
                self.report
                    .delivered(&attempt, self.delivery_name, delivered, took, peer);
                respond(StatusCode::OK, reply::OK)
            }
            Err(rejection) => {
                self.report.refused(&attempt, rejection, took, peer);
                fail(rejection)
            }
        };
        if attempt.body_unread || matches!(attempt.result, Err(Rejection::BadHttp(_))) {
            // Tencent reuses connections: say that this one ends here (RFC 9112 §9.6), or its
            // next callback would go into a closing socket.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// Answers a request the listener refused before the handler looked at it (its source):
    /// counted and logged like any refusal, its body never read, the connection closed after.
    pub fn refuse(&self, rejection: &Rejection, peer: SocketAddr) -> Response<Full<Bytes>> {
        self.refused_before_the_handler(rejection, peer);
        let mut response = fail(rejection);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }

    /// Counts and logs a request refused before it reached the handler (a head over the
    /// bound, answered by the connection's guard).
    pub fn refused_before_the_handler(&self, rejection: &Rejection, peer: SocketAddr) {
        let attempt = Attempt::refused("other", None, Rejection::NotFound, true);
        self.report
            .refused(&attempt, rejection, Duration::ZERO, peer);
    }

    /// The stages in order; each refusal ends the attempt with what was learnt so far.
    async fn process<B>(&self, request: Request<B>, client: IpAddr) -> Attempt
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let has_body = has_body(&request);
        let query = match self.verify(&request, now) {
            Ok(query) => query,
            Err(rejection) => {
                let claimed = Query::claimed_sdkappid(request.uri().query().unwrap_or(""));
                let unread = has_body && !self.discard_small_body(request, &rejection).await;
                return Attempt::refused("other", claimed, rejection, unread);
            }
        };
        if let Some(before) = self.before.as_ref().filter(|_| query.is_before()) {
            return before
                .answer(self, request, query, has_body, client, now)
                .await;
        }
        let command = query.command_label();
        let sdkappid = Some(query.sdkappid());
        let admitted = self.admission.admit().and_then(|admitted| {
            // Refused before the body is read: a callback admitted now would most likely time
            // out.
            self.admission.check_delivery()?;
            Ok(admitted)
        });
        let mut admitted = match admitted {
            Ok(admitted) => admitted,
            Err(rejection) => return Attempt::refused(command, sdkappid, rejection, has_body),
        };
        let callback = match self
            .read_callback(
                request,
                query,
                (&self.admission, &mut admitted, client),
                now,
            )
            .await
        {
            Ok(callback) => callback,
            Err(rejection) => return Attempt::unreadable(command, sdkappid, rejection, has_body),
        };
        let seen = Seen::of(&callback);
        let replays = self.replays.as_ref();
        let fingerprint = replays.and_then(|_| Replays::fingerprint(&callback));
        if let (Some(replays), Some((fingerprint, _))) = (replays, &fingerprint) {
            if replays.seen(fingerprint) {
                return seen.answered(command, Ok(Answered::Replayed));
            }
        }
        let result = self.deliver(self.records.build(callback)).await;
        drop(admitted);
        if let (Ok(_), Some(replays), Some((fingerprint, time))) = (&result, replays, fingerprint) {
            if replays.remember(fingerprint, time, now.as_secs()) == Remembered::ForgotOne {
                self.metrics().replay_forgotten();
            }
        }
        seen.answered(command, result.map(Answered::Delivered))
    }

    /// Path, method, HTTP framing and the query (app id and signature): cheap and pure, done
    /// before any bound is taken.
    fn verify<B>(&self, request: &Request<B>, now: Duration) -> Result<VerifiedQuery, Rejection> {
        if request.uri().path() != self.path {
            return Err(Rejection::NotFound);
        }
        if request.method() != Method::POST {
            return Err(Rejection::MethodNotAllowed);
        }
        check_http(request)?;
        let verified = VerifiedQuery::verify(
            request.uri().query().unwrap_or(""),
            &self.policy,
            now.as_secs(),
        );
        let skew = match &verified {
            Ok(query) => query.clock_skew_secs(now.as_secs()),
            Err(CallbackError::StaleRequestTime { skew_secs, .. }) => Some(*skew_secs),
            Err(_) => None,
        };
        if let Some(skew) = skew {
            self.metrics().request_time_skew(skew);
        }
        if let Err(
            CallbackError::MissingSignature
            | CallbackError::BadSignature
            | CallbackError::StaleRequestTime { .. },
        ) = &verified
        {
            let claimed = Query::claimed_sdkappid(request.uri().query().unwrap_or(""));
            self.metrics().signature_failure(self.app_label(claimed));
        }
        Ok(verified?)
    }

    /// Reads and drops the body of a request refused before its body mattered, when it is
    /// small and its framing sound; true when the connection can serve the next request.
    async fn discard_small_body<B>(&self, request: Request<B>, rejection: &Rejection) -> bool
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if matches!(rejection, Rejection::BadHttp(_)) {
            return false;
        }
        let declared = declared_length(&request);
        let Some(len) = declared.filter(|len| *len <= DISCARD_MAX_BYTES) else {
            return false;
        };
        let read = Limited::new(request.into_body(), len as usize).collect();
        matches!(
            tokio::time::timeout(self.body_read_timeout, read).await,
            Ok(Ok(_))
        )
    }

    /// The `sdkappid` label: the app's id when it is configured, `other` otherwise.
    fn app_label(&self, sdkappid: Option<u64>) -> &str {
        self.app_labels
            .iter()
            .find(|(id, _)| Some(*id) == sdkappid)
            .map_or("other", |(_, label)| label.as_str())
    }

    /// The body, within its memory budget, size and time, validated against the query. The
    /// budget is the admission's, taken for `client`.
    async fn read_callback<B>(
        &self,
        request: Request<B>,
        query: VerifiedQuery,
        (admission, admitted, client): (&Admission, &mut Admitted, IpAddr),
        now: Duration,
    ) -> Result<Callback, Rejection>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // A declared length over the limit is refused before reading anything, and one within
        // it reserved at once; a body without one (chunked) reserves its bytes as they arrive
        // and is cut off as soon as it passes the limit.
        let declared = declared_length(&request);
        if declared.is_some_and(|len| len > self.max_body_bytes as u64) {
            return Err(Rejection::BodyTooLarge(self.max_body_bytes));
        }
        let body = match declared {
            Some(len) => {
                admission.reserve_body(admitted, client, len as usize)?;
                self.read_body(request.into_body()).await?
            }
            None => {
                let reserve = |len| admission.reserve_body(admitted, client, len);
                self.read_chunks(request.into_body(), reserve).await?
            }
        };
        Ok(query.accept(body, now.as_millis() as u64)?)
    }

    /// Builds the record and waits for the delivery, bounded by one publish deadline whatever
    /// the sink's own timeouts say.
    async fn deliver(&self, record: Record) -> Result<Delivered, Rejection> {
        let started = Instant::now();
        let pending = self.admission.publishing();
        let result =
            tokio::time::timeout(self.publish_timeout, self.delivery.deliver_owned(record))
                .await
                .unwrap_or(Err(DeliveryError::TimedOut));
        drop(pending);
        let took = started.elapsed();
        // Whether the broker answers is what admission control sheds on.
        self.admission.record(
            result.is_ok(),
            matches!(result, Err(DeliveryError::TimedOut)),
        );
        let ack = result.map_err(|err| Rejection::from_delivery(err, self.publish_timeout))?;
        Ok(Delivered { ack, took })
    }

    async fn read_body<B>(&self, body: B) -> Result<Bytes, Rejection>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let read = Limited::new(body, self.max_body_bytes).collect();
        Ok(tokio::time::timeout(self.body_read_timeout, read)
            .await
            .map_err(|_| Rejection::BodyTimeout(self.body_read_timeout))?
            .map_err(|err| {
                if err.downcast_ref::<LengthLimitError>().is_some() {
                    Rejection::BodyTooLarge(self.max_body_bytes)
                } else {
                    Rejection::BodyRead(err.to_string())
                }
            })?
            .to_bytes())
    }

    /// The body as it arrives, each frame reserved before it is kept, within the size limit and
    /// the body-read timeout.
    async fn read_chunks<B>(
        &self,
        body: B,
        mut reserve: impl FnMut(usize) -> Result<(), Rejection>,
    ) -> Result<Bytes, Rejection>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let read = async {
            let mut body = std::pin::pin!(body);
            let mut whole = bytes::BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|err| Rejection::BodyRead(err.into().to_string()))?;
                let Ok(data) = frame.into_data() else {
                    continue; // trailers
                };
                if whole.len() + data.len() > self.max_body_bytes {
                    return Err(Rejection::BodyTooLarge(self.max_body_bytes));
                }
                reserve(data.len())?;
                whole.extend_from_slice(&data);
            }
            Ok(whole.freeze())
        };
        tokio::time::timeout(self.body_read_timeout, read)
            .await
            .map_err(|_| Rejection::BodyTimeout(self.body_read_timeout))?
    }
}

/// The body length the request declares (`Content-Length`), when it declares one.
fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Whether the request comes with a body to read (hyper knows from the framing: a length
/// above zero, or chunked).
fn has_body<B: Body>(request: &Request<B>) -> bool {
    !request.body().is_end_stream()
}

/// What HTTP requires of a request before its content is looked at: one `Host` in HTTP/1.1
/// (RFC 9112 §3.2), unambiguous framing, no content coding (RFC 9110 §8.4).
fn check_http<B>(request: &Request<B>) -> Result<(), Rejection> {
    let headers = request.headers();
    if request.version() == Version::HTTP_11 && headers.get_all(header::HOST).iter().count() != 1 {
        return Err(Rejection::BadHttp(
            "an HTTP/1.1 request needs exactly one Host header",
        ));
    }
    if headers.contains_key(header::CONTENT_LENGTH)
        && headers.contains_key(header::TRANSFER_ENCODING)
    {
        return Err(Rejection::BadHttp(
            "both Content-Length and Transfer-Encoding: the framing is ambiguous",
        ));
    }
    for coding in headers.get_all(header::CONTENT_ENCODING) {
        let coding = String::from_utf8_lossy(coding.as_bytes());
        if coding
            .split(',')
            .map(str::trim)
            .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        {
            return Err(Rejection::UnsupportedEncoding(coding.into_owned()));
        }
    }
    Ok(())
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
