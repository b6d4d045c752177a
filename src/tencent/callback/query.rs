//! The callback URL's query string: `SdkAppid`, `CallbackCommand`, `contenttype`, `ClientIP`,
//! `OptPlatform` and, when authentication is on, `Sign` and `RequestTime`.

use super::error::CallbackError;

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
            if value.len() > super::body::MAX_ID_BYTES {
                return Err(CallbackError::BadQuery(format!(
                    "{name} is longer than {} bytes",
                    super::body::MAX_ID_BYTES
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
}
