//! Tencent's answer format: `{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}` or the same shape
//! with `FAIL`, a non-zero code and a reason.

use bytes::Bytes;
use serde::Serialize;

pub const OK_BODY: &[u8] = br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Reply<'a> {
    action_status: &'a str,
    error_info: &'a str,
    error_code: u32,
}

/// The OK answer, ready to send (a constant: answering costs no call and no allocation).
pub const OK: Bytes = Bytes::from_static(OK_BODY);

pub fn fail(error_code: u32, error_info: &str) -> Bytes {
    let reply = Reply {
        action_status: "FAIL",
        error_info,
        error_code,
    };
    // Serialising three plain fields cannot fail; the fallback keeps the shape regardless.
    serde_json::to_vec(&reply)
        .map(Bytes::from)
        .unwrap_or_else(|_| {
            Bytes::from_static(
                br#"{"ActionStatus":"FAIL","ErrorInfo":"internal error","ErrorCode":5000}"#,
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_is_tencents_literal() {
        let v: serde_json::Value = serde_json::from_slice(&OK).unwrap();
        assert_eq!(v["ActionStatus"], "OK");
        assert_eq!(v["ErrorCode"], 0);
        assert_eq!(v["ErrorInfo"], "");
    }

    #[test]
    fn fail_escapes_the_reason() {
        let body = fail(4002, "bad \"json\"\n");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["ActionStatus"], "FAIL");
        assert_eq!(v["ErrorCode"], 4002);
        assert_eq!(v["ErrorInfo"], "bad \"json\"\n");
    }
}
