//! The Kafka sink's gauges, fed from librdkafka's statistics.

use prometheus::{Gauge, IntGauge, Registry};

/// librdkafka's statistics that operators watch, updated by the Kafka sink every few seconds.
#[derive(Clone)]
pub struct KafkaGauges {
    queue_messages: IntGauge,
    queue_bytes: IntGauge,
    broker_rtt: Gauge,
    broker_inflight: IntGauge,
}

impl KafkaGauges {
    /// Registers the gauges on `registry`: the bridge's, or the auditor's own.
    pub fn new(registry: &Registry) -> prometheus::Result<KafkaGauges> {
        let gauges = KafkaGauges {
            queue_messages: IntGauge::new(
                "timbridge_kafka_producer_queue_messages",
                "Messages in the Kafka producer's queue (waiting or in flight).",
            )?,
            queue_bytes: IntGauge::new(
                "timbridge_kafka_producer_queue_bytes",
                "Bytes of the messages in the Kafka producer's queue.",
            )?,
            broker_rtt: Gauge::new(
                "timbridge_kafka_broker_rtt_seconds",
                "Average broker round-trip time of the slowest broker over the last statistics window.",
            )?,
            broker_inflight: IntGauge::new(
                "timbridge_kafka_broker_inflight_messages",
                "Messages in produce requests sent to or awaiting a response from the brokers.",
            )?,
        };
        registry.register(Box::new(gauges.queue_messages.clone()))?;
        registry.register(Box::new(gauges.queue_bytes.clone()))?;
        registry.register(Box::new(gauges.broker_rtt.clone()))?;
        registry.register(Box::new(gauges.broker_inflight.clone()))?;
        Ok(gauges)
    }

    pub fn update(&self, queue_messages: u64, queue_bytes: u64, rtt_us: i64, inflight: i64) {
        self.queue_messages
            .set(i64::try_from(queue_messages).unwrap_or(i64::MAX));
        self.queue_bytes
            .set(i64::try_from(queue_bytes).unwrap_or(i64::MAX));
        self.broker_rtt.set(rtt_us as f64 / 1e6);
        self.broker_inflight.set(inflight);
    }
}
