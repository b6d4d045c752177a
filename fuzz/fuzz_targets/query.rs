//! The callback URL: `Query::parse` and `VerifiedQuery::verify` under a policy with a token.
//!
//! Input: one flags byte, then the raw query string. Random bytes never carry a valid
//! signature, so with flag 1 the target appends the right `Sign` for the query's own
//! `RequestTime` and checks that the signature path accepts exactly what it should.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use timbridge::tencent::callback::{
    sign, CallbackError, Policy, Query, Signers, Token, VerifiedQuery,
};

const SKEW: Duration = Duration::from_secs(60);

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    // A URL's query is bytes; the handler hands the parser a &str.
    let Ok(raw) = std::str::from_utf8(rest) else {
        return;
    };
    let token = Token::new("xxxxyyyy".into());
    let signers = if flags & 2 == 0 {
        Signers::Any {
            token: Some(token.clone()),
        }
    } else {
        Signers::Listed(vec![(1400000000, Some(token.clone())), (1400000001, None)])
    };
    let policy = Policy {
        signers,
        max_clock_skew: SKEW,
    };
    let now = u64::from_le_bytes([flags, 0x62, 0x1d, 0x65, 0, 0, 0, 0]);
    let _ = Query::claimed_sdkappid(raw);

    let Ok(query) = Query::parse(raw) else {
        let _ = VerifiedQuery::verify(raw, &policy, now);
        return;
    };
    for value in [
        &query.client_ip,
        &query.opt_platform,
        &query.sign,
        &query.request_time,
    ]
    .into_iter()
    .flatten()
    {
        assert!(!value.chars().any(char::is_control), "{raw:?}");
    }
    assert!(!query.command.is_empty() && query.command.len() <= 128);

    if flags & 1 == 1 && query.sign.is_none() && matches!(policy.signers, Signers::Any { .. }) {
        // The right signature for the query's own RequestTime, checked at that time.
        let Some(time) = query.request_time.as_deref() else {
            return;
        };
        let signed = format!("{raw}&Sign={}", sign(&token, time));
        let plain =
            !time.is_empty() && time.len() <= 19 && time.bytes().all(|b| b.is_ascii_digit());
        match (plain, time.parse::<u64>()) {
            (true, Ok(at)) => {
                let verified = VerifiedQuery::verify(&signed, &policy, at);
                assert!(verified.is_ok(), "{signed:?}: {verified:?}");
                // One second past the skew: stale.
                let late = VerifiedQuery::verify(&signed, &policy, at.saturating_add(61));
                if at.checked_add(61).is_some() {
                    assert!(
                        matches!(late, Err(CallbackError::StaleRequestTime { .. })),
                        "{signed:?}: {late:?}"
                    );
                }
            }
            _ => {
                let refused = VerifiedQuery::verify(&signed, &policy, now);
                assert_eq!(
                    refused.unwrap_err(),
                    CallbackError::BadSignature,
                    "{signed:?}"
                );
            }
        }
        return;
    }

    match VerifiedQuery::verify(raw, &policy, now) {
        Ok(verified) => {
            // Accepted with a token: the URL carried that token's signature for its time.
            let expects_token = match &policy.signers {
                Signers::Any { .. } => true,
                Signers::Listed(_) => verified.sdkappid() == 1400000000,
            };
            if expects_token {
                let (Some(given), Some(time)) = (&query.sign, &query.request_time) else {
                    panic!("accepted without a signature: {raw:?}");
                };
                assert!(given.eq_ignore_ascii_case(&sign(&token, time)), "{raw:?}");
                assert!(verified
                    .clock_skew_secs(now)
                    .is_some_and(|s| s <= SKEW.as_secs()));
            }
            let _ = (verified.command_label(), verified.is_before());
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});
