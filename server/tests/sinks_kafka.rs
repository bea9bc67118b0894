//! ingestd with the Kafka sink against a real Kafka-protocol broker (tansu): every
//! acknowledged reading reaches Kafka, through a broker outage and a kill -9 of the server,
//! in order per device. The last tests drive the sink alone with crafted records, for the
//! fraud verdict: the readings carry it, flagged readings make one alert each on the
//! alerts topic, and a reading is confirmed only once its alert is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::kafka::{KafkaRecord, Tansu};
use common::{run_device, Fleet, Server};
use ingestd::config::KafkaConfig;
use ingestd::egress::{Delivery, Progress, SinkInput};
use ingestd::log::RecordKind;
use ingestd::metrics::SinkMetrics;
use ingestd::record::{self, DeadLetterMeta, FraudMeta, ReadingMeta};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// The Kafka sink's `run()` on its own runtime, fed crafted deliveries from the test
/// thread, as the egress thread would hand them over.
struct SinkRun {
    runtime: tokio::runtime::Runtime,
    tx: Option<tokio::sync::mpsc::Sender<Arc<Delivery>>>,
    progress: tokio::sync::mpsc::Receiver<Progress>,
    through: u64,
    refused: Vec<u64>,
    metrics: Arc<SinkMetrics>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SinkRun {
    fn start(tansu: &Tansu) -> SinkRun {
        SinkRun::start_with(KafkaConfig {
            brokers: tansu.brokers(),
            partitions: 3,
            ..KafkaConfig::default()
        })
    }

    fn start_with(config: KafkaConfig) -> SinkRun {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let (progress_tx, progress) =
            tokio::sync::mpsc::channel(ingestd::egress::PROGRESS_QUEUE_REPORTS);
        let metrics = Arc::new(SinkMetrics::new(1));
        let input = SinkInput {
            rx,
            progress: progress_tx,
            metrics: Arc::clone(&metrics),
            shards: 1,
        };
        let task = runtime.spawn(ingestd::egress::kafka::run(config, input));
        SinkRun {
            runtime,
            tx: Some(tx),
            progress,
            through: 0,
            refused: Vec::new(),
            metrics,
            task: Some(task),
        }
    }

    fn send(&self, deliveries: &[Arc<Delivery>]) {
        for delivery in deliveries {
            self.tx
                .as_ref()
                .unwrap()
                .blocking_send(Arc::clone(delivery))
                .unwrap();
        }
    }

    fn collect(&mut self) {
        while let Ok(progress) = self.progress.try_recv() {
            match progress {
                Progress::Through { end, .. } => self.through = self.through.max(end),
                Progress::Refused { offset, .. } => self.refused.push(offset),
            }
        }
    }

    fn wait_through(&mut self, end: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.collect();
            if self.through >= end {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Through reached {} of {end}",
                self.through
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Closes the input and waits for the sink to send what it holds and return.
    fn finish(mut self) -> Vec<u64> {
        self.tx = None;
        let task = self.task.take().unwrap();
        self.runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(60), task).await })
            .expect("run() did not return after its input closed")
            .unwrap();
        self.collect();
        self.refused
    }
}

const BASE_MS: u64 = 1_764_201_600_000;

fn verdict(score: f32, detectors: &[&str], flagged: bool, quarantined: bool) -> Option<FraudMeta> {
    Some(FraudMeta {
        score,
        detectors: detectors.iter().map(|d| (*d).to_string()).collect(),
        flagged,
        quarantined,
    })
}

fn scored(offset: u64, device: &str, seq: u64, fraud: Option<FraudMeta>) -> Arc<Delivery> {
    let meta = ReadingMeta {
        device: device.to_string(),
        seq,
        ts_ms: BASE_MS + seq,
        readings: BTreeMap::from([("co2_ppm".to_string(), 400.0 + seq as f32)]),
        topic: format!("devices/{device}/telemetry"),
        received_ms: BASE_MS + seq + 30,
        node: "node-k".to_string(),
        shard: 0,
        qos: 1,
        region: "eu-west".to_string(),
        project: "forest-7".to_string(),
        location: format!("site-{device}"),
        sensor_type: "ndir".to_string(),
        peer: "10.0.0.1:5000".to_string(),
        connected_ms: BASE_MS,
        fraud,
    };
    let mut payload = Vec::new();
    record::encode(&meta, b"\x01envelope", &mut payload);
    Arc::new(Delivery::new(0, offset, RecordKind::Reading, payload))
}

