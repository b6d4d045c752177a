//! The callback URL, checked: its query string (`SdkAppid`, `CallbackCommand`, `contenttype`,
//! `ClientIP`, `OptPlatform`, `Sign`, `RequestTime`), Tencent's signature over it, and the
//! policy of which apps are served. A [`VerifiedQuery`] is a URL that passed all of it, with its
//! command looked up once in Tencent's table.
//!
//! Tencent's callback authentication: `Sign = lowercase_hex(sha256(Token + RequestTime))`: plain
//! SHA-256 over the token followed by the decimal `RequestTime`, not an HMAC; the body is not
//! covered. `RequestTime` must be within the allowed clock skew, which limits replays.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::body::{self, Callback};
use super::commands;
use super::error::CallbackError;
use crate::core::secret::Secret;

/// Which callbacks the bridge accepts: the apps it serves, each with its token (or none).
#[derive(Debug, Clone)]
pub struct Policy {
    pub signers: Signers,
    pub max_clock_skew: Duration,
}

/// The apps whose callbacks are accepted, and the token that signs each one's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signers {
    /// Any SdkAppid (development only), with one optional token for all.
    Any { token: Option<Token> },
    /// Only these apps, each with its own token (`None`: its callbacks are not signed).
    Listed(Vec<(u64, Option<Token>)>),
}

impl Signers {
    /// The token that signs `sdkappid`'s callbacks, when it is served (`Some(None)`: unsigned).
    pub fn token_for(&self, sdkappid: u64) -> Option<Option<&Token>> {
        match self {
            Signers::Any { token } => Some(token.as_ref()),
            Signers::Listed(apps) => apps
                .iter()
                .find(|(id, _)| *id == sdkappid)
                .map(|(_, token)| token.as_ref()),
        }
    }
}

/// A callback URL that passed the app id and signature checks; its body is not read yet.
#[derive(Debug)]
pub struct VerifiedQuery {
    query: Query,
    /// The command's entry in Tencent's table (looked up once, here), `None` when unlisted.
    spec: Option<&'static commands::Spec>,
    /// A `CallbackBefore…` or `CallbackPrev…`, listed or not.
    before: bool,
}

impl VerifiedQuery {
    /// Checks the query string. `now_unix` is this server's clock, for `RequestTime`.
    pub fn verify(
        raw: &str,
        policy: &Policy,
        now_unix: u64,
    ) -> Result<VerifiedQuery, CallbackError> {
        let query = Query::parse(raw)?;
        let token = policy
            .signers
            .token_for(query.sdkappid)
            .ok_or(CallbackError::ForbiddenAppId(query.sdkappid))?;
        // Each app's callbacks are signed with its own token: another app's valid signature
        // is a bad signature here.
        if let Some(token) = token {
            verify_sign(
                token,
                query.sign.as_deref(),
                query.request_time.as_deref(),
                now_unix,
                policy.max_clock_skew,
            )?;
        }
        let spec = commands::lookup(&query.command);
        let before = commands::is_before(&query.command);
        Ok(VerifiedQuery {
            query,
            spec,
            before,
        })
    }

    pub fn command(&self) -> &str {
        &self.query.command
    }

    /// The command's metric label: its name when Tencent documents it, `other` otherwise.
    pub fn command_label(&self) -> &'static str {
        self.spec.map_or("other", |spec| spec.name)
    }

    /// Tencent waits on the answer to let the user's action go ahead.
    pub fn is_before(&self) -> bool {
        self.before
    }

    pub fn sdkappid(&self) -> u64 {
        self.query.sdkappid
    }

    /// How far the signed `RequestTime` is from `now_unix`, when the URL was signed.
    pub fn clock_skew_secs(&self, now_unix: u64) -> Option<u64> {
        let time: u64 = self.query.request_time.as_deref()?.parse().ok()?;
        Some(now_unix.abs_diff(time))
    }

    /// Validates `body` against this query; `received_at_ms` is when the request arrived.
    pub fn accept(self, body: Bytes, received_at_ms: u64) -> Result<Callback, CallbackError> {
        let fields = body::parse(&self.query.command, &body)?;
        Ok(Callback {
            query: self.query,
            spec: self.spec,
            fields,
            body,
            received_at_ms,
        })
    }
}

