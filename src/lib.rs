//! timbridge: Tencent Cloud IM callbacks in; NATS JetStream, Kafka or stdout out; and a 200 only
//! once the broker has the message.
//!
//! One callback, in the order the data flows (each file visited once):
//!
//! ```text
//!  Tencent IM ──POST /callback?SdkAppid=..&CallbackCommand=..──▶ http::serve (one task per connection,
//!                                                                 guarded::GuardedIo: head deadline)
//!  ingest::Handler::handle
//!    1. path, method                                              → 404 / 405
//!    2. admission: a request slot (--max-inflight)                → 503
//!    3. tencent::callback::VerifiedQuery::verify: SdkAppid, Sign  → 403 / 401 / 400
//!    4. admission: broker acks not too slow                       → 503
//!    5. body read: memory budget, size, time                      → 503 / 413 / 408
//!    6. VerifiedQuery::accept: JSON validation → Callback         → 400
//!    7. sink::RecordBuilder::build: Callback → Record (destination, key, partition, headers)
//!    8. deliver::Deliver::deliver(&Record), one publish deadline  → 503 / 500
//!         sink::Sink → sink::{stdout, nats, kafka}: the broker's ack
//!    9. ingest::report: the log line and the counters; 200 {"ActionStatus":"OK",...}
//! ```
//!
//! Layers, lowest first. A module imports only from its own layer and the ones above it in this
//! list, and no files of two modules import each other (`layers.rs` checks both on the source):
//!
//! ```text layers
//! core      the record and its header names, the delivery seam, ConfigError, secrets, metric helpers
//! tencent   Tencent's callback protocol (query, signature, body, reply) and its REST API
//! wire      the apps served, destination templates, the partitioner, the record builder
//! sink      stdout, NATS JetStream, Kafka: where records go
//! spool     spooled mode: the fsynced log in front of a sink and its forwarder
//! before    before-callbacks: answered at once, or relayed to the moderation service
//! ingest    the handler: admission, verification, the after path, rejections, the report
//! delivery  direct (the sink) or spooled (the spool in front of it)
//! http      the callback listener, the slow-loris guard, the admin listener
//! audit     `timbridge audit`: MsgSeq gaps, backfills, the ordered stream
//! app       flags, the configuration file, the composition root, shutdown
//! ```
//!
//! Module map:
//! - [`cli`] (flags, each with a `TIMBRIDGE_*` env fallback) → [`config`] (plain data; the
//!   apps from the flags or from `--config FILE`).
//! - [`bridge`]: the composition root; [`shutdown`]: signals and the ordered stop.
//! - [`http`]: the callback listener, the slow-loris guard, the admin listener.
//! - [`ingest`]: the handler, admission control, every rejection with its status and code.
//! - [`tencent`]: Tencent's callback protocol (query, signature, body, reply), pure functions;
//!   the REST API (regions, UserSig, the rate-limited client, the group calls).
//! - [`audit`]: `timbridge audit`, the MsgSeq auditor that backfills gaps from Tencent's
//!   history through [`tencent::rest`].
//! - [`before`]: before-callbacks, answered OK at once and published in the background.
//! - [`deliver`]: the seam between the handler and where records go.
//! - [`sink`]: the wire record and partitioner, and the stdout, NATS JetStream and Kafka sinks.
//! - [`metrics`]: Prometheus metrics; [`secret`]: credentials that never print.
//!
//! `main.rs` only parses flags, sets up logging and runs a [`Bridge`] until a signal.

pub mod app;
pub mod audit;
pub mod before;
pub mod core;
pub mod delivery;
pub mod http;
pub mod ingest;
#[cfg(test)]
mod layers;
pub mod sink;
pub mod spool;
pub mod tencent;
pub mod wire;

pub use self::core::ConfigError;
pub use app::bridge::{Bridge, StartError};
pub use app::config::Config;
pub use delivery::Delivery;
pub use sink::SinkConfig;
