//! The published stream, read back, whichever broker holds it: a JetStream durable pull
//! consumer (each message acknowledged once the checkpoint includes it) or a Kafka consumer
//! group (offsets committed then).

use std::collections::BTreeMap;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::Message;
use futures_util::StreamExt;

use super::consume::{self, Observation};
use super::kafka::KafkaFeed;

// One per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Feed {
    Nats {
        /// One consumer's messages, or (sharded) those of one consumer per subject.
        messages: futures_util::stream::SelectAll<pull::Stream>,
        /// Consumed and not yet acknowledged, by stream sequence: a message redelivered while
        /// a checkpoint write keeps failing replaces its earlier copy instead of piling up.
        unacked: BTreeMap<u64, Message>,
    },
    Kafka {
        feed: KafkaFeed,
        consumed: usize,
    },
}

impl Feed {
    /// The next record: `Some(Ok(Some(..)))` a group message, `Some(Ok(None))` another record,
    /// `Some(Err(..))` a consumer error (go on), `None` the stream ended.
    pub async fn next(&mut self) -> Option<Result<Option<Observation>, String>> {
        match self {
            Feed::Nats { messages, unacked } => match messages.next().await? {
                Ok(message) => {
                    let seen = consume::observe(&message);
                    let seq = message.info().map_or(u64::MAX, |info| info.stream_sequence);
                    unacked.insert(seq, message);
                    Some(Ok(seen))
                }
                Err(err) => Some(Err(err.to_string())),
            },
            Feed::Kafka { feed, consumed } => {
                let next = feed.next().await;
                if next.is_ok() {
                    *consumed += 1;
                }
                Some(next)
            }
        }
    }

    /// Records consumed since the last commit.
    pub fn pending(&self) -> usize {
        match self {
            Feed::Nats { unacked, .. } => unacked.len(),
            Feed::Kafka { consumed, .. } => *consumed,
        }
    }

    /// Acknowledges (commits) everything consumed so far: call only once it is checkpointed.
    pub async fn commit(&mut self) {
        match self {
            Feed::Nats { unacked, .. } => {
                for (_, message) in std::mem::take(unacked) {
                    let _ = message.ack().await;
                }
            }
            Feed::Kafka { feed, consumed } => {
                if *consumed > 0 {
                    feed.commit();
                    *consumed = 0;
                }
            }
        }
    }
}