/// The query parameters the bridge reads. Parameters come in any order and are looked up by
/// name; unknown ones are ignored (Tencent may add some).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query {
    pub sdkappid: u64,
    pub command: String,
    pub client_ip: Option<String>,
    pub opt_platform: Option<String>,
    pub sign: Option<String>,
    pub request_time: Option<String>,
}

impl Query {
    /// The app id a query claims, in either spelling, without checking anything else (for
    /// labelling a refusal).
    pub fn claimed_sdkappid(raw: &str) -> Option<u64> {
        form_urlencoded::parse(raw.as_bytes())
            .find(|(name, _)| name == "SdkAppid" || name == "SdkAppId")
            .and_then(|(_, value)| value.parse().ok())
    }

    /// Parses a raw (still percent-encoded) query string.
    pub fn parse(raw: &str) -> Result<Query, CallbackError> {
        let mut sdkappid = None;
        let mut command = None;
        let mut content_type = None;
        let mut query = Query::default();
        for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
            // Parameter names are matched exactly as Tencent spells them, in each spelling its
            // pages use (a live-room overview writes `SdkAppId` and `WebhookCommand`). A
            // repeated parameter, in either spelling, is refused: with two values the bridge
            // could verify one and publish the other.
            let slot = match name.as_ref() {
                "SdkAppid" | "SdkAppId" => &mut sdkappid,
                "CallbackCommand" | "WebhookCommand" => &mut command,
                "contenttype" => &mut content_type,
                "ClientIP" => &mut query.client_ip,
                "OptPlatform" => &mut query.opt_platform,
                "Sign" => &mut query.sign,
                "RequestTime" => &mut query.request_time,
                _ => continue,
            };
            if slot.is_some() {
                return Err(CallbackError::BadQuery(format!("{name} is given twice")));
            }
            // These values end up in broker headers: a control character (a decoded %0D%0A)
            // would let a caller forge headers.
            if let Some(c) = value.chars().find(|c| c.is_control()) {
                return Err(CallbackError::BadQuery(format!(
                    "{name} contains the control character {c:?}"
                )));
            }
            if value.len() > body::MAX_ID_BYTES {
                return Err(CallbackError::BadQuery(format!(
                    "{name} is longer than {} bytes",
                    body::MAX_ID_BYTES
                )));
            }
            *slot = Some(value.into_owned());
        }

        let sdkappid =
            sdkappid.ok_or_else(|| CallbackError::BadQuery("SdkAppid is missing".into()))?;
        query.sdkappid = sdkappid.parse().map_err(|_| {
            CallbackError::BadQuery(format!("SdkAppid {sdkappid:?} is not a number"))
        })?;
        query.command =
            command.ok_or_else(|| CallbackError::BadQuery("CallbackCommand is missing".into()))?;
        if !is_valid_command(&query.command) {
            return Err(CallbackError::BadQuery(format!(
                "CallbackCommand {:?} is not of the form Module.Command",
                query.command
            )));
        }
        // Tencent's pages say both `json` and `JSON`; an absent contenttype is taken as JSON.
        if let Some(ct) = content_type {
            if !ct.eq_ignore_ascii_case("json") {
                return Err(CallbackError::BadContentType(ct));
            }
        }
        Ok(query)
    }
}

/// A command name becomes a subject token and a topic name, so it is restricted to what is safe
/// in both: ASCII letters, digits, `_` and `.` separators, like every Tencent command.
fn is_valid_command(command: &str) -> bool {
    !command.is_empty()
        && command.len() <= 128
        && !command.starts_with('.')
        && !command.ends_with('.')
        && !command.contains("..")
        && command
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// The callback token: a [`Secret`], so its `Debug` never shows it, kept with SHA-256's state
/// after absorbing it (every signature starts from there).
#[derive(Clone)]
pub struct Token {
    secret: Secret,
    hashed: Sha256,
}

impl Token {
    pub fn new(token: String) -> Token {
        let hashed = Sha256::new_with_prefix(token.as_bytes());
        Token {
            secret: Secret::new(token),
            hashed,
        }
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        self.secret == other.secret
    }
}

impl Eq for Token {}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Token").field(&self.secret).finish()
    }
}

