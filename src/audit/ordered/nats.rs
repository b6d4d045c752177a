//! The ordered stream on JetStream: a stream of its own (created when missing, with the
//! duplicate window), each entry published with its `Nats-Msg-Id` and retried until the
//! PubAck comes. One entry per key in flight at a time: a later seq of a group is sent only
//! once the earlier one was stored, so no reconnect or outage can swap them; different keys go
//! side by side.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_nats::header::{HeaderMap, HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, message::PublishMessage, stream};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;

use super::entry::{Entry, Headers, Raw};
use crate::wire::partition;
use crate::wire::Template;

pub struct NatsOutput {
    js: jetstream::Context,
    subject: Template,
    partitions: u32,
    /// The main stream, where held records are read back from.
    main: String,
    /// Entries waiting behind their key's entry in flight.
    lanes: HashMap<String, VecDeque<Entry>>,
    in_flight: FuturesUnordered<BoxFuture<'static, Published>>,
    queued: usize,
}

/// An entry stored (after however many attempts): what the loop counts.
pub struct Published {
    pub entry: Entry,
    pub failures: u64,
}

/// How the ordered stream is made when missing.
pub struct StreamSettings {
    pub name: String,
    pub duplicate_window: Duration,
}

impl NatsOutput {
    /// Creates the ordered stream when missing (an existing one keeps its settings).
    pub async fn open(
        js: jetstream::Context,
        subject: Template,
        partitions: u32,
        main: &str,
        settings: &StreamSettings,
    ) -> Result<NatsOutput, String> {
        let config = stream::Config {
            name: settings.name.clone(),
            subjects: vec![subject.wildcard()],
            duplicate_window: settings.duplicate_window,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(stream = %settings.name, error = %err, "audit: waiting to create the ordered stream");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        Ok(NatsOutput {
            js,
            subject,
            partitions: partitions.max(1),
            main: main.to_string(),
            lanes: HashMap::new(),
            in_flight: FuturesUnordered::new(),
            queued: 0,
        })
    }

    /// Entries handed over and not yet stored.
    pub fn pending(&self) -> usize {
        self.queued
    }

    pub fn push(&mut self, entry: Entry) {
        self.queued += 1;
        match self.lanes.get_mut(&entry.key) {
            Some(lane) => lane.push_back(entry),
            None => {
                self.lanes.insert(entry.key.clone(), VecDeque::new());
                self.start(entry);
            }
        }
    }

    fn start(&mut self, entry: Entry) {
        let subject = self.subject.render(
            "",
            partition(entry.key.as_bytes(), self.partitions),
            entry.sdkappid,
        );
        self.in_flight
            .push(Box::pin(publish(self.js.clone(), subject, entry)));
    }

    /// The next entry stored; `None` when nothing is in flight.
    pub async fn next(&mut self) -> Option<Published> {
        let done = self.in_flight.next().await?;
        self.queued -= 1;
        let key = &done.entry.key;
        match self.lanes.get_mut(key).and_then(VecDeque::pop_front) {
            Some(next) => self.start(next),
            None => {
                self.lanes.remove(key);
            }
        }
        Some(done)
    }

    /// What reads held records back from the main stream (owned: it is used across awaits
    /// while this output is not).
    pub fn reader(&self) -> MainReader {
        MainReader {
            js: self.js.clone(),
            main: self.main.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MainReader {
    js: jetstream::Context,
    main: String,
}

impl MainReader {
    /// A held record's headers and body, read back from the main stream.
    pub async fn fetch(&self, stream_seq: u64) -> Result<Raw, String> {
        let stream = self
            .js
            .get_stream(&self.main)
            .await
            .map_err(|e| format!("stream {}: {e}", self.main))?;
        let message = stream
            .get_raw_message(stream_seq)
            .await
            .map_err(|e| format!("stream {} sequence {stream_seq}: {e}", self.main))?;
        Ok(Raw {
            headers: Headers::Nats(message.headers),
            body: message.payload,
            key: None,
        })
    }
}

/// Publishes until JetStream stores it (or drops it as a duplicate of an earlier attempt).
async fn publish(js: jetstream::Context, subject: String, mut entry: Entry) -> Published {
    // A consumed JetStream message's map goes out as it came, its Nats-Msg-Id replaced.
    let mut headers = match std::mem::replace(&mut entry.headers, Headers::Pairs(Vec::new())) {
        Headers::Nats(map) => map,
        Headers::Pairs(pairs) => {
            let mut map = HeaderMap::new();
            for (name, value) in &pairs {
                // Read from (or made like) a stored message: valid header values.
                if let Ok(value) = value.parse::<HeaderValue>() {
                    map.insert(name.as_str(), value);
                }
            }
            map
        }
    };
    if let Some(id) = &entry.msg_id {
        if let Ok(id) = id.parse::<HeaderValue>() {
            headers.insert(NATS_MESSAGE_ID, id);
        }
    }
    let mut failures = 0u64;
    let mut wait = Duration::from_millis(100);
    loop {
        let message = PublishMessage::build()
            .payload(entry.body.clone())
            .headers(headers.clone());
        let attempt = async {
            js.send_publish(subject.clone(), message)
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(_) => return Published { entry, failures },
            Err(err) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(subject, error = %err, failures, "audit: ordered publish failed; retrying");
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}
