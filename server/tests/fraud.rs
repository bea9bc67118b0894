//! Fraud scoring through the running server: scores survive a kill -9 exactly, and the
//! verdict never changes the acknowledgement.

mod common;

use common::*;
use ingestd::fraud::rebuild::replay_record;
use ingestd::log::{LogReader, RecordKind};
use ingestd_shards::fraud::engine::{FraudConfig, Scorer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every device publishes as fast as its window allows until `act` has run.
fn under_load(
    server: &mut Server,
    fleet: &Arc<Fleet>,
    first_seq: u64,
    act: impl FnOnce(&mut Server),
) -> Vec<(String, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = server.addr();
    let threads: Vec<_> = (0..fleet.keys.len())
        .map(|i| {
            let stop = Arc::clone(&stop);
            let fleet = Arc::clone(fleet);
            std::thread::spawn(move || {
                let device = fleet.device(i);
                run_device(addr, &fleet, &device, first_seq, 8, &stop)
                    .into_iter()
                    .map(move |s| (device.clone(), s))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    act(server);
    stop.store(true, Ordering::Relaxed);
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("device thread"))
        .collect()
}

#[test]
fn scores_after_a_kill_9_equal_those_of_a_run_without_it() {
    let fleet = Arc::new(Fleet::provision(4));
    let data = fleet.dir.path().join("data");
    // Checkpoints every few records: the restart restores one and replays the log after it.
    let config = fleet.dir.path().join("ingestd.toml");
    std::fs::write(&config, "[log]\ncheckpoint_interval_bytes = 8192\n").expect("config");
    let config = config.display().to_string();
    let mut server = Server::start(&fleet, &data, &["--config", &config]);
    let before = under_load(&mut server, &fleet, 1, Server::kill9);
    assert!(before.len() > 100, "only {} acknowledged", before.len());
    for shard in 0..2 {
        let dir = ingestd::log::shard_dir(&data, shard);
        assert!(
            dir.join(ingestd::fraud::checkpoint::FILE_NAME).exists(),
            "no fraud checkpoint in {}",
            dir.display()
        );
    }
    server.restart();
    // Continue past everything the first run may have stored.
    let after = under_load(&mut server, &fleet, 1_000_000, |server| {
        assert!(server.terminate().success());
    });
    assert!(after.len() > 100, "only {} acknowledged", after.len());

    // A fresh engine over each shard's whole log is the run without the restart.
    let mut compared = 0;
    let mut compared_after = 0;
    let mut fired_after = 0;
    for shard in 0..2 {
        let mut scorer = Scorer::new(FraudConfig::default());
        scorer.set_replaying(true);
        let mut devices = HashMap::new();
        let mut readings = Vec::new();
        let dir = ingestd::log::shard_dir(&data, shard);
        for entry in LogReader::open(&dir, 0).expect("log") {
            let entry = entry.expect("record");
            let Some((meta, scored)) = replay_record(
                &mut scorer,
                &mut devices,
                &entry.kind,
                &entry.payload,
                &mut readings,
            ) else {
                continue;
            };
            assert_eq!(entry.kind, RecordKind::Reading);
            let recorded = meta.fraud.as_ref().expect("every reading is scored");
            let detectors: Vec<String> = scored
                .verdict
                .fired
                .iter()
                .map(|d| d.name().to_string())
                .collect();
            assert_eq!(
                (recorded.score, &recorded.detectors),
                (scored.verdict.score, &detectors),
                "{} seq {}: recorded against replayed",
                meta.device,
                meta.seq
            );
            compared += 1;
            if meta.seq >= 1_000_000 {
                compared_after += 1;
                fired_after += usize::from(!detectors.is_empty());
            }
        }
    }
    assert!(compared > 200, "{compared}");
    assert!(compared_after > 100, "{compared_after}");
    // The test's devices publish a sawtooth and a constant: detectors do fire, so equal
    // scores are not equal zeros.
    assert!(fired_after > 0);
}
