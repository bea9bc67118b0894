//! The cost of the learned model per reading, printed, not asserted (timings vary with the
//! machine). Run in release:
//! `cargo test --release -p ingestd-shards --test model_cost -- --ignored --nocapture`.

use ingestd_shards::fraud::model::{HalfSpaceTrees, ModelConfig, FEATURES};
use std::hint::black_box;
use std::time::Instant;

/// This thread's CPU time in ns (Linux), so a loaded machine's waiting is not counted.
fn cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Wall and CPU ns per iteration of `f` run `n` times.
fn measure(n: usize, mut f: impl FnMut()) -> (f64, Option<f64>) {
    let (wall, cpu) = (Instant::now(), cpu_ns());
    for _ in 0..n {
        f();
    }
    let wall_ns = wall.elapsed().as_nanos() as f64 / n as f64;
    let cpu_per = cpu.zip(cpu_ns()).map(|(a, b)| (b - a) as f64 / n as f64);
    (wall_ns, cpu_per)
}

/// Points from a fixed xorshift stream, roughly standard normal (sum of uniforms).
fn points(n: usize) -> Vec<[f32; FEATURES]> {
    let mut state = 0x1234_5678_9abc_def1u64;
    let mut uniform = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| std::array::from_fn(|_| (0..4).map(|_| uniform()).sum::<f32>() * 1.7 - 3.4))
        .collect()
}

fn best(a: (f64, Option<f64>), b: (f64, Option<f64>)) -> (f64, Option<f64>) {
    let cpu = match (a.1, b.1) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    (a.0.min(b.0), cpu)
}

#[test]
#[ignore = "timing: run in release with --ignored --nocapture"]
fn model_cost() {
    let stream = points(1 << 16);
    // A calibration: a chain of dependent f64 adds, 4 cycles each on current x86 cores.
    let mut acc = 0.0f64;
    let chain = measure(1 << 22, || acc = black_box(acc + 1.0));
    println!(
        "model_cost: calibration: dependent add {:.2} ns wall {:.2?} ns cpu",
        chain.0, chain.1
    );
    for (trees, depth) in [(25, 8), (16, 8), (16, 10)] {
        let config = ModelConfig {
            trees,
            depth,
            ..ModelConfig::default()
        };
        let mut model = HalfSpaceTrees::new(&config);
        for p in &stream[..4096] {
            model.check(p);
        }
        let mut fired = 0usize;
        let mut i = 0usize;
        // The best of a few runs: the machine is shared, the least disturbed run is the
        // closest to the code's own cost.
        let mut check = (f64::MAX, None::<f64>);
        for _ in 0..7 {
            let run = measure(stream.len(), || {
                let p = &stream[i % stream.len()];
                i += 1;
                fired += usize::from(black_box(model.check(black_box(p))).is_some());
            });
            check = best(check, run);
        }
        let mut sum = 0.0f32;
        let mut score = (f64::MAX, None::<f64>);
        for _ in 0..7 {
            let run = measure(stream.len(), || {
                let p = &stream[i % stream.len()];
                i += 1;
                sum += black_box(model.score(black_box(p)));
            });
            score = best(score, run);
        }
        println!(
            "model_cost: trees {} depth {depth} window {}: check {:.0} ns wall {:.0?} ns cpu, score {:.0} ns wall {:.0?} ns cpu, state {} bytes (fired {fired}, score sum {sum:.1})",
            config.trees,
            config.window,
            check.0,
            check.1,
            score.0,
            score.1,
            model.state_bytes()
        );
    }
}
