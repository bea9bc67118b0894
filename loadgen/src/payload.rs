//! Message preparation before the timed phase: readings padded to the requested size,
//! envelopes signed with fresh sequence numbers, and whole PUBLISH frames encoded so the
//! timed phase only patches the packet identifier and writes bytes.

use crate::scenario::{DeviceScenario, Turn};
use ingestd_codec::envelope::{self, Kind, Reading, SigningKey, VENDOR_KIND_START};
use ingestd_codec::mqtt::{Packet, Properties, Protocol, Publish, QoS};
use rand::Rng;

/// Envelope form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Binary,
    Json,
}

/// The per-run sequence base: current unix time in ms × 1000. A later run starts above
/// anything an earlier run used as long as no device sent more than 1000 messages per
/// millisecond of the earlier run's lifetime, so repeated runs never replay.
pub fn seq_base_now() -> u64 {
    now_unix_ms().saturating_mul(1000)
}

/// The sequence number of a device's `k`-th message in a run.
pub fn seq_of(base: u64, k: u64) -> u64 {
    // Wrapping: a clone's turn may carry a base below its first index (see conn.rs).
    base.wrapping_add(k)
}

/// Wall clock in ms since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Extra readings used to pad an envelope up to a size: the registered kinds not produced
/// by the scenario (PM, battery, pressure, VOC, noise) with plausible values, then
/// vendor-private kinds 0x8000.. .
pub fn padding_readings(n: usize) -> Vec<Reading> {
    let registered = [
        (Kind::Pm1Ugm3, 4.0),
        (Kind::Pm2_5Ugm3, 7.5),
        (Kind::Pm10Ugm3, 12.0),
        (Kind::BatteryPct, 87.0),
        (Kind::BatteryV, 3.7),
        (Kind::PressureHpa, 1013.2),
        (Kind::VocIndex, 100.0),
        (Kind::NoiseDba, 41.5),
    ];
    let mut out: Vec<Reading> = registered
        .iter()
        .take(n)
        .map(|(k, v)| Reading::new(*k, *v))
        .collect();
    let mut code = VENDOR_KIND_START;
    while out.len() < n {
        out.push(Reading {
            kind: code,
            value: f32::from(code - VENDOR_KIND_START),
        });
        code += 1;
    }
    out
}

/// Size of a binary envelope with a device id of `id_len` bytes and `n` readings.
pub fn binary_len(id_len: usize, n: usize) -> usize {
    3 + id_len + 8 + 8 + 1 + 6 * n + envelope::SIGNATURE_LEN
}

/// How many padding readings to add to `base` readings so the envelope reaches `target`
/// bytes (0: none). Binary sizes step by 6 bytes, so the result is the smallest size
/// >= target; capped at 32 readings in all. For JSON the size is measured on a sample.
pub fn padding_for(
    format: Format,
    device_id: &str,
    base: &[Reading],
    target: usize,
) -> Result<usize, String> {
    if target == 0 {
        return Ok(0);
    }
    let max_extra = envelope::MAX_READINGS.saturating_sub(base.len());
    for extra in 0..=max_extra {
        if encoded_len(format, device_id, base, extra)? >= target {
            return Ok(extra);
        }
    }
    Err(format!(
        "payload size {target} is above the largest {:?} envelope for {device_id} ({} bytes, 32 readings)",
        format,
        encoded_len(format, device_id, base, max_extra)?
    ))
}

