//! The promises, checked from outside the core: from the records the simulated log holds
//! and the acknowledgements a device decodes. Nothing here reads the core's state.
//!
//! 1. Nothing is acknowledged (PUBACK/PUBREC, any reason) whose record is not durable
//!    (and, with the Kafka gate on and not bypassed, confirmed by the sink).
//! 2. No two durable readings of one (device, seq), across restarts.
//! 3. A replay (an attacker's, or a resend of an accepted sequence without DUP) never
//!    becomes a second reading: it is a dead letter `replayed`/`stale_sequence`.
//! 4. Every acknowledged QoS 1/2 message not stored as a reading has a durable dead letter,
//!    except a DUP redelivery of a stored reading (the same bytes); a DUP with another
//!    payload under a stored sequence (forged, altered) is dead-lettered.
//! 5. Everything acknowledged stays in the durable prefix through every restart.
//! 6. A forged signature never becomes a reading: every durable reading verifies.
//! 7. No false replay: a `replayed` dead letter names a sequence already stored as a
//!    reading (restarts restore the replay windows exactly, so nothing else counts).

use ed25519_dalek::VerifyingKey;
use ingestd_codec::envelope;
use ingestd_codec::mqtt::{Protocol, QoS, ReasonCode};
use ingestd_shards::core::record::{self, CredentialMeta, DeadLetterMeta, ReadingMeta};
use ingestd_shards::core::RecordKind;
use std::collections::{BTreeMap, BTreeSet};

/// Who built a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// The device itself (first sends, resends, duplicates).
    Device,
    /// An attacker injecting a payload with a bad signature into the device's session.
    Forged,
    /// An attacker replaying a payload of an already stored sequence (no DUP).
    Replay,
    /// The device publishing another device's envelope, or to another device's topic.
    Foreign,
}

/// One PUBLISH as sent, kept per connection and packet id until acknowledged.
#[derive(Debug, Clone)]
pub struct SentMsg {
    pub device: usize,
    pub seq: u64,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub dup: bool,
    pub sender: Sender,
    /// A durable reading of this (device, seq) existed when it was sent without DUP: it
    /// must be refused as a replay.
    pub expect_refusal: bool,
}

/// A record as parsed back from the log.
#[derive(Debug, Clone)]
pub enum Parsed {
    Reading {
        device: String,
        seq: u64,
    },
    Dead {
        device: String,
        reason: String,
        seq: Option<u64>,
    },
    /// An accepted CONNECT credential.
    Credential {
        device: String,
        nonce: [u8; 16],
        ts_ms: u64,
    },
}

pub fn parse(kind: RecordKind, bytes: &[u8]) -> Result<(Parsed, Vec<u8>), String> {
    let (meta, raw) = record::split(bytes).ok_or("record does not split")?;
    let parsed = match kind {
        RecordKind::Reading => {
            let meta: ReadingMeta = serde_json::from_slice(meta).map_err(|e| e.to_string())?;
            Parsed::Reading {
                device: meta.device,
                seq: meta.seq,
            }
        }
        RecordKind::DeadLetter => {
            let meta: DeadLetterMeta = serde_json::from_slice(meta).map_err(|e| e.to_string())?;
            Parsed::Dead {
                device: meta.device,
                reason: meta.reason,
                seq: meta.seq,
            }
        }
        RecordKind::Credential => {
            let meta: CredentialMeta = serde_json::from_slice(meta).map_err(|e| e.to_string())?;
            let nonce = envelope::hex::decode_array(meta.nonce.as_bytes(), false)
                .ok_or("credential record: bad nonce")?;
            Parsed::Credential {
                device: meta.device,
                nonce,
                ts_ms: meta.ts_ms,
            }
        }
    };
    Ok((parsed, raw.to_vec()))
}

/// A durable dead letter: its offset and reason.
type DeadLetter = (u64, String);

