//! Fraud scoring through the running server: scores survive a kill -9 exactly, and the
//! verdict never changes the acknowledgement.

mod common;

use common::*;
use ingestd::fraud::rebuild::replay_record;
use ingestd::log::{LogReader, RecordKind};
use ingestd_codec::envelope::{self, Kind, Reading};
use ingestd_codec::mqtt::{Protocol, QoS, ReasonCode};
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

/// A signed binary envelope with the given readings.
fn envelope_with(fleet: &Fleet, device: &str, seq: u64, readings: &[(Kind, f32)]) -> Vec<u8> {
    let readings: Vec<Reading> = readings.iter().map(|(k, v)| Reading::new(*k, *v)).collect();
    let mut scratch = Vec::new();
    let env = envelope::sign(
        fleet.key(device),
        &topic(device),
        device,
        seq,
        now_ms(),
        &readings,
        &mut scratch,
    )
    .expect("signs");
    let mut out = Vec::new();
    env.encode_binary(&mut out);
    out
}

/// The acknowledgement's bytes exactly as the server sent them.
fn raw_reply(client: &mut Client) -> Vec<u8> {
    use std::io::Read;
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut header = [0u8; 2];
    client.stream.read_exact(&mut header).expect("ack header");
    let mut body = vec![0u8; usize::from(header[1])];
    client.stream.read_exact(&mut body).expect("ack body");
    [header.to_vec(), body].concat()
}

#[test]
fn the_acknowledgement_never_depends_on_the_verdict() {
    let fleet = Fleet::provision(2);
    let data = fleet.dir.path().join("data");
    let mut server = Server::start(&fleet, &data, &[]);
    for (i, protocol) in [Protocol::V311, Protocol::V5].into_iter().enumerate() {
        let device = fleet.device(i);
        let (mut client, reply) = Client::connect(server.addr(), &fleet, &device, protocol);
        assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));
        let honest = envelope_with(
            &fleet,
            &device,
            1,
            &[(Kind::Co2Ppm, 431.0), (Kind::HumidityRhPct, 48.2)],
        );
        // Out of physics on its first reading: bounds and physics, quarantined.
        let forged = envelope_with(
            &fleet,
            &device,
            2,
            &[(Kind::Co2Ppm, 431.0), (Kind::HumidityRhPct, 148.0)],
        );
        client.publish(&topic(&device), &honest, QoS::AtLeastOnce, 7);
        let honest_ack = raw_reply(&mut client);
        client.publish(&topic(&device), &forged, QoS::AtLeastOnce, 7);
        let forged_ack = raw_reply(&mut client);
        assert_eq!(honest_ack, forged_ack, "{protocol:?}");
    }
    assert!(server.terminate().success());
    let verdicts: HashMap<(String, u64), serde_json::Value> = read_log(&data, 2)
        .into_iter()
        .filter(|r| r.kind == RecordKind::Reading)
        .map(|r| {
            let key = (
                r.meta["device"].as_str().expect("device").to_string(),
                r.meta["seq"].as_u64().expect("seq"),
            );
            (key, r.meta["fraud"].clone())
        })
        .collect();
    for i in 0..2 {
        let device = fleet.device(i);
        let honest = &verdicts[&(device.clone(), 1)];
        assert!(honest["flagged"].is_null(), "{honest}");
        let forged = &verdicts[&(device.clone(), 2)];
        assert_eq!(forged["quarantined"], true, "{forged}");
        let detectors = forged["detectors"].as_array().expect("detectors");
        assert!(detectors.iter().any(|d| d == "bounds"), "{forged}");
        assert!(detectors.iter().any(|d| d == "physics"), "{forged}");
    }
}

#[test]
fn a_device_keeps_its_scoring_state_when_the_shard_count_changes() {
    let fleet = Fleet::provision(8);
    let data = fleet.dir.path().join("data");
    // Devices whose home changes from 2 shards to 3.
    let moved: Vec<String> = (0..8)
        .map(|i| fleet.device(i))
        .filter(|d| ingestd_shards::home_shard(d, 2) != ingestd_shards::home_shard(d, 3))
        .take(3)
        .collect();
    assert!(!moved.is_empty());
    let publish = |server: &Server,
                   device: &str,
                   seqs: std::ops::RangeInclusive<u64>,
                   co2: &dyn Fn(u64) -> f32| {
        let (mut client, reply) = Client::connect(server.addr(), &fleet, device, Protocol::V5);
        assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));
        for seq in seqs {
            let payload = envelope_with(
                &fleet,
                device,
                seq,
                &[
                    (Kind::Co2Ppm, co2(seq)),
                    (Kind::TemperatureC, 21.0 + (seq % 7) as f32 * 0.03),
                ],
            );
            client.publish(&topic(device), &payload, QoS::AtLeastOnce, 1);
            assert_eq!(client.read(), Reply::PubAck(1, ReasonCode::Success));
        }
    };
    let honest = |seq: u64| 420.0 + ((seq * 37) % 11) as f32;
    let mut server = Server::start_with_shards(&fleet, &data, 2, &[]);
    for device in &moved {
        publish(&server, device, 1..=80, &honest);
    }
    assert!(server.terminate().success());
    let server = Server::start_with_shards(&fleet, &data, 3, &[]);
    // A jump that only a device past its warm-up can be flagged for (a fresh state would
    // be learning: bounds, physics and peers only, and 2,000 ppm is inside bounds).
    for device in &moved {
        publish(&server, device, 81..=81, &|_| 2_000.0);
    }
    drop(server);
    let records = read_log(&data, 3);
    for device in &moved {
        let jump = records
            .iter()
            .find(|r| {
                r.kind == RecordKind::Reading
                    && r.meta["device"] == device.as_str()
                    && r.meta["seq"] == 81
            })
            .expect("the jump is in the log");
        assert_eq!(
            jump.shard,
            ingestd_shards::home_shard(device, 3),
            "{device} on its new home"
        );
        let fraud = &jump.meta["fraud"];
        assert_eq!(fraud["flagged"], true, "{device}: {fraud}");
        let detectors = fraud["detectors"].as_array().expect("detectors");
        assert!(
            detectors.iter().any(|d| d == "deviation"),
            "{device}: {fraud}"
        );
    }
}
