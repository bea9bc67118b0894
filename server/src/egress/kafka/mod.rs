//! The Kafka sink: an idempotent rdkafka producer with `acks=all`.
//!
//! - Validated readings go to `kafka.telemetry_topic`, dead letters to
//!   `kafka.dead_letter_topic`, keyed by device id, so one device's records stay in one
//!   partition and in order. The value is the record's metadata as a JSON object plus
//!   `envelope`: the device's signed envelope in hex, so a consumer can verify the
//!   signature itself. Headers `device`, `seq` (when known), `node`, `shard` and
//!   `log_offset` let consumers deduplicate by (device, seq) without parsing the value.
//!   A scored reading's value carries its verdict (`fraud`: score, detectors, flagged,
//!   quarantined) as the record holds it.
//! - A flagged reading (`fraud.flagged`) also makes one alert record on
//!   `kafka.fraud_topic`, keyed by device with the same headers (value:
//!   [`encoding::AlertValue`], docs/DELIVERY.md). The delivery is confirmed only once Kafka
//!   acknowledged both its record and its alert; a part acknowledged is not sent again, so
//!   an alert is never lost and repeats only as the readings do.
//! - Delivery is confirmed per record; the sink reports a shard's progress only up to
//!   its first unconfirmed record, so the acknowledgements the shards gate on Kafka never
//!   run ahead of it.
//! - `message.timeout.ms` bounds one attempt chain inside librdkafka; a record that fails
//!   with a retriable error is sent again by this sink, a record Kafka refuses for good
//!   (too large, invalid) is reported as refused (the shard writes a dead letter), and a
//!   fatal producer error (idempotence state lost) replaces the producer and sends every
//!   unconfirmed record again, in order. Consumers deduplicate by (device, seq).
//!
//! - [`config`]: the `[kafka]` section.
//! - [`encoding`]: a delivery as a Kafka record (topic, key, value, headers).
//! - [`service`]: the producer's settings, the topics, which errors are permanent.
//! - [`sink`]: the loop (one producer record per delivery, two for a flagged reading,
//!   answers through the shared driver's tracker).

pub mod config;
pub mod encoding;
mod service;
mod sink;

pub use config::KafkaConfig;
pub use encoding::value_bytes;
pub use service::{client_config, prepare};
pub use sink::run;

/// The reason code of a record Kafka refused for good.
pub const REFUSED_REASON: &str = "kafka_refused";
