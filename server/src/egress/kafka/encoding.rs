//! A delivery as Kafka records: topic by kind, key = device id, value = the metadata
//! object with `envelope` (hex of the signed envelope) spliced in, and the headers
//! consumers deduplicate by. A flagged reading also makes an alert record
//! ([`encode_alert`]) for `kafka.fraud_topic`.
//!
//! The reading's value carries its fraud verdict as the record holds it: the metadata
//! object is copied as written by the shard, `fraud` included (absent when the reading
//! was not scored).

use super::KafkaConfig;
use crate::egress::sink::Decoded;
use crate::egress::Delivery;
use crate::log::RecordKind;
use rdkafka::message::{Header, OwnedHeaders};
use serde::Serialize;
use std::collections::BTreeMap;

/// One record, ready for the producer.
pub struct Message<'a> {
    pub topic: &'a str,
    /// The device id: one device, one partition, one order.
    pub key: &'a str,
    pub value: Vec<u8>,
    pub headers: OwnedHeaders,
    /// When the server received the message, for the receipt -> visible latency.
    pub received_ms: u64,
}

/// The record for `delivery`, or `None` when there is nothing to send (benchmark mode's
/// unverified payloads and records this version cannot read stay in the log only).
#[must_use]
pub fn encode<'a>(config: &'a KafkaConfig, delivery: &'a Delivery) -> Option<Message<'a>> {
    let topic = match delivery.kind {
        RecordKind::Reading => config.telemetry_topic.as_str(),
        RecordKind::DeadLetter => config.dead_letter_topic.as_str(),
        // An accepted credential's nonce: local replay state, not telemetry.
        RecordKind::Credential => return None,
    };
    let (device, seq, received_ms, node) = match delivery.decoded() {
        Decoded::Reading(meta) => (&meta.device, Some(meta.seq), meta.received_ms, &meta.node),
        Decoded::DeadLetter(meta) => (&meta.device, meta.seq, meta.received_ms, &meta.node),
        Decoded::Other => return None,
    };
    let (meta, raw) = crate::record::split(&delivery.payload)?;
    let value = value_bytes(meta, raw)?;
    Some(Message {
        topic,
        key: device.as_str(),
        value,
        headers: headers(device, seq, node, delivery),
        received_ms,
    })
}

/// The headers consumers deduplicate by (`device`, `seq`) and find the record in the
/// node's log by (`node`, `shard`, `log_offset`).
fn headers(device: &str, seq: Option<u64>, node: &str, delivery: &Delivery) -> OwnedHeaders {
    let shard_text = delivery.shard.to_string();
    let offset_text = delivery.offset.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "device",
            value: Some(device),
        })
        .insert(Header {
            key: "node",
            value: Some(node),
        })
        .insert(Header {
            key: "shard",
            value: Some(shard_text.as_str()),
        })
        .insert(Header {
            key: "log_offset",
            value: Some(offset_text.as_str()),
        });
    match seq {
        Some(seq) => headers.insert(Header {
            key: "seq",
            value: Some(seq.to_string().as_str()),
        }),
        None => headers,
    }
}

/// The value of an alert record (docs/DELIVERY.md, "Fraud alerts"): what an analyst needs
/// without the reading's record, and where to find that record.
#[derive(Debug, Serialize)]
pub struct AlertValue<'a> {
    pub device: &'a str,
    pub seq: u64,
    /// Device time, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Server receive time, ms since the Unix epoch.
    pub received_ms: u64,
    pub score: f32,
    /// The detectors that fired, in detector order.
    pub detectors: &'a [String],
    pub quarantined: bool,
    pub readings: &'a BTreeMap<String, f32>,
    pub location: &'a str,
    pub region: &'a str,
    pub project: &'a str,
    pub node: &'a str,
    pub shard: usize,
    pub log_offset: u64,
}

/// The alert record of a flagged reading (`fraud.flagged`), for `kafka.fraud_topic`,
/// keyed by device with the reading's headers; `None` for any other delivery.
#[must_use]
pub fn encode_alert<'a>(config: &'a KafkaConfig, delivery: &'a Delivery) -> Option<Message<'a>> {
    let Decoded::Reading(meta) = delivery.decoded() else {
        return None;
    };
    let fraud = meta.fraud.as_ref().filter(|fraud| fraud.flagged)?;
    let alert = AlertValue {
        device: &meta.device,
        seq: meta.seq,
        ts_ms: meta.ts_ms,
        received_ms: meta.received_ms,
        score: fraud.score,
        detectors: &fraud.detectors,
        quarantined: fraud.quarantined,
        readings: &meta.readings,
        location: &meta.location,
        region: &meta.region,
        project: &meta.project,
        node: &meta.node,
        shard: delivery.shard,
        log_offset: delivery.offset,
    };
    // Plain strings and numbers: serialising into a Vec cannot fail.
    let value = serde_json::to_vec(&alert).ok()?;
    Some(Message {
        topic: config.fraud_topic.as_str(),
        key: meta.device.as_str(),
        value,
        headers: headers(&meta.device, Some(meta.seq), &meta.node, delivery),
        received_ms: meta.received_ms,
    })
}

