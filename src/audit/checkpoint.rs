//! The per-group state in a JetStream key-value bucket, one key per group (the group key,
//! base64url: KV keys allow few characters), written for the groups that changed since the
//! last checkpoint; the consumer's messages are acknowledged only after it (so a restart
//! replays what the checkpoint does not include, and never loses it).

use async_nats::jetstream::{self, kv, stream};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::ordered::line::Line;
use super::tracker::{GroupKey, GroupState};

#[derive(Deserialize)]
struct Entry {
    key: GroupKey,
    state: GroupState,
    /// The group's place in the ordered stream, when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ordered: Option<Line>,
}

/// What [`encode`] writes: an [`Entry`] by reference (the line's bodies in memory are not
/// copied to be left out).
#[derive(Serialize)]
struct EntryRef<'a> {
    key: &'a GroupKey,
    state: &'a GroupState,
    #[serde(skip_serializing_if = "Option::is_none")]
    ordered: Option<&'a Line>,
}

/// One group as checkpointed: its key, the tracker's state and its ordered-stream line.
pub type Saved = (GroupKey, GroupState, Option<Line>);

pub struct Checkpoint {
    store: kv::Store,
}

/// One checkpoint entry: the group, its state and its line, as JSON.
pub fn encode(key: &GroupKey, state: &GroupState, line: Option<&Line>) -> Vec<u8> {
    serde_json::to_vec(&EntryRef {
        key,
        state,
        ordered: line,
    })
    .expect("plain data")
}

/// An entry back; `None` (logged) when it cannot be read.
pub fn decode(value: &[u8]) -> Option<Saved> {
    match serde_json::from_slice::<Entry>(value) {
        Ok(entry) => Some((entry.key, entry.state, entry.ordered)),
        Err(err) => {
            tracing::warn!(error = %err, "audit checkpoint: unreadable entry skipped");
            None
        }
    }
}

pub fn kv_key(key: &GroupKey) -> String {
    let json = serde_json::to_vec(key).expect("plain data");
    URL_SAFE_NO_PAD.encode(json)
}

impl Checkpoint {
    /// The bucket `name`, created when missing (one value per key: only the latest counts).
    ///
    /// Its stream is made here with the settings of a key-value bucket (those async-nats's
    /// `create_key_value` uses) rather than by `create_key_value`, which first asks for the
    /// account's information and cannot parse a 2.9 server's answer.
    pub async fn open(js: &jetstream::Context, name: &str) -> Result<Checkpoint, String> {
        let failed = |e: &dyn std::fmt::Display| format!("key-value bucket {name}: {e}");
        js.get_or_create_stream(stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&e))?;
        let store = js.get_key_value(name).await.map_err(|e| failed(&e))?;
        Ok(Checkpoint { store })
    }

    /// Every checkpointed group.
    pub async fn load(&self) -> Result<Vec<Saved>, String> {
        let mut keys = self.store.keys().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            if let Some(value) = self.store.get(&key).await.map_err(|e| e.to_string())? {
                out.extend(decode(&value));
            }
        }
        Ok(out)
    }

    pub async fn put(&self, key: &GroupKey, entry: Vec<u8>) -> Result<(), String> {
        self.store
            .put(kv_key(key), entry.into())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub async fn forget(&self, key: &GroupKey) -> Result<(), String> {
        self.store
            .purge(kv_key(key))
            .await
            .map_err(|e| e.to_string())
    }
}

/// Where the checkpoint lives: a JetStream key-value bucket, or a Kafka topic.
// One per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Store {
    Kv(Checkpoint),
    Topic(super::kafka::TopicCheckpoint),
}

impl Store {
    pub async fn load(&self) -> Result<Vec<Saved>, String> {
        match self {
            Store::Kv(kv) => kv.load().await,
            Store::Topic(topic) => topic.load().await,
        }
    }

    /// Writes one group's entry ([`encode`]d).
    pub async fn put(&self, key: &GroupKey, entry: Vec<u8>) -> Result<(), String> {
        match self {
            Store::Kv(kv) => kv.put(key, entry).await,
            Store::Topic(topic) => topic.put(key, entry).await,
        }
    }

    pub async fn forget(&self, key: &GroupKey) -> Result<(), String> {
        match self {
            Store::Kv(kv) => kv.forget(key).await,
            Store::Topic(topic) => topic.forget(key).await,
        }
    }
}
