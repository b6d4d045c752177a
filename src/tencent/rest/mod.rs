//! Tencent's server-side REST API, which the auditor calls on an app's behalf: where each
//! app's calls go ([`Region`]), the admin's UserSig ([`usersig`]), the calling convention with
//! its rate limit and retries ([`client`]), the group calls ([`group`]) and the callback
//! egress addresses ([`egress`]), which the bridge's allow-list can learn.

pub mod client;
pub mod egress;
pub mod group;
pub mod usersig;

use serde::Deserialize;

use crate::core::secret::Secret;

pub use client::{Clock, RestClient, RestConfig, RestError, SystemClock};

/// Where an app lives, which decides the domain of its REST calls (Tencent's "REST API
/// Overview" lists one domain per data centre).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Region {
    China,
    Singapore,
    Seoul,
    Tokyo,
    Frankfurt,
    Mumbai,
    SiliconValley,
    Jakarta,
}

impl Region {
    /// Every region, in the order of Tencent's table.
    pub const ALL: [Region; 8] = [
        Region::China,
        Region::Singapore,
        Region::Seoul,
        Region::Tokyo,
        Region::Frankfurt,
        Region::Mumbai,
        Region::SiliconValley,
        Region::Jakarta,
    ];

    /// The domain of the region's REST endpoint.
    pub fn domain(self) -> &'static str {
        match self {
            Region::China => "console.tim.qq.com",
            Region::Singapore => "adminapisgp.im.qcloud.com",
            Region::Seoul => "adminapikr.im.qcloud.com",
            Region::Tokyo => "adminapijpn.im.qcloud.com",
            Region::Frankfurt => "adminapiger.im.qcloud.com",
            Region::Mumbai => "adminapiind.im.qcloud.com",
            Region::SiliconValley => "adminapiusa.im.qcloud.com",
            Region::Jakarta => "adminapiidn.im.qcloud.com",
        }
    }
}

/// What a call to Tencent's REST API on behalf of an app needs: where the app lives, an admin
/// account, and the app's secret key (which signs the admin's UserSig).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestCredentials {
    pub region: Region,
    pub identifier: String,
    pub secret_key: Secret,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The domains of docs/protocol.md's region table, in its order.
    #[test]
    fn domains_match_the_protocol_notes() {
        let notes = include_str!("../../../docs/protocol.md");
        let table: Vec<&str> = notes
            .lines()
            .skip_while(|l| !l.starts_with("| region | domain |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| l.split('`').nth(1).expect("a domain in backticks"))
            .collect();
        let ours: Vec<&str> = Region::ALL.iter().map(|r| r.domain()).collect();
        assert_eq!(table, ours);
    }
}
