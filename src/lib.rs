//! timbridge: Tencent Cloud IM callbacks in; NATS JetStream, Kafka or stdout out. A 200 means
//! the callback is stored: in direct mode the broker acknowledged it; in spooled mode it is
//! fsynced in the spool, which forwards it to the broker afterwards.
//!
//! One signed `Group.CallbackAfterSendMsg` in direct mode, in the order the data flows
//! (thirteen files of `src/`, all that runs for it: `bench/walk.py` counts them):
//!
//! ```text
//!  Tencent IM ──POST /callback?SdkAppid=..&CallbackCommand=..──▶ http::serve (one task per
//!                                          connection; http::guarded: the head's deadline)
//!  ingest::Handler::handle → process
//!    1. path, method, HTTP framing                                       → 404 / 405 / 400
//!    2. tencent::callback::query: VerifiedQuery::verify: SdkAppid, Sign, the command looked up
//!       once (tencent::callback::commands)                               → 403 / 401 / 400
//!       a before-callback branches here, once, to ingest::before (answered by its policy)
//!    3. ingest::admission: a request slot, acks not too slow             → 503
//!    4. the body: memory budget, size, time                              → 503 / 413 / 408
//!    5. VerifiedQuery::accept (tencent::callback::body): validation → Callback   → 400
//!       ingest::replay: the same signed request delivered already → 200, not again
//!    6. wire::RecordBuilder::build: Callback → Record (key, headers; wire::destination: the
//!       subject or topic and the partition)
//!    7. Delivery::deliver_owned, one publish deadline                     → 503 / 500
//!         Direct: the broker's client, sink::{stdout, nats, kafka}: the broker's ack
//!         Spooled: spool::Spool: the batch's fdatasync (the forwarder publishes later)
//!    8. ingest::report: the log line and the counters; 200 {"ActionStatus":"OK",...}
//! ```
//!
//! Layers, lowest first. A module imports only from its own layer and the ones above it in this
//! list, and no files of two modules import each other (`layers.rs` checks both on the source,
//! and that this list names every top-level module):
//!
//! ```text layers
//! core      the record and its header names, the delivery seam, ConfigError, secrets, metric helpers
//! tencent   Tencent's callback protocol (query, signature, body, reply) and its REST API
//! wire      the apps served, destination templates, the partitioner, the record builder
//! sink      stdout, NATS JetStream, Kafka: where records go
//! spool     spooled mode: the fsynced log in front of a sink and its forwarder
//! before    before-callbacks: the policies, the background publisher, the moderation relay
//! ingest    the handler: admission, verification, the after and before paths, rejections, the report
//! delivery  direct (the sink) or spooled (the spool in front of it)
//! http      the callback listener (TLS, PROXY headers, who the client is), the slow-loris guard, the admin listener
//! audit     `timbridge audit`: MsgSeq gaps, backfills, the ordered stream
//! app       flags, the configuration file, the registry, the composition root, shutdown
//! ```
//!
//! Each component owns its settings, errors and metrics: [`ingest::Settings`],
//! [`tencent::callback::CallbackError`], [`ingest::report::Metrics`] and so on;
//! [`app::config::Config`] only gathers them, and [`app::bridge`] builds each component from its
//! share. `main.rs` parses the flags, sets up logging and runs a [`Bridge`] until a signal.

// One production function needs `unsafe` (spool::forward_runtime, a setpriority call); it says
// so with an allow, as do two tests' system calls. Anything else fails to compile.
#![deny(unsafe_code)]

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