/// The value Kafka consumers read: the record's metadata object with `envelope` (the
/// signed envelope in hex) added, spliced without re-serialising the metadata.
#[must_use]
pub fn value_bytes(meta: &[u8], raw: &[u8]) -> Option<Vec<u8>> {
    let body = meta.strip_suffix(b"}")?;
    if !body.starts_with(b"{") {
        return None;
    }
    let mut value = Vec::with_capacity(meta.len() + 16 + 2 * raw.len());
    value.extend_from_slice(body);
    if body.len() > 1 {
        value.push(b',');
    }
    value.extend_from_slice(b"\"envelope\":\"");
    ingestd_codec::envelope::hex::encode_into(raw, &mut value);
    value.extend_from_slice(b"\"}");
    Some(value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::record::{FraudMeta, ReadingMeta};

    #[test]
    fn the_value_carries_the_metadata_and_the_envelope() {
        let meta = br#"{"device":"d-1","seq":7,"readings":{"co2_ppm":415.5}}"#;
        let value: serde_json::Value =
            serde_json::from_slice(&value_bytes(meta, &[0xab, 0x01]).unwrap()).unwrap();
        assert_eq!(value["device"], "d-1");
        assert_eq!(value["seq"], 7);
        assert_eq!(value["readings"]["co2_ppm"], 415.5);
        assert_eq!(value["envelope"], "ab01");
        let empty: serde_json::Value =
            serde_json::from_slice(&value_bytes(b"{}", &[1]).unwrap()).unwrap();
        assert_eq!(empty["envelope"], "01");
        assert!(value_bytes(b"[1]", &[1]).is_none(), "not an object");
    }

    fn reading(fraud: Option<FraudMeta>) -> Delivery {
        let meta = ReadingMeta {
            device: "co2-7".to_string(),
            seq: 42,
            ts_ms: 1_764_201_600_000,
            readings: BTreeMap::from([
                ("co2_ppm".to_string(), 9_999.5),
                ("temperature_c".to_string(), 21.25),
            ]),
            topic: "devices/co2-7/telemetry".to_string(),
            received_ms: 1_764_201_600_040,
            node: "node-a".to_string(),
            shard: 3,
            qos: 1,
            region: "eu-west".to_string(),
            project: "forest-7".to_string(),
            location: "site-12".to_string(),
            sensor_type: "ndir".to_string(),
            peer: "10.0.0.9:5000".to_string(),
            connected_ms: 1_764_201_000_000,
            fraud,
        };
        let mut payload = Vec::new();
        crate::record::encode(&meta, &[0xab, 0xcd], &mut payload);
        Delivery::new(3, 17, RecordKind::Reading, payload)
    }

    fn header(message: &Message<'_>, key: &str) -> Option<String> {
        use rdkafka::message::Headers as _;
        message
            .headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn flagged(quarantined: bool) -> FraudMeta {
        FraudMeta {
            score: 0.93,
            detectors: vec!["bounds".to_string(), "peers".to_string()],
            flagged: true,
            quarantined,
        }
    }

    #[test]
    fn the_reading_value_carries_the_verdict_or_none_for_an_unscored_reading() {
        let config = KafkaConfig::default();
        let delivery = reading(Some(flagged(true)));
        let message = encode(&config, &delivery).unwrap();
        assert_eq!(message.topic, "telemetry");
        let value: serde_json::Value = serde_json::from_slice(&message.value).unwrap();
        assert_eq!(value["fraud"]["score"].as_f64().unwrap() as f32, 0.93);
        assert_eq!(
            value["fraud"]["detectors"],
            serde_json::json!(["bounds", "peers"])
        );
        assert_eq!(value["fraud"]["flagged"], true);
        assert_eq!(value["fraud"]["quarantined"], true);
        assert_eq!(value["envelope"], "abcd");

        let unscored = reading(None);
        let value: serde_json::Value =
            serde_json::from_slice(&encode(&config, &unscored).unwrap().value).unwrap();
        assert_eq!(value["seq"], 42);
        assert!(value.get("fraud").is_none(), "{value}");
        assert!(encode_alert(&config, &unscored).is_none());
    }

    #[test]
    fn a_flagged_reading_makes_one_alert_with_its_verdict_and_place() {
        let config = KafkaConfig {
            fraud_topic: "alerts-x".to_string(),
            ..KafkaConfig::default()
        };
        let delivery = reading(Some(flagged(false)));
        let alert = encode_alert(&config, &delivery).unwrap();
        assert_eq!(alert.topic, "alerts-x");
        assert_eq!(alert.key, "co2-7");
        assert_eq!(alert.received_ms, 1_764_201_600_040);
        assert_eq!(header(&alert, "device").as_deref(), Some("co2-7"));
        assert_eq!(header(&alert, "seq").as_deref(), Some("42"));
        assert_eq!(header(&alert, "shard").as_deref(), Some("3"));
        assert_eq!(header(&alert, "log_offset").as_deref(), Some("17"));
        assert_eq!(header(&alert, "node").as_deref(), Some("node-a"));
        let value: serde_json::Value = serde_json::from_slice(&alert.value).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "device": "co2-7",
                "seq": 42,
                "ts_ms": 1_764_201_600_000_u64,
                "received_ms": 1_764_201_600_040_u64,
                "score": 0.93,
                "detectors": ["bounds", "peers"],
                "quarantined": false,
                "readings": {"co2_ppm": 9_999.5, "temperature_c": 21.25},
                "location": "site-12",
                "region": "eu-west",
                "project": "forest-7",
                "node": "node-a",
                "shard": 3,
                "log_offset": 17,
            })
        );
        // Scored but under the alert threshold: no alert, whatever fired.
        let mut below = flagged(false);
        below.flagged = false;
        assert!(encode_alert(&config, &reading(Some(below))).is_none());
    }
}