/// The lowercase hex signature Tencent computes for `token` and `request_time`.
pub fn sign(token: &Token, request_time: &str) -> String {
    let mut hasher = token.hashed.clone();
    hasher.update(request_time.as_bytes());
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        hex.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    hex
}

/// Checks `Sign` and `RequestTime` against `token`; `now_unix` is the receiver's clock.
pub fn verify_sign(
    token: &Token,
    sign_param: Option<&str>,
    request_time: Option<&str>,
    now_unix: u64,
    max_skew: Duration,
) -> Result<(), CallbackError> {
    let (Some(given), Some(request_time)) = (sign_param, request_time) else {
        return Err(CallbackError::MissingSignature);
    };
    // Only plain decimal digits: the signature covers RequestTime's text, so "+1669872112" or
    // " 1669872112" must not pass as the same time.
    let time: u64 = match request_time.bytes().all(|b| b.is_ascii_digit()) {
        true if !request_time.is_empty() && request_time.len() <= 19 => request_time
            .parse()
            .map_err(|_| CallbackError::BadSignature)?,
        _ => return Err(CallbackError::BadSignature),
    };
    let skew_secs = now_unix.abs_diff(time);
    if skew_secs > max_skew.as_secs() {
        return Err(CallbackError::StaleRequestTime {
            skew_secs,
            max_secs: max_skew.as_secs(),
        });
    }
    let expected = sign(token, request_time);
    // Hex is compared case-insensitively (some senders upper-case it) and in constant time.
    let given = given.to_ascii_lowercase();
    if bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
        Ok(())
    } else {
        Err(CallbackError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_parameters_in_any_order() {
        let q = Query::parse(
            "OptPlatform=RESTAPI&ClientIP=127.0.0.1&contenttype=JSON&CallbackCommand=Group.CallbackAfterSendMsg&SdkAppid=1400000000",
        )
        .unwrap();
        assert_eq!(q.sdkappid, 1_400_000_000);
        assert_eq!(q.command, "Group.CallbackAfterSendMsg");
        assert_eq!(q.client_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(q.opt_platform.as_deref(), Some("RESTAPI"));
        assert_eq!(q.sign, None);
    }

    #[test]
    fn client_ip_and_platform_are_optional() {
        let q =
            Query::parse("SdkAppid=1&CallbackCommand=Group.CallbackOnMemberStateChange").unwrap();
        assert_eq!(q.client_ip, None);
        assert_eq!(q.opt_platform, None);
    }

    #[test]
    fn both_spellings_of_the_app_id_and_the_command_are_read() {
        let q = Query::parse("SdkAppId=1400000000&WebhookCommand=Live.CallbackAfterCreateRoom")
            .unwrap();
        assert_eq!(q.sdkappid, 1400000000);
        assert_eq!(q.command, "Live.CallbackAfterCreateRoom");
    }

    #[test]
    fn contenttype_is_case_insensitive_and_checked() {
        assert!(Query::parse("SdkAppid=1&CallbackCommand=A.B&contenttype=Json").is_ok());
        let err = Query::parse("SdkAppid=1&CallbackCommand=A.B&contenttype=xml").unwrap_err();
        assert_eq!(err.reason(), "bad_content_type");
    }

    #[test]
    fn missing_or_bad_required_parameters_are_refused() {
        for raw in [
            "CallbackCommand=A.B",
            "SdkAppid=1",
            "SdkAppid=abc&CallbackCommand=A.B",
            "SdkAppid=1&CallbackCommand=A.B&SdkAppid=2",
            // One parameter in both spellings is a repeated parameter.
            "SdkAppid=1&SdkAppId=2&CallbackCommand=A.B",
            "SdkAppid=1&CallbackCommand=A.B&WebhookCommand=A.C",
            "SdkAppid=1&CallbackCommand=a.%3E",
            "SdkAppid=1&CallbackCommand=A..B",
            "SdkAppid=1&CallbackCommand=",
            "SdkAppid=1&CallbackCommand=A.B&ClientIP=1.2.3.4%0D%0AX-Evil:%201",
        ] {
            let err = Query::parse(raw).unwrap_err();
            assert_eq!(err.reason(), "bad_query", "{raw}");
        }
    }

    #[test]
    fn percent_encoding_is_decoded() {
        let q = Query::parse("SdkAppid=1&CallbackCommand=A.B&OptPlatform=Mac%20OS").unwrap();
        assert_eq!(q.opt_platform.as_deref(), Some("Mac OS"));
    }

    fn policy(apps: Vec<(u64, Option<Token>)>) -> Policy {
        Policy {
            signers: Signers::Listed(apps),
            max_clock_skew: Duration::from_secs(60),
        }
    }

    #[test]
    fn refuses_other_apps() {
        let one = policy(vec![(1400000000, None)]);
        let err =
            VerifiedQuery::verify("SdkAppid=1400000001&CallbackCommand=A.B", &one, 0).unwrap_err();
        assert_eq!(err, CallbackError::ForbiddenAppId(1400000001));
        let any = Policy {
            signers: Signers::Any { token: None },
            ..one
        };
        VerifiedQuery::verify("SdkAppid=1400000001&CallbackCommand=A.B", &any, 0).unwrap();
    }

    /// Tencent's worked example: token xxxxyyyy, RequestTime 1669872112.
    const SIGNED: &str = "RequestTime=1669872112&Sign=17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061";

    #[test]
    fn requires_the_signature_when_a_token_is_set() {
        let signed = policy(vec![(1400000000, Some(Token::new("xxxxyyyy".into())))]);
        let base = "SdkAppid=1400000000&CallbackCommand=A.B";
        let err = VerifiedQuery::verify(base, &signed, 1669872112).unwrap_err();
        assert_eq!(err, CallbackError::MissingSignature);
        VerifiedQuery::verify(&format!("{base}&{SIGNED}"), &signed, 1669872112).unwrap();
    }

    #[test]
    fn each_app_is_verified_with_its_own_token() {
        let two = policy(vec![
            (1400000000, Some(Token::new("xxxxyyyy".into()))),
            (1400000001, Some(Token::new("other-token".into()))),
            (1400000002, None),
        ]);
        let query = |app: u64| format!("SdkAppid={app}&CallbackCommand=A.B&{SIGNED}");
        VerifiedQuery::verify(&query(1400000000), &two, 1669872112).unwrap();
        // The first app's valid signature does not pass for the second.
        let err = VerifiedQuery::verify(&query(1400000001), &two, 1669872112).unwrap_err();
        assert_eq!(err, CallbackError::BadSignature);
        // An unsigned app needs none (and ignores one).
        VerifiedQuery::verify("SdkAppid=1400000002&CallbackCommand=A.B", &two, 0).unwrap();
    }

    const EXAMPLE_SIGN: &str = "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061";

    fn token() -> Token {
        Token::new("xxxxyyyy".into())
    }

    #[test]
    fn matches_tencents_worked_example() {
        assert_eq!(sign(&token(), "1669872112"), EXAMPLE_SIGN);
    }

    #[test]
    fn accepts_the_example_within_the_skew() {
        let skew = Duration::from_secs(60);
        for now in [1669872112, 1669872112 + 60, 1669872112 - 60] {
            verify_sign(&token(), Some(EXAMPLE_SIGN), Some("1669872112"), now, skew).unwrap();
        }
        let upper = EXAMPLE_SIGN.to_ascii_uppercase();
        verify_sign(&token(), Some(&upper), Some("1669872112"), 1669872112, skew).unwrap();
    }

    #[test]
    fn refuses_stale_missing_and_wrong() {
        let skew = Duration::from_secs(60);
        let t = token();
        let r = |s: Option<&str>, rt: Option<&str>, now| verify_sign(&t, s, rt, now, skew);
        let stale = r(Some(EXAMPLE_SIGN), Some("1669872112"), 1669872112 + 61).unwrap_err();
        assert_eq!(stale.reason(), "stale_request_time");
        let future = r(Some(EXAMPLE_SIGN), Some("1669872112"), 1669872112 - 61).unwrap_err();
        assert_eq!(future.reason(), "stale_request_time");
        assert_eq!(
            r(None, Some("1669872112"), 1669872112)
                .unwrap_err()
                .reason(),
            "missing_signature"
        );
        assert_eq!(
            r(Some(EXAMPLE_SIGN), None, 1669872112)
                .unwrap_err()
                .reason(),
            "missing_signature"
        );
        let mut wrong = EXAMPLE_SIGN.to_string();
        wrong.replace_range(0..1, "2");
        assert_eq!(
            r(Some(&wrong), Some("1669872112"), 1669872112)
                .unwrap_err()
                .reason(),
            "bad_signature"
        );
        assert_eq!(
            r(Some(&EXAMPLE_SIGN[..63]), Some("1669872112"), 1669872112)
                .unwrap_err()
                .reason(),
            "bad_signature"
        );
        for bad_time in ["+1669872112", "", "16698721x2", "99999999999999999999999"] {
            assert_eq!(
                r(Some(EXAMPLE_SIGN), Some(bad_time), 1669872112)
                    .unwrap_err()
                    .reason(),
                "bad_signature",
                "{bad_time:?}"
            );
        }
        let other = Token::new("xxxxyyyz".into());
        assert_eq!(
            verify_sign(
                &other,
                Some(EXAMPLE_SIGN),
                Some("1669872112"),
                1669872112,
                skew
            )
            .unwrap_err()
            .reason(),
            "bad_signature"
        );
    }

    #[test]
    fn debug_hides_the_token() {
        assert!(!format!("{:?}", token()).contains("xxxx"));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            /// The query parser on any bytes (decoded lossily, as a URL's query can hold any
            /// percent-encoded byte): parsed or refused, never a panic, and what it accepts is
            /// what the bridge relies on: a well-formed command and no control character.
            #[test]
            fn the_query_parser_takes_any_input(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let raw = String::from_utf8_lossy(&bytes);
                if let Ok(q) = Query::parse(&raw) {
                    prop_assert!(is_valid_command(&q.command));
                    for value in [&q.client_ip, &q.opt_platform, &q.sign, &q.request_time].into_iter().flatten() {
                        prop_assert!(!value.chars().any(char::is_control));
                    }
                }
            }

            /// The same, on inputs shaped like Tencent's queries (a numeric app id, a
            /// well-formed command, then other parameters with any value: percent-encoded
            /// control characters, repeated names), so that most of them get past the first
            /// checks.
            #[test]
            fn query_shaped_input(
                app in "[0-9]{1,10}",
                command in "[A-Z][a-z]{1,5}\\.[A-Za-z]{1,10}",
                extra in proptest::collection::vec((
                    "(SdkAppid|CallbackCommand|contenttype|ClientIP|OptPlatform|Sign|RequestTime|x)",
                    prop_oneof!["[^&=]{0,12}", "[a-z]{0,4}%0[0-9A-Fa-f][a-z]{0,4}", "%[0-9A-F]{2}"],
                ), 0..4),
            ) {
                let mut raw = format!("SdkAppid={app}&CallbackCommand={command}");
                for (k, v) in &extra {
                    raw.push_str(&format!("&{k}={v}"));
                }
                if let Ok(q) = Query::parse(&raw) {
                    prop_assert!(is_valid_command(&q.command));
                    for value in [&q.client_ip, &q.opt_platform, &q.sign, &q.request_time].into_iter().flatten() {
                        prop_assert!(!value.chars().any(char::is_control), "{raw}");
                    }
                    let policy = Policy {
                        signers: Signers::Any { token: Some(Token::new("t".into())) },
                        max_clock_skew: Duration::from_secs(60),
                    };
                    // Never a panic on the signature path either.
                    let _ = VerifiedQuery::verify(&raw, &policy, 1_700_000_000);
                }
            }
        }
    }
}
