//! Tencent's callback authentication: `Sign = lowercase_hex(sha256(Token + RequestTime))`.
//!
//! Plain SHA-256 over the token followed by the decimal `RequestTime`, not an HMAC; the body is
//! not covered. `RequestTime` must be within the allowed clock skew, which limits replays.

use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::CallbackError;
use crate::core::secret::Secret;

/// The callback token: a [`Secret`], so its `Debug` never shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token(Secret);

impl Token {
    pub fn new(token: String) -> Token {
        Token(Secret::new(token))
    }
}

/// The lowercase hex signature Tencent computes for `token` and `request_time`.
pub fn sign(token: &Token, request_time: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(token.0.expose().as_bytes());
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
pub fn verify(
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
            verify(&token(), Some(EXAMPLE_SIGN), Some("1669872112"), now, skew).unwrap();
        }
        let upper = EXAMPLE_SIGN.to_ascii_uppercase();
        verify(&token(), Some(&upper), Some("1669872112"), 1669872112, skew).unwrap();
    }

    #[test]
    fn refuses_stale_missing_and_wrong() {
        let skew = Duration::from_secs(60);
        let t = token();
        let r = |s: Option<&str>, rt: Option<&str>, now| verify(&t, s, rt, now, skew);
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
            verify(
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
}
