//! Micro-benchmarks of the hot path: decode a PUBLISH, decode and verify an envelope (one
//! at a time and in batches), encode a PUBACK, and the shard's cheap checks.
//!
//! Run: `cargo bench -p ingestd-benches --bench codec`. Figures are in BENCHMARKS.md.
#![allow(clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use ingestd_codec::envelope::{self, BatchVerifier, Kind, Reading};
use ingestd_codec::mqtt::{self, Decoded, Origin, Packet, Properties, Protocol, QoS};
use ingestd_shards::replay::ReplayWindow;
use ingestd_shards::validate::{precheck, Limits};

const TS_MS: u64 = 1_764_201_600_000;

fn device(i: usize) -> (SigningKey, String, String) {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    let id = format!("co2-{i:06}");
    let topic = envelope::telemetry_topic("devices", &id);
    (SigningKey::from_bytes(&seed), id, topic)
}

fn readings() -> [Reading; 3] {
    [
        Reading::new(Kind::Co2Ppm, 415.5),
        Reading::new(Kind::TemperatureC, 21.25),
        Reading::new(Kind::HumidityRhPct, 48.0),
    ]
}

fn signed_binary(i: usize, seq: u64) -> (SigningKey, String, Vec<u8>) {
    let (key, id, topic) = device(i);
    let mut scratch = Vec::new();
    let env = envelope::sign(&key, &topic, &id, seq, TS_MS, &readings(), &mut scratch).unwrap();
    let mut out = Vec::new();
    env.encode_binary(&mut out);
    (key, topic, out)
}

fn publish_frame(topic: &str, payload: &[u8], protocol: Protocol) -> Vec<u8> {
    let mut out = Vec::new();
    Packet::Publish(mqtt::Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic,
        pkid: 42,
        properties: Properties::default(),
        payload,
    })
    .encode(protocol, &mut out)
    .unwrap();
    out
}

fn mqtt_benches(c: &mut Criterion) {
    let (_, topic, payload) = signed_binary(0, 1);
    let mut group = c.benchmark_group("mqtt");
    group.throughput(Throughput::Elements(1));
    for protocol in [Protocol::V311, Protocol::V5] {
        let frame = publish_frame(&topic, &payload, protocol);
        group.bench_function(format!("decode_publish_{protocol:?}"), |b| {
            b.iter(|| {
                match mqtt::decode_from(black_box(&frame), protocol, 16 * 1024, Origin::Client) {
                    Ok(Decoded::Packet { len, .. }) => len,
                    _ => unreachable!(),
                }
            })
        });
        let mut out = Vec::with_capacity(64);
        group.bench_function(format!("encode_puback_{protocol:?}"), |b| {
            b.iter(|| {
                out.clear();
                mqtt::encode_puback(black_box(42), protocol, &mut out).unwrap();
                out.len()
            })
        });
    }
    group.finish();
}

fn envelope_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    let (key, topic, payload) = signed_binary(0, 1);
    let verifying = key.verifying_key();
    group.bench_function("decode_binary", |b| {
        b.iter(|| envelope::decode(black_box(&payload), 1024).unwrap().seq)
    });
    let (_, id, _) = device(0);
    let mut scratch = Vec::new();
    let env = envelope::sign(&key, &topic, &id, 1, TS_MS, &readings(), &mut scratch).unwrap();
    let mut json = Vec::new();
    env.encode_json(&mut json);
    group.bench_function("decode_json", |b| {
        b.iter(|| envelope::decode(black_box(&json), 1024).unwrap().seq)
    });
    let mut scratch = Vec::with_capacity(256);
    group.bench_function("decode_verify_single", |b| {
        b.iter(|| {
            let env = envelope::decode(black_box(&payload), 1024).unwrap();
            env.verify(&topic, &verifying, &mut scratch).unwrap();
        })
    });
    let window = ReplayWindow::new();
    let limits = Limits {
        topic_prefix: "devices".to_string(),
        envelope_bytes_max: 1024,
        clock_skew_ms_max: 300_000,
    };
    group.bench_function("shard_precheck", |b| {
        b.iter(|| {
            precheck(&id, &topic, black_box(&payload), &window, TS_MS, &limits)
                .unwrap()
                .seq
        })
    });
    group.finish();

    // Batched verification: 64 envelopes from 64 devices per batch, as a loaded shard
    // sees them; throughput is per signature.
    let mut group = c.benchmark_group("envelope_batch");
    for batch in [16usize, 64, 128, 256, 512] {
        let items: Vec<(ed25519_dalek::VerifyingKey, String, Vec<u8>)> = (0..batch)
            .map(|i| {
                let (key, topic, payload) = signed_binary(i, 7);
                (key.verifying_key(), topic, payload)
            })
            .collect();
        let mut verifier = BatchVerifier::new(batch);
        let mut results = Vec::with_capacity(batch);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("decode_verify_batch_{batch}"), |b| {
            b.iter_batched_ref(
                || (),
                |()| {
                    verifier.clear();
                    for (key, topic, payload) in &items {
                        let env = envelope::decode(payload, 1024).unwrap();
                        verifier.push(key, topic, &env);
                    }
                    results.clear();
                    verifier.verify(&mut results);
                    assert!(results.iter().all(Result::is_ok));
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, mqtt_benches, envelope_benches);
criterion_main!(benches);
