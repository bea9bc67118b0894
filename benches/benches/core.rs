//! The shard core's own cost per message, without I/O and without the signature: a QoS 1
//! PUBLISH in (`Event::Packet`), its verification round (`Event::Tick`, signature checks
//! off), the record appended, the commit (`Event::Committed`) and the PUBACK taken out of
//! the connection's buffer. What the driver adds (sockets, fsync, wake-ups) is measured by
//! `scripts/bench` and `scripts/bench-ab`; the signature by the `codec` bench.
//!
//! With fraud scoring off and on, side by side.
//!
//! Run: `cargo bench -p ingestd-benches --bench core`. Figures are in BENCHMARKS.md.
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use ingestd_codec::envelope::{self, Kind, Reading};
use ingestd_codec::mqtt::{self, Packet, Properties, Protocol, QoS};
use ingestd_shards::core::connect::ConnectInfo;
use ingestd_shards::core::{Action, ConnId, Core, CoreConfig, DeviceEntry, Event, Metrics, Time};
use ingestd_shards::policy::CommitPolicy;
use ingestd_shards::validate::Limits;
use std::time::Instant;

const WALL_MS: u64 = 1_764_201_600_000;
/// Messages per verification round and commit: the server's default batch.
const ROUND: u64 = 64;

struct NoMetrics;
impl Metrics for NoMetrics {}

fn config() -> CoreConfig {
    CoreConfig {
        shard: 0,
        shards: 1,
        node_id: "bench".into(),
        limits: Limits {
            topic_prefix: "devices".into(),
            envelope_bytes_max: 1024,
            clock_skew_ms_max: 300_000,
        },
        verify_signatures: false,
        verify_batch_signatures_max: ROUND as usize,
        verify_batch_delay_us: 1_000,
        opaque_payloads: false,
        inflight_max: u16::MAX,
        packet_bytes_max: 16 * 1024,
        keep_alive_s_max: 300,
        connections_per_shard_max: 10,
        require_credential: true,
        credential_window_ms: 300_000,
        credential_nonces_max: 1024,
        output_bytes_max: 1 << 30,
        throttle_addresses_max: 1024,
        failures_before_delay: 3,
        failure_delay_ms: 10,
        failure_delay_ms_max: 100,
        commit: CommitPolicy {
            batch_bytes_max: 1 << 30,
            interval_us: 2_000,
        },
        pending_bytes_max: 1 << 30,
        record_overhead_bytes: 16,
        kafka_gate: false,
        unreachable_after_ms: 1_000,
        egress: false,
        fraud: None,
    }
}

/// A signed binary envelope of `seq`, and where its sequence number sits, so later
/// sequences are written in place (signatures are not checked in this bench).
fn template(key: &SigningKey, topic: &str, device: &str) -> (Vec<u8>, usize) {
    let marker = 0x0102_0304_0506_0708u64;
    let readings = [
        Reading::new(Kind::Co2Ppm, 415.5),
        Reading::new(Kind::TemperatureC, 21.25),
        Reading::new(Kind::HumidityRhPct, 48.0),
    ];
    let mut scratch = Vec::new();
    let env = envelope::sign(key, topic, device, marker, WALL_MS, &readings, &mut scratch).unwrap();
    let mut out = Vec::new();
    env.encode_binary(&mut out);
    let at = out
        .windows(8)
        .position(|w| w == marker.to_le_bytes() || w == marker.to_be_bytes())
        .unwrap();
    (out, at)
}

fn core_benches(c: &mut Criterion) {
    let device = "co2-000001";
    let topic = envelope::telemetry_topic("devices", device);
    let key = SigningKey::from_bytes(&[9; 32]);
    let entry = DeviceEntry {
        key: key.verifying_key(),
        active: true,
        location: "lab".into(),
        region: "eu".into(),
        project: "p".into(),
        sensor_type: "ndir".into(),
    };
    let (mut payload, seq_at) = template(&key, &topic, device);
    let big_endian = payload[seq_at] == 0x01;

    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(ROUND));
    // Side by side: the same path with fraud scoring off and on (docs/FRAUD.md).
    for (name, fraud) in [
        ("publish_qos1_to_puback_per_round_of_64", None),
        (
            "publish_qos1_to_puback_per_round_of_64_scored",
            Some(ingestd_shards::fraud::engine::FraudConfig::default()),
        ),
    ] {
        group.bench_function(name, |b| {
            let mut core = Core::new(
                CoreConfig {
                    fraud: fraud.clone(),
                    ..config()
                },
                NoMetrics,
                0,
                0,
            );
            let mut now = Time {
                mono_us: 0,
                wall_ms: WALL_MS,
            };
            let info = ConnectInfo {
                protocol: Protocol::V5,
                client_id: device.into(),
                username: Some(device.into()),
                password: None,
                clean_start: true,
                keep_alive_s: 60,
                session_expiry_s: 0,
                auth_method: false,
                len: 0,
                packet_bytes_max: usize::MAX,
            };
            let lookup = |id: &str| (id == device).then(|| entry.clone());
            core.handle(
                Event::Connect {
                    conn: ConnId(1),
                    info: &info,
                    peer: "127.0.0.1:5000".parse().unwrap(),
                    cert_device: Some(device),
                    handed_in: false,
                    registry: &lookup,
                },
                now,
            );
            while core.poll_action().is_some() {}
            let mut out = Vec::new();
            let _ = core.take_output(ConnId(1), &mut out);
            let mut seq = 0u64;
            let mut next_offset = 0u64;
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    for i in 0..ROUND {
                        seq += 1;
                        let bytes = if big_endian {
                            seq.to_be_bytes()
                        } else {
                            seq.to_le_bytes()
                        };
                        payload[seq_at..seq_at + 8].copy_from_slice(&bytes);
                        let packet = Packet::Publish(mqtt::Publish {
                            dup: false,
                            qos: QoS::AtLeastOnce,
                            retain: false,
                            topic: &topic,
                            pkid: (i + 1) as u16,
                            properties: Properties::default(),
                            payload: &payload,
                        });
                        core.handle(
                            Event::Packet {
                                conn: ConnId(1),
                                packet,
                            },
                            now,
                        );
                        while let Some(action) = core.poll_action() {
                            if let Action::Append { offset, .. } = action {
                                next_offset = offset + 1;
                            }
                        }
                    }
                    now.mono_us += 2_000;
                    now.wall_ms += 2;
                    core.handle(Event::Tick, now);
                    while let Some(action) = core.poll_action() {
                        if let Action::Append { offset, .. } = action {
                            next_offset = offset + 1;
                        }
                    }
                    core.handle(
                        Event::Committed {
                            end: next_offset,
                            pending_bytes: 0,
                        },
                        now,
                    );
                    while core.poll_action().is_some() {}
                    let _ = core.take_output(ConnId(1), &mut out);
                    assert_eq!(out.len(), ROUND as usize * 4, "one PUBACK per message");
                }
                started.elapsed()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, core_benches);
criterion_main!(benches);
