//! The cost per reading of the peers table and the learned model, printed, not asserted
//! (timings vary with the machine). Run in release:
//! `cargo test --release -p ingestd-shards --test fraud_cost -- --ignored --nocapture --test-threads=1`.
//!
//! Each figure is the best of seven runs, in CPU time of the thread where Linux reports
//! it: on a shared machine the least disturbed run is the closest to the code's own cost.

use ingestd_codec::envelope::Kind;
use ingestd_shards::fraud::model::{HalfSpaceTrees, ModelConfig, FEATURES};
use ingestd_shards::fraud::peers::{GroupKey, PeerTable, PeersConfig, Scope};
use std::hint::black_box;
use std::time::Instant;

/// This thread's CPU time in ns (Linux), so a loaded machine's waiting is not counted.
fn cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The best (wall, CPU) ns per call of `f` over seven runs of `n` calls.
fn best_of_seven(n: usize, mut f: impl FnMut()) -> (f64, Option<f64>) {
    let mut best = (f64::MAX, None::<f64>);
    for _ in 0..7 {
        let (wall, cpu) = (Instant::now(), cpu_ns());
        for _ in 0..n {
            f();
        }
        let wall_ns = wall.elapsed().as_nanos() as f64 / n as f64;
        let cpu_ns = cpu.zip(cpu_ns()).map(|(a, b)| (b - a) as f64 / n as f64);
        best.0 = best.0.min(wall_ns);
        best.1 = match (best.1, cpu_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    best
}

/// A fixed xorshift stream of roughly standard normal numbers (sums of uniforms).
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> f32 {
        let mut sum = 0.0;
        for _ in 0..4 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            sum += (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32;
        }
        sum * 1.7 - 3.4
    }
}

#[test]
#[ignore = "timing: run in release with --ignored --nocapture"]
fn model_cost() {
    let mut stream = Stream(0x1234_5678_9abc_def1);
    let points: Vec<[f32; FEATURES]> = (0..1 << 16)
        .map(|_| std::array::from_fn(|_| stream.next()))
        .collect();
    for (trees, depth) in [(16, 8), (25, 8), (16, 10)] {
        let config = ModelConfig {
            trees,
            depth,
            ..ModelConfig::default()
        };
        let mut model = HalfSpaceTrees::new(&config);
        for p in &points[..4096] {
            model.check(p);
        }
        let mut i = 0usize;
        let mut fired = 0usize;
        let check = best_of_seven(points.len(), || {
            let p = &points[i % points.len()];
            i += 1;
            fired += usize::from(black_box(model.check(black_box(p))).is_some());
        });
        let mut sum = 0.0f32;
        let score = best_of_seven(points.len(), || {
            let p = &points[i % points.len()];
            i += 1;
            sum += black_box(model.score(black_box(p)));
        });
        println!(
            "model_cost: {trees} trees, depth {depth}, window {}: check {:.0} ns wall, {:.0?} ns cpu; score {:.0} ns wall, {:.0?} ns cpu; state {} bytes (fired {fired}, score sum {sum:.0})",
            config.window,
            check.0,
            check.1,
            score.0,
            score.1,
            model.state_bytes()
        );
    }
}

#[test]
#[ignore = "timing: run in release with --ignored --nocapture"]
fn peers_cost() {
    let kind = Kind::TemperatureC;
    // The last: a region of 1 000 devices over the bound of 256, each reading of a device
    // outside the kept ones evicting the oldest.
    for devices in [20u64, 256, 1_000] {
        let mut table = PeerTable::new(PeersConfig::default());
        let key = GroupKey::new(Scope::Location, "lab", kind).unwrap_or_else(|| unreachable!());
        let mut stream = Stream(7);
        // Readings every minute per device, spread over the minute.
        let step_ms = 60_000 / devices;
        let mut t = 1_764_000_000_000u64;
        let mut device = 0u64;
        let mut read = |table: &mut PeerTable| {
            device = (device + 1) % devices;
            t += step_ms;
            let v = 20.0 + 0.3 * stream.next();
            // What the engine calls per reading and group.
            black_box(table.check_then_observe(key, device, t, v, kind));
        };
        for _ in 0..10 * devices {
            read(&mut table);
        }
        let cost = best_of_seven(100_000, || read(&mut table));
        println!(
            "peers_cost: a group of {devices}: check_then_observe {:.0} ns wall, {:.0?} ns cpu ({} snapshots, {} evictions)",
            cost.0,
            cost.1,
            table.counters().snapshots_built,
            table.counters().devices_evicted
        );
    }
}

#[test]
#[ignore = "timing: run in release with --ignored --nocapture"]
fn engine_cost() {
    use ingestd_codec::envelope::Reading;
    use ingestd_shards::fraud::engine::{
        address_hash, device_hash, DeviceFraud, Envelope, FraudConfig, Scorer,
    };
    // The scenario of `cargo bench -p ingestd-benches --bench fraud`: 1 000 devices in
    // 100 locations of one region, an envelope of CO2, temperature and humidity each
    // minute per device.
    const T0_MS: u64 = 1_764_201_600_000;
    const DEVICES: usize = 1_000;
    let mut scorer = Scorer::new(FraudConfig::default());
    let mut devices: Vec<DeviceFraud> = (0..DEVICES)
        .map(|d| DeviceFraud::new(&format!("site-{}", d / 10), "eu-west"))
        .collect();
    let ids: Vec<u64> = (0..DEVICES)
        .map(|d| device_hash(&format!("co2-{d:06}")))
        .collect();
    let address = address_hash("10.1.2.3:40000");
    let mut stream = Stream(0x9e37_79b9_7f4a_7c15);
    let mut i = 0u64;
    let mut flagged = 0u64;
    let mut step = |scorer: &mut Scorer, devices: &mut [DeviceFraud]| {
        let d = (i as usize) % DEVICES;
        let round = i / DEVICES as u64;
        i += 1;
        let t_ms = T0_MS + round * 60_000 + d as u64;
        let phase = ((t_ms as f64 / 86_400_000.0) * std::f64::consts::TAU).sin() as f32;
        let values = [
            Reading {
                kind: Kind::Co2Ppm.code(),
                value: (430.0 + 60.0 * phase + 2.0 * stream.next()).round(),
            },
            Reading {
                kind: Kind::TemperatureC.code(),
                value: 19.0 + 2.5 * phase + 0.03 * stream.next(),
            },
            Reading {
                kind: Kind::HumidityRhPct.code(),
                value: 52.0 - 6.0 * phase + 0.2 * stream.next(),
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
        let scored = scorer.score(&mut devices[d], &envelope);
        flagged += u64::from(black_box(scored).verdict.score >= 0.5);
    };
    for _ in 0..100 * DEVICES {
        step(&mut scorer, &mut devices);
    }
    let cost = best_of_seven(50_000, || step(&mut scorer, &mut devices));
    println!(
        "engine_cost: an envelope of 3 readings: {:.0} ns wall, {:.0?} ns cpu ({flagged} flagged)",
        cost.0, cost.1
    );
}