fn dead_letter(offset: u64, device: &str) -> Arc<Delivery> {
    let meta = DeadLetterMeta {
        reason: "bad_signature".to_string(),
        detail: "signature does not verify".to_string(),
        device: device.to_string(),
        topic: format!("devices/{device}/telemetry"),
        received_ms: BASE_MS,
        node: "node-k".to_string(),
        shard: 0,
        qos: 1,
        peer: "10.0.0.1:5000".to_string(),
        seq: Some(99),
        connected_ms: 0,
    };
    let mut payload = Vec::new();
    record::encode(&meta, b"\x01refused", &mut payload);
    Arc::new(Delivery::new(0, offset, RecordKind::DeadLetter, payload))
}

/// Records by (device, seq); a repeat keeps the first.
fn keyed(records: &[KafkaRecord]) -> BTreeMap<(String, u64), &KafkaRecord> {
    let mut out = BTreeMap::new();
    for record in records {
        assert_eq!(record.key, record.device, "keyed by device");
        out.entry((record.device.clone(), record.seq.expect("seq header")))
            .or_insert(record);
    }
    out
}

#[test]
fn flagged_readings_make_one_alert_each_and_every_reading_carries_its_verdict() {
    let tansu = Tansu::start();
    let batch = vec![
        scored(
            0,
            "dev-a",
            10,
            verdict(0.95, &["bounds", "peers"], true, true),
        ),
        scored(1, "dev-a", 11, verdict(0.05, &[], false, false)),
        // Unscored: a record written before scoring, or with scoring off.
        scored(2, "dev-b", 5, None),
        scored(3, "dev-b", 6, verdict(0.6, &["rate"], true, false)),
        dead_letter(4, "dev-b"),
        // Detectors fired but under the alert threshold: no alert.
        scored(5, "dev-c", 1, verdict(0.3, &["model"], false, false)),
    ];
    let mut sink = SinkRun::start(&tansu);
    sink.send(&batch);
    sink.wait_through(6);
    assert!(sink.finish().is_empty(), "nothing refused");

    let readings = tansu.read_all("telemetry", 5, Duration::from_secs(60));
    let readings = keyed(&readings);
    assert_eq!(readings.len(), 5, "{:?}", readings.keys());
    let fraud =
        |device: &str, seq: u64| readings[&(device.to_string(), seq)].value["fraud"].clone();
    assert_eq!(fraud("dev-a", 10)["quarantined"], true);
    assert_eq!(fraud("dev-a", 10)["flagged"], true);
    assert_eq!(
        fraud("dev-a", 10)["detectors"],
        serde_json::json!(["bounds", "peers"])
    );
    assert_eq!(fraud("dev-a", 11)["score"].as_f64().unwrap() as f32, 0.05);
    assert!(
        fraud("dev-a", 11).get("quarantined").is_none(),
        "false is left out"
    );
    assert_eq!(
        fraud("dev-b", 5),
        serde_json::Value::Null,
        "unscored: no verdict"
    );
    assert_eq!(fraud("dev-c", 1)["detectors"], serde_json::json!(["model"]));
    let dlq = tansu.read_all("telemetry-dlq", 1, Duration::from_secs(60));
    assert_eq!(dlq.len(), 1);

    // Asks for one more than there is, so it reads the whole topic before the deadline.
    let alerts = tansu.read_all("fraud-alerts", 3, Duration::from_secs(5));
    assert_eq!(alerts.len(), 2, "one alert per flagged reading");
    let alerts = keyed(&alerts);
    let keys: Vec<_> = alerts.keys().cloned().collect();
    assert_eq!(keys, [("dev-a".to_string(), 10), ("dev-b".to_string(), 6)]);
    let a = &alerts[&("dev-a".to_string(), 10)].value;
    assert_eq!(a["device"], "dev-a");
    assert_eq!(a["seq"], 10);
    assert_eq!(a["ts_ms"], BASE_MS + 10);
    assert_eq!(a["received_ms"], BASE_MS + 40);
    assert_eq!(a["score"].as_f64().unwrap() as f32, 0.95);
    assert_eq!(a["detectors"], serde_json::json!(["bounds", "peers"]));
    assert_eq!(a["quarantined"], true);
    assert_eq!(a["readings"]["co2_ppm"], 410.0);
    assert_eq!(a["location"], "site-dev-a");
    assert_eq!(a["region"], "eu-west");
    assert_eq!(a["node"], "node-k");
    assert_eq!(a["shard"], 0);
    assert_eq!(a["log_offset"], 0);
    let b = &alerts[&("dev-b".to_string(), 6)].value;
    assert_eq!(b["detectors"], serde_json::json!(["rate"]));
    assert_eq!(b["quarantined"], false);
    assert_eq!(b["log_offset"], 3);

    // A replay of the same records (a restart from an older checkpoint): at least once,
    // so alerts may repeat, but they name the same readings and no other.
    let mut again = SinkRun::start(&tansu);
    again.send(&batch);
    again.wait_through(6);
    assert!(again.finish().is_empty());
    let replayed = tansu.read_all("fraud-alerts", 2, Duration::from_secs(60));
    assert_eq!(keyed(&replayed).keys().cloned().collect::<Vec<_>>(), keys);
}