fn replay_family(reason: &str) -> bool {
    reason == "replayed" || reason == "stale_sequence" || reason.contains("sequence")
}

#[derive(Default)]
pub struct Oracle {
    /// Device ids and keys, by index.
    devices: Vec<(String, VerifyingKey)>,
    index: BTreeMap<String, usize>,
    /// Durable readings: (device, seq) -> (offset, raw).
    readings: BTreeMap<(usize, u64), (u64, Vec<u8>)>,
    /// Durable dead letters: (device, raw) -> (offset, reason), oldest first.
    dead: BTreeMap<(usize, Vec<u8>), Vec<DeadLetter>>,
    /// Readings appended in this life of the core (durable or not): promise 7.
    appended_readings: BTreeMap<(usize, u64), u64>,
    /// One past the highest offset an acknowledgement relied on: promise 5.
    acked_end: u64,
    /// Readings already acknowledged once: acknowledging one again (a QoS 2 PUBREC resent
    /// for a DUP) repeats a promise made then, which may have rested on the durable log
    /// alone while the Kafka gate was open; it needs the reading durable, not confirmed.
    acked_readings: BTreeSet<(usize, u64)>,
    pub durable_readings: u64,
    pub durable_dead: u64,
}

impl Oracle {
    pub fn new(devices: Vec<(String, VerifyingKey)>) -> Self {
        let index = devices
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (id.clone(), i))
            .collect();
        Self {
            devices,
            index,
            ..Self::default()
        }
    }

    fn device(&self, id: &str) -> Result<usize, String> {
        self.index
            .get(id)
            .copied()
            .ok_or_else(|| format!("record names unknown device {id:?}"))
    }

    /// A record was appended at `offset` (not yet durable).
    pub fn on_append(&mut self, offset: u64, kind: RecordKind, bytes: &[u8]) -> Result<(), String> {
        let (parsed, _) = parse(kind, bytes)?;
        match parsed {
            Parsed::Reading { device, seq } => {
                let d = self.device(&device)?;
                self.appended_readings.entry((d, seq)).or_insert(offset);
            }
            Parsed::Dead {
                device,
                reason,
                seq: Some(seq),
            } if reason == "replayed" => {
                let d = self.device(&device)?;
                let stored = self.appended_readings.contains_key(&(d, seq))
                    || self.readings.contains_key(&(d, seq));
                if !stored {
                    return Err(format!(
                        "promise 7: offset {offset}: {device} seq {seq} dead-lettered as \
                         replayed but never stored"
                    ));
                }
            }
            Parsed::Dead { .. } => {}
            Parsed::Credential { device, .. } => {
                self.device(&device)?;
            }
        }
        Ok(())
    }

    /// A record became durable.
    pub fn on_durable(
        &mut self,
        offset: u64,
        kind: RecordKind,
        bytes: &[u8],
    ) -> Result<(), String> {
        let (parsed, raw) = parse(kind, bytes)?;
        match parsed {
            Parsed::Reading { device, seq } => {
                let d = self.device(&device)?;
                // Promise 6: the stored envelope verifies with the device's key.
                let (_, key) = &self.devices[d];
                let env = envelope::decode(&raw, 4096).map_err(|e| format!("{e}"))?;
                let topic = envelope::telemetry_topic("devices", &device);
                let mut scratch = Vec::new();
                if env.verify(&topic, key, &mut scratch).is_err() || env.seq != seq {
                    return Err(format!(
                        "promise 6: offset {offset}: a reading of {device} seq {seq} does not \
                         verify (forged)"
                    ));
                }
                if let Some((first, _)) = self.readings.get(&(d, seq)) {
                    return Err(format!(
                        "promise 2: {device} seq {seq} stored twice, at offsets {first} and \
                         {offset}"
                    ));
                }
                self.readings.insert((d, seq), (offset, raw));
                self.durable_readings += 1;
            }
            Parsed::Dead { device, reason, .. } => {
                let d = self.device(&device)?;
                self.dead
                    .entry((d, raw))
                    .or_default()
                    .push((offset, reason));
                self.durable_dead += 1;
            }
            Parsed::Credential { device, .. } => {
                self.device(&device)?;
            }
        }
        Ok(())
    }

    pub fn durable_reading_exists(&self, device: usize, seq: u64) -> bool {
        self.readings.contains_key(&(device, seq))
    }

    /// The core restarted from the `durable` records.
    pub fn on_restart(&mut self, durable: u64) -> Result<(), String> {
        if self.acked_end > durable {
            return Err(format!(
                "promise 5: an acknowledgement relied on offset {} but only {durable} records \
                 survived the restart",
                self.acked_end - 1
            ));
        }
        self.appended_readings.clear();
        Ok(())
    }

    /// An acknowledgement of `msg` arrived; `limit` is what it may rely on (the durable
    /// end, or the sink's confirmed end when the Kafka gate holds).
    pub fn check_ack(
        &mut self,
        msg: &SentMsg,
        reason: ReasonCode,
        protocol: Protocol,
        limit: u64,
        durable: u64,
    ) -> Result<(), String> {
        let d = msg.device;
        let limit = if self.acked_readings.contains(&(d, msg.seq)) {
            durable
        } else {
            limit
        };
        let name = &self.devices[d].0;
        let what = format!(
            "{name} seq {} qos {} dup {} {:?} ack {reason:?}",
            msg.seq, msg.qos as u8, msg.dup, msg.sender
        );
        let reading = self
            .readings
            .get(&(d, msg.seq))
            .filter(|(offset, _)| *offset < limit);
        let reading_same = reading.filter(|(_, raw)| *raw == msg.payload);
        // The exception of promise 4: a DUP redelivery of a stored reading, the same bytes.
        // Another payload under a stored sequence (forged, altered), or one a restart only
        // restored as seen, is acknowledged too, but only once a dead letter records it.
        let redelivery = msg.dup && reading_same.is_some();
        let dead: Vec<&DeadLetter> = self
            .dead
            .get(&(d, msg.payload.clone()))
            .map(|v| v.iter().filter(|(offset, _)| *offset < limit).collect())
            .unwrap_or_default();
        let refused_v5 = protocol == Protocol::V5 && reason != ReasonCode::Success;
        let must_be_dead = refused_v5
            || msg.expect_refusal
            || msg.sender == Sender::Foreign
            || msg.sender == Sender::Replay && !msg.dup
            || (msg.sender == Sender::Forged && !redelivery);
        let relied = if must_be_dead {
            let Some((offset, _)) = dead.first() else {
                return Err(format!(
                    "promise 1/4: {what}: acknowledged as refused but no dead letter is durable \
                     (limit {limit})"
                ));
            };
            if (msg.expect_refusal || msg.sender == Sender::Replay)
                && !dead.iter().any(|(_, r)| replay_family(r))
            {
                return Err(format!(
                    "promise 3: {what}: a replay acknowledged without a replay dead letter \
                     ({dead:?})"
                ));
            }
            *offset
        } else if let Some((offset, _)) = reading_same {
            *offset
        } else if redelivery {
            reading.map_or(0, |(offset, _)| *offset)
        } else if let Some((offset, _)) = dead.first() {
            *offset
        } else {
            return Err(format!(
                "promise 1/4: {what}: acknowledged but neither its reading nor a dead letter is \
                 durable (limit {limit})"
            ));
        };
        if protocol == Protocol::V5
            && reason == ReasonCode::Success
            && reading_same.is_none()
            && !redelivery
        {
            return Err(format!(
                "promise 4: {what}: a v5 Success acknowledgement without a durable reading"
            ));
        }
        if reading_same.is_some() {
            self.acked_readings.insert((d, msg.seq));
        }
        self.acked_end = self.acked_end.max(relied + 1);
        Ok(())
    }
}
