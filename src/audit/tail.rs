//! Tail gaps: for groups active within the window, Tencent's `NextMsgSeq - 1` against the
//! highest seq seen, 50 groups per call, through each app's rate-limited client.

use std::collections::HashMap;
use std::sync::Arc;

use crate::tencent::rest::group::MAX_GROUPS_PER_INFO;
use crate::tencent::rest::RestClient;

use super::tracker::GroupKey;

/// `active`: the tracker's groups active within the window, with their highest seq.
pub async fn check(
    active: Vec<(GroupKey, u64, String)>,
    clients: &HashMap<u64, Arc<RestClient>>,
) -> Vec<(GroupKey, u64)> {
    let mut out = Vec::new();
    for (sdkappid, client) in clients {
        // Topics share their community's seq space with other topics: not checked here.
        let groups: Vec<&GroupKey> = active
            .iter()
            .map(|(key, _, _)| key)
            .filter(|key| key.sdkappid == *sdkappid && key.topic.is_none())
            .collect();
        for chunk in groups.chunks(MAX_GROUPS_PER_INFO) {
            let ids: Vec<&str> = chunk.iter().map(|key| key.group.as_str()).collect();
            match client.group_info(&ids).await {
                Ok(infos) => {
                    for info in infos
                        .into_iter()
                        .filter(|i| i.error_code == 0 && i.next_msg_seq > 0)
                    {
                        if let Some(key) = chunk.iter().find(|k| k.group == info.group_id) {
                            out.push(((*key).clone(), info.next_msg_seq - 1));
                        }
                    }
                }
                Err(err) => tracing::warn!(sdkappid, error = %err, "audit: tail check failed"),
            }
        }
    }
    out
}
