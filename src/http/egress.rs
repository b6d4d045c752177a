//! Tencent's callback egress addresses as the allow-list (`--allow-tencent-egress`): learnt
//! with an app's REST credentials from `ConfigSvc/GetIPList` at start-up (the bridge does not
//! start without them) and refreshed every `--egress-refresh`. A refresh that fails, or whose
//! answer holds no usable range, keeps the last good list: the list is never empty.

use std::time::Duration;

use ipnet::IpNet;

use super::metrics::ListenerMetrics;
use super::source::AllowList;
use crate::tencent::rest::{RestClient, RestConfig, RestCredentials};

/// `--allow-tencent-egress`: whose credentials ask, how, which lists, how often.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    pub sdkappid: u64,
    pub credentials: RestCredentials,
    pub rest: RestConfig,
    /// GetIPList's `nettype` values (5, 6).
    pub nettypes: Vec<u8>,
    pub every: Duration,
}

/// The ranges of every `nettype` list, together. Entries that are neither an address nor a
/// range are left out (logged); a result with no range at all is an error.
pub async fn fetch(client: &RestClient, nettypes: &[u8]) -> Result<Vec<IpNet>, String> {
    let mut nets = Vec::new();
    for nettype in nettypes {
        let entries = client
            .ip_list(*nettype)
            .await
            .map_err(|err| format!("GetIPList nettype {nettype}: {err}"))?;
        for entry in entries {
            match parse_entry(&entry) {
                Some(net) => nets.push(net),
                None => tracing::warn!(
                    nettype,
                    entry,
                    "GetIPList entry is not an address or range; left out"
                ),
            }
        }
    }
    nets.sort();
    nets.dedup();
    if nets.is_empty() {
        return Err(format!(
            "GetIPList answered no range for nettype {nettypes:?}"
        ));
    }
    Ok(nets)
}

fn parse_entry(entry: &str) -> Option<IpNet> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .ok()
        .or_else(|| entry.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// Refreshes `list` every `every`, for ever (the bridge aborts it at shutdown).
pub async fn refresh(
    list: AllowList,
    client: RestClient,
    nettypes: Vec<u8>,
    every: Duration,
    metrics: ListenerMetrics,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match fetch(&client, &nettypes).await {
            Ok(nets) => {
                let ranges = nets.len();
                list.learn(nets);
                metrics.egress_refreshed(true, list.len());
                tracing::debug!(ranges, "Tencent's callback egress list refreshed");
            }
            Err(err) => {
                metrics.egress_refreshed(false, list.len());
                tracing::warn!(error = %err, "Tencent's callback egress list not refreshed; keeping the last one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_addresses_or_ranges() {
        assert_eq!(
            parse_entry("127.0.0.2"),
            Some("127.0.0.2/32".parse().unwrap())
        );
        assert_eq!(
            parse_entry(" 183.192.202.0/25"),
            Some("183.192.202.0/25".parse().unwrap())
        );
        assert_eq!(
            parse_entry("2001:db8::1"),
            Some("2001:db8::1/128".parse().unwrap())
        );
        assert_eq!(parse_entry("example.com"), None);
    }
}
