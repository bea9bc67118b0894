//! Fraud scoring per reading on one shard: the engine with every detector, the peers
//! table and the learned model, over 1,000 devices in 100 locations publishing CO2,
//! temperature and humidity (one envelope of three readings per message).
//!
//! Run: `cargo bench -p ingestd-benches --bench fraud`. Figures are in BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ingestd_codec::envelope::{Kind, Reading};
use ingestd_shards::fraud::engine::{
    address_hash, device_hash, DeviceFraud, Envelope, FraudConfig, Scorer,
};
use std::time::Instant;

const T0_MS: u64 = 1_764_201_600_000;
const DEVICES: usize = 1_000;
const PER_LOCATION: usize = 10;

/// A deterministic uniform in [-1, 1) (xorshift64).
fn jitter(state: &mut u64) -> f32 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    ((*state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
}

fn fraud_benches(c: &mut Criterion) {
    let mut scorer = Scorer::new(FraudConfig::default());
    let mut devices: Vec<DeviceFraud> = (0..DEVICES)
        .map(|d| DeviceFraud::new(&format!("site-{}", d / PER_LOCATION), "eu-west"))
        .collect();
    let ids: Vec<u64> = (0..DEVICES)
        .map(|d| device_hash(&format!("co2-{d:06}")))
        .collect();
    let address = address_hash("10.1.2.3:40000");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut i = 0u64;
    let step = |scorer: &mut Scorer, devices: &mut [DeviceFraud], state: &mut u64, i: u64| {
        let d = (i as usize) % DEVICES;
        let round = i / DEVICES as u64;
        let t_ms = T0_MS + round * 60_000 + d as u64;
        let phase = ((t_ms as f64 / 86_400_000.0) * std::f64::consts::TAU).sin() as f32;
        let values = [
            Reading {
                kind: Kind::Co2Ppm.code(),
                value: (430.0 + 60.0 * phase + 6.0 * jitter(state)).round(),
            },
            Reading {
                kind: Kind::TemperatureC.code(),
                value: 19.0 + 2.5 * phase + 0.08 * jitter(state),
            },
            Reading {
                kind: Kind::HumidityRhPct.code(),
                value: 52.0 - 6.0 * phase + 0.6 * jitter(state),
            },
        ];
        let envelope = Envelope {
            device: ids[d],
            seq: round + 1,
            device_ms: t_ms,
            received_ms: t_ms + 120,
            address,
            connected_ms: T0_MS,
            readings: &values,
        };
        scorer.score(&mut devices[d], &envelope)
    };
    // Past every warm-up: the steady state.
    while i < 100 * DEVICES as u64 {
        step(&mut scorer, &mut devices, &mut state, i);
        i += 1;
    }
    let mut group = c.benchmark_group("fraud");
    group.throughput(Throughput::Elements(1));
    group.bench_function("score_envelope_of_3_readings", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(step(&mut scorer, &mut devices, &mut state, i));
                i += 1;
            }
            started.elapsed()
        });
    });
    group.finish();
}

criterion_group!(benches, fraud_benches);
criterion_main!(benches);
