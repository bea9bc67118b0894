//! ingestd with the Kafka sink against a real Kafka-protocol broker (tansu): every
//! acknowledged reading reaches Kafka, through a broker outage and a kill -9 of the server,
//! in order per device.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::kafka::{KafkaRecord, Tansu};
use common::{run_device, Fleet, Server};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn kafka_config(dir: &Path, tansu: &Tansu, extra: &str) -> String {
    let path = dir.join("ingestd.toml");
    std::fs::write(
        &path,
        format!(
            "[kafka]\nbrokers = \"{}\"\npartitions = 3\nunreachable_after_ms = 1000\n{extra}",
            tansu.brokers()
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Devices publishing QoS 1 until `stop`; each returns what the server acknowledged.
fn start_devices(
    server: &Server,
    fleet: &Arc<Fleet>,
    devices: usize,
    stop: &Arc<AtomicBool>,
    acked_total: &Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<(String, Vec<u64>)>> {
    (0..devices)
        .map(|i| {
            let fleet = Arc::clone(fleet);
            let stop = Arc::clone(stop);
            let addr = server.addr();
            let acked_total = Arc::clone(acked_total);
            std::thread::spawn(move || {
                let device = fleet.device(i);
                let acked = run_device(addr, &fleet, &device, 1, 8, &stop);
                acked_total.fetch_add(acked.len() as u64, Ordering::Relaxed);
                (device, acked)
            })
        })
        .collect()
}

type Pairs = BTreeSet<(String, u64)>;
type Orders = HashMap<String, Vec<u64>>;

/// (device, seq) pairs in Kafka, and per device the sequence in first-seen order.
fn by_device(records: &[KafkaRecord]) -> (Pairs, Orders) {
    let mut sorted: Vec<&KafkaRecord> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut seen = BTreeSet::new();
    let mut order: HashMap<String, Vec<u64>> = HashMap::new();
    for record in sorted {
        let seq = record.seq.expect("seq header");
        assert_eq!(record.key, record.device, "keyed by device");
        if seen.insert((record.device.clone(), seq)) {
            order.entry(record.device.clone()).or_default().push(seq);
        }
    }
    (seen, order)
}

fn assert_in_order(order: &HashMap<String, Vec<u64>>) {
    for (device, seqs) in order {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{device}: Kafka order differs from the device's: {seqs:?}"
        );
    }
}

#[test]
fn every_acknowledged_reading_is_in_kafka_once_keyed_and_in_order() {
    let tansu = Tansu::start();
    let fleet = Arc::new(Fleet::provision(8));
    let data = tempfile::tempdir().unwrap();
    let config = kafka_config(data.path(), &tansu, "");
    let server = Server::start(&fleet, data.path(), &["--config", &config]);
    let topics = tansu.topics();
    for topic in [
        "telemetry",
        "telemetry-dlq",
        "fraud-alerts",
        "oracle-reports",
    ] {
        assert!(
            topics.contains(&topic.to_string()),
            "{topic} created: {topics:?}"
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let devices = start_devices(&server, &fleet, 8, &stop, &total);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeSet::new();
    for handle in devices {
        let (device, seqs) = handle.join().unwrap();
        assert!(!seqs.is_empty(), "{device} got acknowledgements");
        acked.extend(seqs.into_iter().map(|s| (device.clone(), s)));
    }
    // A reading from another device's topic becomes a dead letter and goes to the DLQ.
    server.wait_sinks_drained("sink=\"kafka\"", Duration::from_secs(30));
    let logged: BTreeSet<(String, u64)> = common::readings(data.path()).into_iter().collect();
    let records = tansu.read_all("telemetry", logged.len(), Duration::from_secs(60));
    let (in_kafka, order) = by_device(&records);
    assert!(
        acked.len() > 100,
        "a loaded run: {} acknowledged",
        acked.len()
    );
    let missing: Vec<_> = acked.difference(&in_kafka).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in Kafka: {missing:?}"
    );
    assert_eq!(in_kafka, logged, "Kafka holds exactly the log's readings");
    assert_eq!(
        records.len(),
        in_kafka.len(),
        "no duplicates in a run without faults"
    );
    assert_in_order(&order);
    let sample = &records[0];
    assert_eq!(sample.value["device"], sample.device.as_str());
    assert!(sample.value["envelope"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
    assert!(server.metric("ingestd_sink_records_total", "sink=\"kafka\"") >= logged.len() as u64);
}

#[test]
fn a_kafka_outage_of_30_s_loses_nothing_and_the_backlog_drains_in_order() {
    // The broker is frozen for 30 s (common/kafka.rs says why not killed): it answers
    // nothing, producer requests time out, and the records wait in the durable log.
    let tansu = Tansu::start();
    let fleet = Arc::new(Fleet::provision(6));
    let data = tempfile::tempdir().unwrap();
    let config = kafka_config(data.path(), &tansu, "");
    let server = Server::start(&fleet, data.path(), &["--config", &config]);
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let devices = start_devices(&server, &fleet, 6, &stop, &total);
    std::thread::sleep(Duration::from_secs(3));
    let before_outage = server.metric("ingestd_messages_accepted_total", "");
    tansu.freeze();
    std::thread::sleep(Duration::from_secs(30));
    let during_outage = server.metric("ingestd_messages_accepted_total", "") - before_outage;
    assert!(
        during_outage > 100,
        "readings kept being accepted (and acknowledged on the log) while Kafka was down: {during_outage}"
    );
    assert_eq!(server.metric("ingestd_sink_up", "sink=\"kafka\""), 0);
    assert!(server.metric("ingestd_sink_backlog_records", "sink=\"kafka\"") > 0);
    tansu.thaw();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeSet::new();
    for handle in devices {
        let (device, seqs) = handle.join().unwrap();
        acked.extend(seqs.into_iter().map(|s| (device.clone(), s)));
    }
    server.wait_sinks_drained("sink=\"kafka\"", Duration::from_secs(120));
    let logged: BTreeSet<(String, u64)> = common::readings(data.path()).into_iter().collect();
    let records = tansu.read_all("telemetry", logged.len(), Duration::from_secs(120));
    let (in_kafka, order) = by_device(&records);
    let missing: Vec<_> = acked.difference(&in_kafka).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in Kafka after the outage: {missing:?}"
    );
    assert_eq!(in_kafka, logged);
    assert_in_order(&order);
    assert_eq!(server.metric("ingestd_sink_up", "sink=\"kafka\""), 1);
}

#[test]
fn kill_9_during_a_kafka_run_loses_nothing_acknowledged() {
    let tansu = Tansu::start();
    let fleet = Arc::new(Fleet::provision(6));
    let data = tempfile::tempdir().unwrap();
    let config = kafka_config(data.path(), &tansu, "");
    let mut server = Server::start(&fleet, data.path(), &["--config", &config]);
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let devices = start_devices(&server, &fleet, 6, &stop, &total);
    std::thread::sleep(Duration::from_secs(3));
    server.kill9();
    let mut acked: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for handle in devices {
        let (device, seqs) = handle.join().unwrap();
        acked.insert(device, seqs);
    }
    server.restart();
    server.wait_sinks_drained("sink=\"kafka\"", Duration::from_secs(60));
    let logged: BTreeSet<(String, u64)> = common::readings(data.path()).into_iter().collect();
    let records = tansu.read_all("telemetry", logged.len(), Duration::from_secs(60));
    let (in_kafka, order) = by_device(&records);
    let mut count = 0;
    for (device, seqs) in &acked {
        for seq in seqs {
            count += 1;
            assert!(
                in_kafka.contains(&(device.clone(), *seq)),
                "{device} seq {seq} was acknowledged before the kill and is not in Kafka"
            );
        }
    }
    assert!(count > 100, "a loaded run: {count} acknowledged");
    assert_eq!(in_kafka, logged);
    assert_in_order(&order);
}

#[test]
fn missing_topics_stop_the_start_when_creation_is_off() {
    let tansu = Tansu::start();
    let fleet = Fleet::provision(1);
    let data = tempfile::tempdir().unwrap();
    let config = kafka_config(data.path(), &tansu, "create_topics = false\n");
    let output = std::process::Command::new(common::BIN)
        .args([
            "serve",
            "--config",
            &config,
            "--listen",
            &format!("127.0.0.1:{}", common::free_port()),
            "--metrics-listen",
            &format!("127.0.0.1:{}", common::free_port()),
            "--data-dir",
            &data.path().display().to_string(),
            "--registry",
            &fleet.registry().display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("kafka.create_topics") && stderr.contains("telemetry"),
        "names the key and the topic: {stderr}"
    );
}
