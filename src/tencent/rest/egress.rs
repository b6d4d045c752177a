//! `ConfigSvc/GetIPList`: the addresses Tencent's callbacks come from (`nettype` 5: the
//! Chinese mainland and Hong Kong; 6: the rest of the world). The answer may hold single
//! addresses and CIDR ranges, and changes over time.

use serde::Deserialize;

use super::client::{RestClient, RestError};

pub const GET_IP_LIST: &str = "ConfigSvc/GetIPList";

/// The egress lists of webhooks.
pub const CALLBACK_NETTYPES: [u8; 2] = [5, 6];

#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(rename = "IPList", default)]
    ip_list: Vec<String>,
}

impl RestClient {
    /// The entries of one `nettype`'s list, as Tencent wrote them.
    pub async fn ip_list(&self, nettype: u8) -> Result<Vec<String>, RestError> {
        let answer: Answer = self
            .call_with(
                GET_IP_LIST,
                &format!("nettype={nettype}"),
                &serde_json::json!({}),
            )
            .await?;
        Ok(answer.ip_list)
    }
}
