//! The integration tests, one module per subject, in one binary (librdkafka is linked once).
//! Real brokers (nats-server, tansu) on ephemeral loopback ports, killed on drop; the bridge
//! in-process on port 0 or as the release binary; MockCluster only for Kafka fault injection;
//! the scripted delivery for the handler's status mapping.

mod common;

mod apps;
mod audit;
mod binary;
mod forward;
mod handler;
mod kafka_faults;
mod kafka_sink;
mod nats_sink;
mod overload;
mod rejections;
mod slow_clients;
mod spool;
mod spool_faults;
mod tls;
mod trust;