fn encoded_len(
    format: Format,
    device_id: &str,
    base: &[Reading],
    extra: usize,
) -> Result<usize, String> {
    let mut readings = base.to_vec();
    readings.extend(padding_readings(extra));
    if format == Format::Binary {
        return Ok(binary_len(device_id.len(), readings.len()));
    }
    // The JSON length does not depend on the signature value: sign with a throwaway key.
    let key = SigningKey::from_bytes(&[7; 32]);
    let mut scratch = Vec::new();
    let env = envelope::sign(
        &key,
        "t",
        device_id,
        u64::MAX,
        u64::MAX / 2,
        &readings,
        &mut scratch,
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    env.encode_json(&mut out);
    Ok(out.len())
}

/// Signs one envelope and appends its payload in the chosen form.
#[allow(clippy::too_many_arguments)]
pub fn sign_payload(
    key: &SigningKey,
    topic: &str,
    device_id: &str,
    seq: u64,
    ts_ms: u64,
    readings: &[Reading],
    format: Format,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let env = envelope::sign(key, topic, device_id, seq, ts_ms, readings, scratch)
        .map_err(|e| format!("cannot sign for {device_id}: {e}"))?;
    match format {
        Format::Binary => env.encode_binary(out),
        Format::Json => env.encode_json(out),
    }
    Ok(())
}

/// Appends a PUBLISH frame (packet id 1 as a placeholder for QoS > 0).
pub fn encode_publish(
    protocol: Protocol,
    qos: QoS,
    topic: &str,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let publish = Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        pkid: if qos == QoS::AtMostOnce { 0 } else { 1 },
        properties: Properties::default(),
        payload,
    };
    Packet::Publish(publish)
        .encode(protocol, out)
        .map_err(|e| format!("cannot encode PUBLISH: {e}"))
}

/// Where the packet identifier sits in a PUBLISH frame with QoS > 0.
pub fn pkid_offset(frame: &[u8]) -> Option<usize> {
    // Fixed header: one byte, then a variable-length integer of 1..=4 bytes.
    let mut i = 1;
    while *frame.get(i)? & 0x80 != 0 {
        i += 1;
        if i > 4 {
            return None;
        }
    }
    let var_start = i + 1;
    let topic_len = usize::from(u16::from_be_bytes([
        *frame.get(var_start)?,
        *frame.get(var_start + 1)?,
    ]));
    Some(var_start + 2 + topic_len)
}

/// Writes `pkid` into a PUBLISH frame encoded by [`encode_publish`] with QoS > 0.
pub fn patch_pkid(frame: &mut [u8], pkid: u16) -> bool {
    let Some(at) = pkid_offset(frame) else {
        return false;
    };
    match frame.get_mut(at..at + 2) {
        Some(slot) => {
            slot.copy_from_slice(&pkid.to_be_bytes());
            true
        }
        None => false,
    }
}

/// All pre-encoded PUBLISH frames of one connection, back to back.
#[derive(Default, Debug)]
pub struct Frames {
    pub bytes: Vec<u8>,
    /// Start of each frame in `bytes`; frame `k` ends where `k + 1` starts.
    pub starts: Vec<u32>,
    /// Total payload bytes (for the mean payload size).
    pub payload_bytes: u64,
}

impl Frames {
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The byte range of frame `k`.
    pub fn range(&self, k: usize) -> Option<std::ops::Range<usize>> {
        let start = *self.starts.get(k)? as usize;
        let end = self
            .starts
            .get(k + 1)
            .map_or(self.bytes.len(), |e| *e as usize);
        Some(start..end)
    }
}

/// What to build for one device.
pub struct BuildSpec<'a> {
    pub device_id: &'a str,
    pub key: Option<&'a SigningKey>,
    pub topic: &'a str,
    pub protocol: Protocol,
    pub qos: QoS,
    pub format: Format,
    /// Target payload size; 0 for the natural size.
    pub payload_size: usize,
    /// Unsigned random payloads (`--plain`).
    pub plain: bool,
    /// Message `k` is planned for device time `ts_base_ms + ts_offset_ms(k)`.
    pub ts_base_ms: u64,
}

