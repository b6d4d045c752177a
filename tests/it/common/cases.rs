//! The request-level rejections, shared by the in-process handler tests and the tests over
//! the network against a real broker.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use timbridge::tencent::callback::sign;
use timbridge::tencent::callback::Token;

use super::{group_message, query};

pub const TOKEN: &str = "s3cret-token";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn signed(command: &str, time: u64) -> String {
    let sig = sign(&Token::new(TOKEN.into()), &time.to_string());
    format!("{}&RequestTime={time}&Sign={sig}", query(command))
}

pub struct Case {
    pub name: &'static str,
    pub method: &'static str,
    pub path_and_query: String,
    pub body: Bytes,
    pub status: u16,
    pub code: i64,
    pub reason: &'static str,
}

/// The flags the cases are written for: one app, a token, a 2 KiB body limit.
pub const CASE_FLAGS: &[&str] = &[
    "--sdkappid",
    "1400000000",
    "--token",
    TOKEN,
    "--max-body-bytes",
    "2KiB",
];

/// A signed group message and every request-level rejection of it: what each must answer
/// from a bridge started with [`CASE_FLAGS`].
pub fn request_cases() -> (Bytes, Vec<Case>) {
    let cmd = "Group.CallbackAfterSendMsg";
    let good = group_message("@TGS#rej", 1);
    let t = now();
    // Flip the last hex digit: always a different signature.
    let mut wrong_sign = signed(cmd, t);
    let last = wrong_sign.pop().unwrap();
    wrong_sign.push(if last == '0' { '1' } else { '0' });
    let invalid = Bytes::from(
        String::from_utf8(good.to_vec())
            .unwrap()
            .replace("\"MsgSeq\":1", "\"MsgSeq\":\"1\""),
    );
    let big = Bytes::from(vec![b' '; 3 * 1024]);
    let cases = vec![
        Case {
            name: "unknown path",
            method: "POST",
            path_and_query: format!("/other?{}", signed(cmd, t)),
            body: good.clone(),
            status: 404,
            code: 4040,
            reason: "not_found",
        },
        Case {
            name: "GET",
            method: "GET",
            path_and_query: format!("/callback?{}", signed(cmd, t)),
            body: Bytes::new(),
            status: 405,
            code: 4050,
            reason: "method_not_allowed",
        },
        Case {
            name: "no SdkAppid",
            method: "POST",
            path_and_query: format!("/callback?CallbackCommand={cmd}"),
            body: good.clone(),
            status: 400,
            code: 4000,
            reason: "bad_query",
        },
        Case {
            name: "contenttype xml",
            method: "POST",
            path_and_query: format!(
                "/callback?{}",
                signed(cmd, t).replace("contenttype=json", "contenttype=xml")
            ),
            body: good.clone(),
            status: 400,
            code: 4001,
            reason: "bad_content_type",
        },
        Case {
            name: "other app",
            method: "POST",
            path_and_query: format!(
                "/callback?{}",
                signed(cmd, t).replace("SdkAppid=1400000000", "SdkAppid=1400000001")
            ),
            body: good.clone(),
            status: 403,
            code: 4030,
            reason: "forbidden_sdkappid",
        },
        Case {
            name: "unsigned",
            method: "POST",
            path_and_query: format!("/callback?{}", query(cmd)),
            body: good.clone(),
            status: 401,
            code: 4010,
            reason: "missing_signature",
        },
        Case {
            name: "wrong sign",
            method: "POST",
            path_and_query: format!("/callback?{wrong_sign}"),
            body: good.clone(),
            status: 401,
            code: 4011,
            reason: "bad_signature",
        },
        Case {
            name: "stale time",
            method: "POST",
            path_and_query: format!("/callback?{}", signed(cmd, t - 120)),
            body: good.clone(),
            status: 401,
            code: 4012,
            reason: "stale_request_time",
        },
        Case {
            name: "future time",
            method: "POST",
            path_and_query: format!("/callback?{}", signed(cmd, t + 120)),
            body: good.clone(),
            status: 401,
            code: 4012,
            reason: "stale_request_time",
        },
        Case {
            name: "too large",
            method: "POST",
            path_and_query: format!("/callback?{}", signed(cmd, t)),
            body: big,
            status: 413,
            code: 4130,
            reason: "body_too_large",
        },
        Case {
            name: "not JSON",
            method: "POST",
            path_and_query: format!("/callback?{}", signed(cmd, t)),
            body: Bytes::from_static(b"{\"CallbackCommand\": nope"),
            status: 400,
            code: 4002,
            reason: "bad_json",
        },
        Case {
            name: "command mismatch",
            method: "POST",
            path_and_query: format!("/callback?{}", signed("Group.CallbackBeforeSendMsg", t)),
            body: good.clone(),
            status: 400,
            code: 4003,
            reason: "command_mismatch",
        },
        Case {
            name: "invalid body",
            method: "POST",
            path_and_query: format!("/callback?{}", signed(cmd, t)),
            body: invalid,
            status: 400,
            code: 4004,
            reason: "invalid_body",
        },
    ];
    (good, cases)
}
