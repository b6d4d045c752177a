//! The Tencent IM callback protocol: query parameters, signature, body validation and the
//! answer format. Pure functions; nothing here does I/O.
//!
//! The types make the order of checks hard to get wrong: a [`VerifiedQuery`] exists only once
//! the URL passed the app id and signature checks, and a [`Callback`] (the only thing a
//! [`crate::sink::RecordBuilder`] turns into a record) exists only once its body was validated against that query.

pub mod body;
pub mod commands;
pub mod query;
pub mod reply;
pub mod signature;

use std::time::Duration;

use bytes::Bytes;

use crate::ingest::Rejection;
pub use body::Fields;
pub use query::Query;
pub use signature::Token;

/// Which callbacks the bridge accepts: the app ids it serves and, when set, the token.
#[derive(Debug, Clone)]
pub struct Policy {
    pub sdkappids: AppIds,
    pub token: Option<Token>,
    pub max_clock_skew: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppIds {
    Any,
    Only(Vec<u64>),
}

/// A callback URL that passed the app id and signature checks; its body is not read yet.
#[derive(Debug)]
pub struct VerifiedQuery {
    query: Query,
}

impl VerifiedQuery {
    /// Checks the query string. `now_unix` is this server's clock, for `RequestTime`.
    pub fn verify(raw: &str, policy: &Policy, now_unix: u64) -> Result<VerifiedQuery, Rejection> {
        let query = Query::parse(raw)?;
        if let AppIds::Only(ids) = &policy.sdkappids {
            if !ids.contains(&query.sdkappid) {
                return Err(Rejection::ForbiddenAppId(query.sdkappid));
            }
        }
        if let Some(token) = &policy.token {
            signature::verify(
                token,
                query.sign.as_deref(),
                query.request_time.as_deref(),
                now_unix,
                policy.max_clock_skew,
            )?;
        }
        Ok(VerifiedQuery { query })
    }

    pub fn command(&self) -> &str {
        &self.query.command
    }

    /// How far the signed `RequestTime` is from `now_unix`, when the URL was signed.
    pub fn clock_skew_secs(&self, now_unix: u64) -> Option<u64> {
        let time: u64 = self.query.request_time.as_deref()?.parse().ok()?;
        Some(now_unix.abs_diff(time))
    }

    /// Validates `body` against this query; `received_at_ms` is when the request arrived.
    pub fn accept(self, body: Bytes, received_at_ms: u64) -> Result<Callback, Rejection> {
        let fields = body::parse(&self.query.command, &body)?;
        Ok(Callback {
            query: self.query,
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

    fn policy() -> Policy {
        Policy {
            sdkappids: AppIds::Only(vec![1400000000]),
            token: None,
            max_clock_skew: Duration::from_secs(60),
        }
    }

    #[test]
    fn refuses_other_apps() {
        let err = VerifiedQuery::verify("SdkAppid=1400000001&CallbackCommand=A.B", &policy(), 0)
            .unwrap_err();
        assert_eq!(err.reason(), "forbidden_sdkappid");
        let any = Policy {
            sdkappids: AppIds::Any,
            ..policy()
        };
        VerifiedQuery::verify("SdkAppid=1400000001&CallbackCommand=A.B", &any, 0).unwrap();
    }

    #[test]
    fn requires_the_signature_when_a_token_is_set() {
        let signed = Policy {
            token: Some(Token::new("xxxxyyyy".into())),
            ..policy()
        };
        let base = "SdkAppid=1400000000&CallbackCommand=A.B";
        let err = VerifiedQuery::verify(base, &signed, 1669872112).unwrap_err();
        assert_eq!(err.reason(), "missing_signature");
        let ok = format!("{base}&RequestTime=1669872112&Sign=17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061");
        VerifiedQuery::verify(&ok, &signed, 1669872112).unwrap();
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
