//! The Tencent IM callback protocol: query parameters, signature, body validation and the
//! answer format. Pure functions; nothing here does I/O.
//!
//! The types make the order of checks hard to get wrong: a [`VerifiedQuery`] exists only once
//! the URL passed the app id and signature checks, and a [`Callback`] (the only thing a
//! [`crate::wire::RecordBuilder`] turns into a record) exists only once its body was validated against that query.

pub mod body;
pub mod commands;
pub mod error;
pub mod query;
pub mod reply;
pub mod signature;

use std::time::Duration;

use bytes::Bytes;

pub use body::Fields;
pub use error::CallbackError;
pub use query::Query;
pub use signature::Token;

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
            signature::verify(
                token,
                query.sign.as_deref(),
                query.request_time.as_deref(),
                now_unix,
                policy.max_clock_skew,
            )?;
        }
        let spec = commands::lookup(&query.command);
        Ok(VerifiedQuery { query, spec })
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
        commands::is_before(&self.query.command)
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

/// A verified, validated callback: ready to publish.
#[derive(Debug)]
pub struct Callback {
    query: Query,
    spec: Option<&'static commands::Spec>,
    fields: Fields,
    body: Bytes,
    received_at_ms: u64,
}

impl Callback {
    /// The request body, exactly as received.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub fn sdkappid(&self) -> u64 {
        self.query.sdkappid
    }

    pub fn command(&self) -> &str {
        &self.query.command
    }

    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// The command's entry in Tencent's table, `None` when unlisted.
    pub fn spec(&self) -> Option<&'static commands::Spec> {
        self.spec
    }

    pub fn query(&self) -> &Query {
        &self.query
    }

    /// When the request arrived, unix milliseconds.
    pub fn received_at_ms(&self) -> u64 {
        self.received_at_ms
    }

    pub fn into_body(self) -> Bytes {
        self.body
    }
}

/// The metric label for a command: the command itself when it is one Tencent documents,
/// `other` otherwise, so that callers cannot grow the label set.
pub fn command_label(command: &str) -> &'static str {
    commands::lookup(command).map_or("other", |spec| spec.name)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn command_labels_are_a_fixed_set() {
        assert_eq!(
            command_label("Group.CallbackAfterSendMsg"),
            "Group.CallbackAfterSendMsg"
        );
        assert_eq!(command_label("Group.CallbackSomethingNew"), "other");
    }
}
