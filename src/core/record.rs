//! The wire record: what a consumer receives, and the header names every sink uses. Built once,
//! by [`crate::wire`], from a validated callback; every sink publishes exactly this (subject or
//! topic, key, headers, body), so NATS, Kafka and stdout agree, and the spool stores it as it is.

use bytes::Bytes;

/// Header names, shared by every sink.
pub mod header {
    pub const SDKAPPID: &str = "tim-sdkappid";
    pub const COMMAND: &str = "tim-callback-command";
    pub const GROUP_ID: &str = "tim-group-id";
    pub const MSG_SEQ: &str = "tim-msg-seq";
    pub const TOPIC_ID: &str = "tim-topic-id";
    pub const MSG_ID: &str = "tim-msg-id";
    pub const CLIENT_IP: &str = "tim-client-ip";
    pub const OPT_PLATFORM: &str = "tim-opt-platform";
    pub const RECEIVED_AT: &str = "tim-received-at";
    /// The recalled MsgSeqs of a group recall, comma-separated.
    pub const MSG_SEQ_LIST: &str = "tim-msg-seq-list";
    /// The callback's stable identity, for consumers that drop duplicates; NATS also sends it
    /// as `Nats-Msg-Id`, which JetStream deduplicates on.
    pub const DEDUP_ID: &str = "tim-dedup-id";
    /// Where a record came from when it is not a live callback (`backfill`, from the auditor).
    pub const SOURCE: &str = "tim-source";
    /// `--before-callbacks forward`: what the moderation service decided (allow, deny, rewrite,
    /// timeout, error).
    pub const BEFORE_VERDICT: &str = "tim-before-verdict";

    /// Every header name, for turning a stored name back into its constant (the spool).
    pub const ALL: [&str; 13] = [
        SDKAPPID,
        COMMAND,
        GROUP_ID,
        MSG_SEQ,
        TOPIC_ID,
        MSG_ID,
        CLIENT_IP,
        OPT_PLATFORM,
        RECEIVED_AT,
        MSG_SEQ_LIST,
        DEDUP_ID,
        BEFORE_VERDICT,
        SOURCE,
    ];

    /// The constant spelled `name`, if it is one of ours.
    pub fn lookup(name: &str) -> Option<&'static str> {
        ALL.into_iter().find(|known| *known == name)
    }
}

/// One message as every sink publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The NATS subject or Kafka topic (stdout prints it).
    pub destination: String,
    /// Everything with one key keeps its order: the GroupId, else the sender, else the app.
    pub key: String,
    /// `(murmur2(key) & 0x7fffffff) % --partitions`: the `{partition}` of subjects, and Kafka's
    /// own choice when the topic has `--partitions` partitions.
    pub partition: u32,
    /// Metadata headers in a fixed order, the dedup id last; absent values are left out.
    pub headers: Vec<(&'static str, String)>,
    /// The request body, byte for byte.
    pub body: Bytes,
}

impl Record {
    /// The value of the `tim-dedup-id` header, when the callback has a stable identity.
    pub fn dedup_id(&self) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(name, _)| *name == header::DEDUP_ID)
            .map(|(_, value)| value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::header;

    /// The README's headers table names exactly the headers a record can carry.
    #[test]
    fn the_readme_headers_table_is_the_header_list() {
        let section = crate::core::readme::section("## Published messages");
        let table = section
            .split("Headers (absent values are left out):")
            .nth(1)
            .expect("the headers table");
        let documented: BTreeSet<&str> = table
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .filter_map(|line| line.split('|').nth(1))
            .flat_map(|cell| cell.split('`').skip(1).step_by(2))
            .filter(|name| name.starts_with("tim-"))
            .collect();
        let code: BTreeSet<&str> = header::ALL.into_iter().collect();
        assert_eq!(documented, code, "README (left) vs header::ALL (right)");
    }
}
