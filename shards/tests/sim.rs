//! A seeded simulation of the shard core, in the manner of TigerBeetle's VOPR: the real
//! [`Core`](ingestd_shards::core::Core) runs under a fake clock with simulated devices,
//! attackers, a durable log whose commits are slow or fail, a Kafka sink that lags or
//! disappears, and restarts that keep only what was committed; after every step the
//! promises in `sim/oracle.rs` are checked from the bytes the devices receive and the
//! records the log holds.
//!
//! - `cargo test -p ingestd-shards --test sim`: the fixed seeds (`SEEDS_DEFAULT`).
//! - `SIM_SEED=<seed>`: exactly that run again (a failure prints its seed).
//! - `SIM_SEEDS=<count>` (from `SIM_SEED_BASE`, default 1000), `SIM_STEPS=<steps>`: a
//!   longer search.
//!
//! Limits: one shard (hand-off is not simulated); no TLS or certificates; no registry
//! changes; the sink confirms only what is durable.

#[path = "sim/oracle.rs"]
mod oracle;
#[path = "sim/rng.rs"]
mod rng;
#[path = "sim/world.rs"]
mod world;

const SEEDS_DEFAULT: u64 = 32;
const STEPS_DEFAULT: u64 = 2_000;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={value:?} is not a number"),
    }
}

#[test]
fn simulation() {
    let steps = env_u64("SIM_STEPS").unwrap_or(STEPS_DEFAULT);
    let seeds: Vec<u64> = match (env_u64("SIM_SEED"), env_u64("SIM_SEEDS")) {
        (Some(seed), _) => vec![seed],
        (None, Some(count)) => {
            let base = env_u64("SIM_SEED_BASE").unwrap_or(1_000);
            (base..base + count).collect()
        }
        (None, None) => (1..=SEEDS_DEFAULT).collect(),
    };
    let mut total = world::Summary::default();
    for &seed in &seeds {
        let mut world = world::World::new(seed);
        let setup = world.setup();
        world.run(steps);
        let s = &world.summary;
        if seeds.len() == 1 {
            println!("seed {seed}: {setup}");
            println!("seed {seed}: {s:?}");
        }
        total.steps += s.steps;
        total.sent += s.sent;
        total.acked += s.acked;
        total.readings += s.readings;
        total.dead_letters += s.dead_letters;
        total.restarts += s.restarts;
        total.commits_failed += s.commits_failed;
        total.connects_refused += s.connects_refused;
        total.lockouts += s.lockouts;
        total.credential_replays_after_restart += s.credential_replays_after_restart;
        total.takeovers += s.takeovers;
        total.keepalive_timeouts += s.keepalive_timeouts;
        total.gate_bypasses += s.gate_bypasses;
        total.disk_full += s.disk_full;
    }
    println!(
        "sim: {} seeds x {steps} steps: {} sent, {} acknowledged, {} readings, {} dead letters, \
         {} restarts, {} failed commits, {} full disks, {} takeovers, {} keep-alive timeouts, \
         {} gate bypasses, {} connects refused ({} genuine devices locked out, {} credentials \
         accepted again after a restart)",
        seeds.len(),
        total.sent,
        total.acked,
        total.readings,
        total.dead_letters,
        total.restarts,
        total.commits_failed,
        total.disk_full,
        total.takeovers,
        total.keepalive_timeouts,
        total.gate_bypasses,
        total.connects_refused,
        total.lockouts,
        total.credential_replays_after_restart,
    );
}
