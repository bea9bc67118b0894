//! The `[kafka]` section: brokers, topics, the producer's batching, and whether
//! acknowledgements wait for Kafka. Unknown keys are refused.

use crate::config::{invalid, ConfigError};
use serde::Deserialize;

/// The Kafka sink; off while `brokers` is empty.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`; empty disables Kafka.
    pub brokers: String,
    pub telemetry_topic: String,
    pub dead_letter_topic: String,
    /// Fraud alerts: one record per flagged reading (docs/DELIVERY.md). `alerts_topic` is
    /// accepted as another name for this key.
    #[serde(alias = "alerts_topic")]
    pub fraud_topic: String,
    pub oracle_topic: String,
    /// Partitions of each topic the server creates.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Create missing topics at start; when false a missing topic stops the start.
    pub create_topics: bool,
    /// QoS 1/2 acknowledgements wait for Kafka (and the log); when false only for the log.
    pub ack_after_kafka: bool,
    /// Kafka counts as unreachable once the oldest record waiting for it is this old;
    /// acknowledgements then need the durable log only, and records wait there.
    pub unreachable_after_ms: u64,
    pub linger_ms: u64,
    pub batch_bytes_max: u64,
    /// How long the producer retries one record before reporting it failed (it is then
    /// sent again). 0, the default, retries without limit inside the producer, which keeps
    /// the idempotent producer's sequence intact through a broker outage (a timed-out
    /// record forces a producer epoch bump, which some brokers handle badly).
    pub message_timeout_ms: u64,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    pub compression: String,
    /// Extra librdkafka producer properties, passed through.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            telemetry_topic: "telemetry".to_string(),
            dead_letter_topic: "telemetry-dlq".to_string(),
            fraud_topic: "fraud-alerts".to_string(),
            oracle_topic: "oracle-reports".to_string(),
            partitions: 6,
            replication_factor: 1,
            create_topics: true,
            ack_after_kafka: true,
            unreachable_after_ms: 1_000,
            linger_ms: 2,
            batch_bytes_max: 1 << 20,
            message_timeout_ms: 0,
            compression: "lz4".to_string(),
            properties: std::collections::BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// Checks the section (when the sink is on); an error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let kafka = self;
        if !kafka.brokers.is_empty() {
            for (key, topic) in [
                ("kafka.telemetry_topic", &kafka.telemetry_topic),
                ("kafka.dead_letter_topic", &kafka.dead_letter_topic),
                ("kafka.fraud_topic", &kafka.fraud_topic),
                ("kafka.oracle_topic", &kafka.oracle_topic),
            ] {
                if topic.is_empty()
                    || topic.len() > 249
                    || !topic
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    return Err(invalid(
                        key,
                        format!("{topic:?} is not a Kafka topic name (1-249 of [A-Za-z0-9._-])"),
                    ));
                }
            }
            if !(1..=10_000).contains(&kafka.partitions) {
                return Err(invalid(
                    "kafka.partitions",
                    format!("{} is outside 1..=10000", kafka.partitions),
                ));
            }
            if !(1..=32).contains(&kafka.replication_factor) {
                return Err(invalid(
                    "kafka.replication_factor",
                    format!("{} is outside 1..=32", kafka.replication_factor),
                ));
            }
            if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&kafka.compression.as_str()) {
                return Err(invalid(
                    "kafka.compression",
                    format!(
                        "{:?} is not none, gzip, snappy, lz4 or zstd",
                        kafka.compression
                    ),
                ));
            }
            if kafka.unreachable_after_ms == 0 {
                return Err(invalid("kafka.unreachable_after_ms", "must be at least 1"));
            }
            if kafka.message_timeout_ms != 0 && kafka.message_timeout_ms < 1_000 {
                return Err(invalid(
                    "kafka.message_timeout_ms",
                    format!(
                        "{} is below 1000 (0 means no limit)",
                        kafka.message_timeout_ms
                    ),
                ));
            }
            for key in ["acks", "enable.idempotence", "bootstrap.servers"] {
                if kafka.properties.contains_key(key) {
                    return Err(invalid(
                    "kafka.properties",
                    format!("{key:?} is set by ingestd (acks=all, idempotence on) and may not be overridden"),
                ));
                }
            }
        }
        Ok(())
    }
}