/// The one test here that needs a fault tansu cannot make: one topic unreachable while
/// another is fine. librdkafka's own mock cluster does it (two brokers, the alerts topic
/// led by the second, which goes down); the sink's code is the same as against any broker.
#[test]
fn a_reading_is_confirmed_only_once_its_alert_is_acknowledged() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(2).unwrap();
    let config = KafkaConfig::default();
    for topic in [
        &config.telemetry_topic,
        &config.dead_letter_topic,
        &config.fraud_topic,
        &config.oracle_topic,
    ] {
        mock.create_topic(topic, 1, 1).unwrap();
        let leader = if *topic == config.fraud_topic { 2 } else { 1 };
        mock.partition_leader(topic, 0, Some(leader)).unwrap();
    }
    let mut sink = SinkRun::start_with(KafkaConfig {
        brokers: mock.bootstrap_servers(),
        ..config
    });
    sink.send(&[scored(0, "dev-a", 1, verdict(0.9, &["bounds"], true, true))]);
    sink.wait_through(1);
    // The alerts topic's leader goes away: a flagged reading's alert cannot be stored,
    // while the readings' topic takes everything.
    mock.broker_down(2).unwrap();
    sink.send(&[
        scored(1, "dev-a", 2, verdict(0.97, &["clone"], true, true)),
        scored(2, "dev-a", 3, verdict(0.0, &[], false, false)),
    ]);
    std::thread::sleep(Duration::from_secs(3));
    sink.collect();
    assert_eq!(
        sink.through, 1,
        "confirmed past a reading whose alert is not stored"
    );
    // When it comes back, its first answer is an error (one the sink retries): the alert
    // is sent again, and only the alert.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    mock.broker_up(2).unwrap();
    sink.wait_through(3);
    let metrics = Arc::clone(&sink.metrics);
    assert!(sink.finish().is_empty());
    assert_eq!(metrics.records.get(), 3);
    assert!(metrics.failures.get() >= 1, "the alert failed once");

    let seqs = |topic: &str| -> Vec<u64> {
        read_mock(&mock.bootstrap_servers(), topic)
            .iter()
            .map(|r| r.seq.unwrap())
            .collect()
    };
    assert_eq!(seqs(&KafkaConfig::default().telemetry_topic), [1, 2, 3]);
    assert_eq!(seqs(&KafkaConfig::default().fraud_topic), [1, 2]);
}

/// Every record of partition 0 of `topic` on a mock cluster (read until 2 s pass with
/// nothing new).
fn read_mock(brokers: &str, topic: &str) -> Vec<KafkaRecord> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "ingestd-tests")
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(2) {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        quiet_since = Instant::now();
        let header = |key: &str| {
            message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == key))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        records.push(KafkaRecord {
            partition: message.partition(),
            offset: message.offset(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            device: header("device").unwrap_or_default(),
            seq: header("seq").and_then(|s| s.parse().ok()),
            value: serde_json::from_slice(message.payload().unwrap_or_default()).unwrap(),
        });
    }
    records
}
