//! A delivery as a Kafka record: topic by kind, key = device id, value = the metadata
//! object with `envelope` (hex of the signed envelope) spliced in, and the headers
//! consumers deduplicate by.

use super::KafkaConfig;
use crate::egress::sink::Decoded;
use crate::egress::Delivery;
use crate::log::RecordKind;
use rdkafka::message::{Header, OwnedHeaders};

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
    let seq_text = seq.map(|s| s.to_string());
    let shard_text = delivery.shard.to_string();
    let offset_text = delivery.offset.to_string();
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: "device",
            value: Some(device.as_str()),
        })
        .insert(Header {
            key: "node",
            value: Some(node.as_str()),
        })
        .insert(Header {
            key: "shard",
            value: Some(shard_text.as_str()),
        })
        .insert(Header {
            key: "log_offset",
            value: Some(offset_text.as_str()),
        });
    if let Some(seq) = &seq_text {
        headers = headers.insert(Header {
            key: "seq",
            value: Some(seq.as_str()),
        });
    }
    Some(Message {
        topic,
        key: device.as_str(),
        value,
        headers,
        received_ms,
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
}
