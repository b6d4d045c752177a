//! The two group calls the auditor makes: a page of history (`group_msg_get_simple`) and the
//! groups' next seq (`get_group_info`). Field names are Tencent's; docs/protocol.md section 9.

use serde::{Deserialize, Serialize};

use super::client::{RestClient, RestError};

pub const HISTORY: &str = "group_open_http_svc/group_msg_get_simple";
pub const GROUP_INFO: &str = "group_open_http_svc/get_group_info";
/// Tencent returns at most 20 messages per history call.
pub const MAX_PAGE: u32 = 20;
/// `get_group_info` takes at most 50 group ids.
pub const MAX_GROUPS_PER_INFO: usize = 50;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HistoryRequest<'a> {
    pub group_id: &'a str,
    pub req_msg_number: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub req_msg_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<&'a str>,
    /// 1: recalled messages are returned (as placeholders) rather than left out.
    pub with_recalled_msg: u8,
}

/// `IsFinished`: 1 everything returned, 0 more below, 2 the rest has expired.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HistoryPage {
    #[serde(default)]
    pub is_finished: u8,
    #[serde(default)]
    pub rsp_msg_list: Vec<HistoryMessage>,
}

pub const FINISHED: u8 = 1;
pub const EXPIRED: u8 = 2;

/// One message of a group's history, newest first in a page.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct HistoryMessage {
    #[serde(rename = "From_Account", default)]
    pub from_account: String,
    /// 1: deleted, expired or failed (empty body); 2: recalled.
    #[serde(rename = "IsPlaceMsg", default)]
    pub is_place_msg: u8,
    #[serde(rename = "IsSystemMsg", default)]
    pub is_system_msg: u8,
    #[serde(
        rename = "MsgPriority",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub msg_priority: Option<serde_json::Value>,
    #[serde(rename = "MsgRandom", default)]
    pub msg_random: u64,
    #[serde(rename = "MsgSeq")]
    pub msg_seq: u64,
    #[serde(rename = "MsgTimeStamp", default)]
    pub msg_time_stamp: u64,
    #[serde(rename = "MsgBody", default)]
    pub msg_body: serde_json::Value,
    #[serde(
        rename = "CloudCustomData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cloud_custom_data: Option<String>,
}

impl HistoryMessage {
    /// A seq that carried no user message: a system notice or a placeholder.
    pub fn is_settled(&self) -> bool {
        self.is_system_msg != 0 || self.is_place_msg != 0
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InfoRequest<'a> {
    group_id_list: &'a [&'a str],
    response_filter: InfoFilter,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InfoFilter {
    group_base_info_filter: [&'static str; 2],
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InfoAnswer {
    #[serde(default)]
    group_info: Vec<GroupInfo>,
}

/// One group of a `get_group_info` answer.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct GroupInfo {
    pub group_id: String,
    /// Per group: 0, or why this group could not be read (10010 gone, 10015 bad id).
    #[serde(default)]
    pub error_code: i64,
    #[serde(default)]
    pub r#type: String,
    /// The seq the group's next message will get.
    #[serde(default)]
    pub next_msg_seq: u64,
}

impl RestClient {
    /// Up to `count` (≤ 20) messages with seq ≤ `below_or_at`, newest first.
    pub async fn history(
        &self,
        group: &str,
        topic: Option<&str>,
        below_or_at: u64,
        count: u32,
    ) -> Result<HistoryPage, RestError> {
        let request = HistoryRequest {
            group_id: group,
            req_msg_number: count.clamp(1, MAX_PAGE),
            req_msg_seq: Some(below_or_at),
            topic_id: topic,
            with_recalled_msg: 1,
        };
        self.call(HISTORY, &request).await
    }

    /// `Type` and `NextMsgSeq` of up to 50 groups.
    pub async fn group_info(&self, groups: &[&str]) -> Result<Vec<GroupInfo>, RestError> {
        let request = InfoRequest {
            group_id_list: &groups[..groups.len().min(MAX_GROUPS_PER_INFO)],
            response_filter: InfoFilter {
                group_base_info_filter: ["Type", "NextMsgSeq"],
            },
        };
        let answer: InfoAnswer = self.call(GROUP_INFO, &request).await?;
        Ok(answer.group_info)
    }
}