/// Signs and encodes the messages of `turns` (every message of the device, in order: turn
/// `i + 1` starts where turn `i` ends). `ts_offset_ms(k)` is when message `k` is planned to
/// be sent (ms after the start of the timed phase); the scenario stamps its device time from
/// that, so device times match send times (unless the scenario drifts the clock).
pub fn build_frames(
    spec: &BuildSpec<'_>,
    turns: &[Turn],
    scenario: &DeviceScenario,
    rng: &mut impl Rng,
    ts_offset_ms: impl Fn(u64) -> u64,
) -> Result<Frames, String> {
    let mut frames = Frames::default();
    let mut scratch = Vec::with_capacity(512);
    let mut payload = Vec::with_capacity(512);
    let ts_of = |k: u64| spec.ts_base_ms + ts_offset_ms(k);
    let Some(first_turn) = turns.first() else {
        return Ok(frames);
    };
    let first = scenario.emit(first_turn.k_start, first_turn.writer, &ts_of);
    let natural = binary_len(spec.device_id.len(), first.readings.len());
    let extra = if spec.plain {
        0
    } else {
        padding_for(
            spec.format,
            spec.device_id,
            &first.readings,
            spec.payload_size,
        )?
    };
    let padding = padding_readings(extra);
    let plain_size = if spec.payload_size > 0 {
        spec.payload_size
    } else {
        natural
    };
    let mut all: Vec<Reading> = Vec::with_capacity(first.readings.len() + padding.len());
    for turn in turns {
        for k in turn.k_start..turn.k_end {
            payload.clear();
            match (spec.plain, spec.key) {
                (true, _) => {
                    payload.resize(plain_size, 0);
                    rng.fill(payload.as_mut_slice());
                }
                (false, Some(key)) => {
                    let emit = scenario.emit(k, turn.writer, &ts_of);
                    all.clear();
                    all.extend_from_slice(&emit.readings);
                    all.extend_from_slice(&padding);
                    sign_payload(
                        key,
                        spec.topic,
                        spec.device_id,
                        turn.seq(k),
                        emit.ts_ms,
                        &all,
                        spec.format,
                        &mut scratch,
                        &mut payload,
                    )?;
                }
                (false, None) => return Err(format!("no key for device {}", spec.device_id)),
            }
            let start = u32::try_from(frames.bytes.len())
                .map_err(|_| "more than 4 GiB of messages on one connection".to_string())?;
            frames.starts.push(start);
            frames.payload_bytes += payload.len() as u64;
            encode_publish(
                spec.protocol,
                spec.qos,
                spec.topic,
                &payload,
                &mut frames.bytes,
            )?;
        }
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{default_place, DeviceInfo, DeviceScenario, Label, ScenarioConfig};
    use ingestd_codec::mqtt::{decode, Decoded};
    use rand::SeedableRng;

    fn normal_scenario(id: &str) -> DeviceScenario {
        let config = ScenarioConfig {
            seed: 1,
            day_ms: 600_000,
            warmup_readings: 10,
            onset_span_readings: 10,
        };
        let (location, region) = default_place(0, 10, 10);
        let device = DeviceInfo {
            id: id.to_string(),
            location,
            region,
        };
        DeviceScenario::new(&config, &device, Label::Normal, None)
    }

    #[test]
    fn seq_numbers_are_fresh_and_increasing() {
        let base = seq_base_now();
        assert!(base >= 1_700_000_000_000_000, "{base}");
        assert_eq!(seq_of(base, 0), base);
        assert_eq!(seq_of(base, 5), base + 5);
        std::thread::sleep(std::time::Duration::from_millis(2));
        // A later run starts above 1000 messages per elapsed ms of this one.
        assert!(seq_base_now() >= base + 1000);
    }

    #[test]
    fn padding_kinds_are_distinct_and_valid() {
        let p = padding_readings(29);
        assert_eq!(p.len(), 29);
        let mut all = vec![
            Reading::new(Kind::Co2Ppm, 400.0),
            Reading::new(Kind::TemperatureC, 20.0),
            Reading::new(Kind::HumidityRhPct, 40.0),
        ];
        all.extend(p);
        assert!(envelope::Readings::from_unsorted(&all).is_ok());
    }

    #[test]
    fn padding_reaches_target_size() {
        let base = [
            Reading::new(Kind::Co2Ppm, 400.0),
            Reading::new(Kind::TemperatureC, 20.0),
            Reading::new(Kind::HumidityRhPct, 40.0),
        ];
        // 3 + 10 + 8 + 8 + 1 + 3 × 6 + 64
        assert_eq!(binary_len(10, 3), 112);
        assert_eq!(
            padding_for(Format::Binary, "dev-000000", &base, 0).unwrap(),
            0
        );
        assert_eq!(
            padding_for(Format::Binary, "dev-000000", &base, 112).unwrap(),
            0
        );
        assert_eq!(
            padding_for(Format::Binary, "dev-000000", &base, 113).unwrap(),
            1
        );
        // 84 + 10 + 6n >= 200 → n = 18 readings, 15 of them padding: 202 bytes.
        assert_eq!(
            padding_for(Format::Binary, "dev-000000", &base, 200).unwrap(),
            15
        );
        assert!(padding_for(Format::Binary, "dev-000000", &base, 1000).is_err());
        let n = padding_for(Format::Json, "dev-000000", &base, 400).unwrap();
        assert!(encoded_len(Format::Json, "dev-000000", &base, n).unwrap() >= 400);
        assert!(encoded_len(Format::Json, "dev-000000", &base, n - 1).unwrap() < 400);
    }

    #[test]
    fn frames_decode_and_pkid_patches() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let key = SigningKey::from_bytes(&[3; 32]);
        let topic = "devices/dev-000001/telemetry";
        let spec = BuildSpec {
            device_id: "dev-000001",
            key: Some(&key),
            topic,
            protocol: Protocol::V5,
            qos: QoS::AtLeastOnce,
            format: Format::Binary,
            payload_size: 200,
            plain: false,
            ts_base_ms: 1_764_201_600_000,
        };
        let scenario = normal_scenario("dev-000001");
        let turns = scenario.turns(5, 1000);
        let mut frames = build_frames(&spec, &turns, &scenario, &mut rng, |k| k * 10).unwrap();
        assert_eq!(frames.len(), 5);
        for k in 0..5 {
            let range = frames.range(k).unwrap();
            let frame = &mut frames.bytes[range];
            assert!(patch_pkid(frame, 0x1234 + k as u16));
            let Decoded::Packet {
                packet: Packet::Publish(p),
                len,
            } = decode(frame, Protocol::V5, 1 << 20).unwrap()
            else {
                panic!("not a publish");
            };
            assert_eq!(len, frame.len());
            assert_eq!(p.pkid, 0x1234 + k as u16);
            assert_eq!(p.topic, topic);
            assert_eq!(p.payload.len(), 202);
            let env = envelope::decode(p.payload, 1024).unwrap();
            assert_eq!(env.seq, 1000 + k as u64);
            assert_eq!(env.ts_ms, 1_764_201_600_000 + 10 * k as u64);
            let mut scratch = Vec::new();
            env.verify(topic, &key.verifying_key(), &mut scratch)
                .unwrap();
        }
    }

    /// A clone's frames: each turn's writer, sequence counter and readings, in turn order.
    #[test]
    fn clone_frames_follow_the_turns() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let key = SigningKey::from_bytes(&[3; 32]);
        let topic = "devices/dev-000001/telemetry";
        let spec = BuildSpec {
            device_id: "dev-000001",
            key: Some(&key),
            topic,
            protocol: Protocol::V5,
            qos: QoS::AtLeastOnce,
            format: Format::Binary,
            payload_size: 0,
            plain: false,
            ts_base_ms: 1_764_201_600_000,
        };
        let config = ScenarioConfig {
            seed: 1,
            day_ms: 600_000,
            warmup_readings: 10,
            onset_span_readings: 10,
        };
        let (location, region) = default_place(1, 10, 10);
        let device = DeviceInfo {
            id: "dev-000001".into(),
            location,
            region,
        };
        let scenario = DeviceScenario::new(&config, &device, Label::Clone, None);
        let turns = scenario.turns(80, 1000);
        assert!(turns.len() > 2);
        let frames = build_frames(&spec, &turns, &scenario, &mut rng, |k| k * 100).unwrap();
        assert_eq!(frames.len(), 80);
        for turn in &turns {
            for k in turn.k_start..turn.k_end {
                let frame = &frames.bytes[frames.range(k as usize).unwrap()];
                let Decoded::Packet {
                    packet: Packet::Publish(p),
                    ..
                } = decode(frame, Protocol::V5, 1 << 20).unwrap()
                else {
                    panic!("not a publish");
                };
                let env = envelope::decode(p.payload, 1024).unwrap();
                assert_eq!(env.seq, turn.seq(k));
                let emit = scenario.emit(k, turn.writer, &|k| spec.ts_base_ms + k * 100);
                assert_eq!(env.ts_ms, emit.ts_ms);
                assert_eq!(env.readings.as_slice(), &emit.readings[..]);
            }
        }
    }

    #[test]
    fn plain_payloads_have_the_natural_size() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let spec = BuildSpec {
            device_id: "dev-000002",
            key: None,
            topic: "devices/dev-000002/telemetry",
            protocol: Protocol::V311,
            qos: QoS::AtMostOnce,
            format: Format::Binary,
            payload_size: 0,
            plain: true,
            ts_base_ms: 0,
        };
        let scenario = normal_scenario("dev-000002");
        let frames =
            build_frames(&spec, &scenario.turns(3, 0), &scenario, &mut rng, |_| 0).unwrap();
        assert_eq!(frames.payload_bytes, 3 * 112);
    }

    /// Signing with a vector's seed and fields gives the vector's payload byte for byte.
    #[test]
    fn signing_matches_test_vectors() {
        let text = include_str!("../../docs/test-vectors.json");
        let vectors: serde_json::Value = serde_json::from_str(text).unwrap();
        let keys = vectors["keys"].as_array().unwrap();
        let mut checked = 0;
        for case in vectors["cases"].as_array().unwrap() {
            if case["expected"] != "valid" || case["form"] == "credential" {
                continue;
            }
            let decoded = &case["decoded"];
            let device = decoded["device"].as_str().unwrap();
            let Some(key_entry) = keys.iter().find(|k| k["device_id"] == device) else {
                continue;
            };
            let seed = crate::devices::parse_seed(key_entry["seed"].as_str().unwrap()).unwrap();
            let key = SigningKey::from_bytes(&seed);
            let readings: Vec<Reading> = decoded["readings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| Reading {
                    kind: r["kind"].as_u64().unwrap() as u16,
                    value: f32::from_bits(r["bits"].as_str().map_or_else(
                        || r["bits"].as_u64().unwrap() as u32,
                        |s| u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap(),
                    )),
                })
                .collect();
            let format = if case["form"] == "json" {
                Format::Json
            } else {
                Format::Binary
            };
            let mut out = Vec::new();
            sign_payload(
                &key,
                case["topic"].as_str().unwrap(),
                device,
                decoded["seq"].as_u64().unwrap(),
                decoded["ts"].as_u64().unwrap(),
                &readings,
                format,
                &mut Vec::new(),
                &mut out,
            )
            .unwrap();
            let ours = envelope::decode(&out, 1024).unwrap();
            assert_eq!(
                hex(&ours.signature),
                decoded["sig"].as_str().unwrap().to_lowercase(),
                "signature of {}",
                case["name"]
            );
            if format == Format::Binary {
                assert_eq!(
                    hex(&out),
                    case["payload"].as_str().unwrap(),
                    "{}",
                    case["name"]
                );
            } else {
                // The JSON text of a vector may use other spacing or member order; compare
                // the decoded meaning and the signature.
                let theirs =
                    envelope::decode(case["payload"].as_str().unwrap().as_bytes(), 4096).unwrap();
                assert_eq!(ours, theirs, "{}", case["name"]);
            }
            checked += 1;
        }
        assert!(checked >= 2, "only {checked} vectors checked");
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
