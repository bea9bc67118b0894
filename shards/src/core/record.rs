//! What the durable log's records hold: an enriched reading, a dead letter or an accepted
//! credential. Built by the shard core; read by the log tools and the sinks.
//!
//! ```text
//! u8  version = 1
//! u32 LE  meta_len
//! meta    JSON object (fields below), meta_len bytes
//! raw     the PUBLISH payload exactly as received (the signed envelope)
//! ```
//!
//! The raw envelope is kept so anyone downstream can verify the device's signature again:
//! a record proves itself, which matters when readings become carbon credits. The metadata
//! is JSON so `ingestd log export` and ad-hoc tools read it without this crate.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A validated reading with the server's enrichment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingMeta {
    pub device: String,
    pub seq: u64,
    /// Device timestamp, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Reading kind name (or `kind_<code>`) to value.
    pub readings: BTreeMap<String, f32>,
    pub topic: String,
    /// Server receive time, ms since the Unix epoch.
    pub received_ms: u64,
    pub node: String,
    pub shard: usize,
    pub qos: u8,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sensor_type: String,
    /// The connection's remote address (`ip:port`) and the server time it connected, ms
    /// since the Unix epoch: together they name the connection, so fraud scoring sees one
    /// identity used from two places when the log is replayed (`fraud backtest`, rebuild).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub connected_ms: u64,
    /// The fraud verdict (docs/FRAUD.md); absent when scoring is off and in records written
    /// before scoring existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraud: Option<FraudMeta>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// The fraud verdict of one reading, as it travels to every sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FraudMeta {
    /// The combined score in [0, 1] (docs/FRAUD.md gives the formula).
    pub score: f32,
    /// The stable names of the detectors that fired, in detector order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detectors: Vec<String>,
    /// The score reached `fraud.alert_score_min`: an alert was raised.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flagged: bool,
    /// The score reached `fraud.quarantine_score_min`: stored and delivered, but the
    /// oracle leaves it out of aggregates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quarantined: bool,
}

/// A payload stored without decoding (`validation.opaque_payloads`, benchmarks only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpaqueMeta {
    pub device: String,
    pub topic: String,
    pub received_ms: u64,
    pub node: String,
    pub shard: usize,
    pub qos: u8,
    /// Always true: marks the record as unverified.
    pub opaque: bool,
}

/// A refused message and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterMeta {
    /// Stable reason code (docs/PROTOCOL.md lists them).
    pub reason: String,
    /// Human-readable detail.
    pub detail: String,
    /// The authenticated device that sent it.
    pub device: String,
    pub topic: String,
    pub received_ms: u64,
    pub node: String,
    pub shard: usize,
    pub qos: u8,
    pub peer: String,
    /// Sequence number, when the envelope decoded far enough to have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// When the connection was accepted (wall ms; 0: unknown), with `peer` naming it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub connected_ms: u64,
}

/// An accepted CONNECT credential (`RecordKind::Credential`, no raw bytes): its nonce stays
/// refused until its timestamp leaves the freshness window, across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialMeta {
    pub device: String,
    /// The credential's 16-byte nonce, hex.
    pub nonce: String,
    /// The credential's own timestamp, ms since the Unix epoch.
    pub ts_ms: u64,
}

pub const RECORD_VERSION: u8 = 1;

/// Appends a record payload: version, metadata, raw bytes.
pub fn encode(meta: &impl Serialize, raw: &[u8], out: &mut Vec<u8>) {
    out.push(RECORD_VERSION);
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    // Serialising these plain structs into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, meta);
    let meta_len = (out.len() - len_at - 4) as u32;
    out[len_at..len_at + 4].copy_from_slice(&meta_len.to_le_bytes());
    out.extend_from_slice(raw);
}

/// Splits a record payload into its metadata JSON and raw bytes.
pub fn split(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&version, rest) = payload.split_first()?;
    if version != RECORD_VERSION {
        return None;
    }
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let meta = rest.get(4..4 + len)?;
    let raw = rest.get(4 + len..)?;
    Some((meta, raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let meta = DeadLetterMeta {
            reason: "bad_signature".into(),
            detail: "signature does not verify".into(),
            device: "co2-1".into(),
            topic: "devices/co2-1/telemetry".into(),
            received_ms: 5,
            node: "n".into(),
            shard: 1,
            qos: 1,
            peer: "127.0.0.1:5000".into(),
            seq: Some(9),
            connected_ms: 0,
        };
        let mut out = Vec::new();
        encode(&meta, b"\x01raw", &mut out);
        let (json, raw) = split(&out).unwrap();
        assert_eq!(raw, b"\x01raw");
        let back: DeadLetterMeta = serde_json::from_slice(json).unwrap();
        assert_eq!(back, meta);
        assert!(split(&out[..3]).is_none());
        assert!(split(b"\x02").is_none());
    }
}
