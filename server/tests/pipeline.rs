//! The whole pipeline against the real services: loadgen -> ingestd -> Kafka (tansu) +
//! InfluxDB + PostgreSQL. Every acknowledged reading is in Kafka exactly once per (device,
//! seq) after dedupe, in InfluxDB, and counted in PostgreSQL; counts compared exactly. Then
//! InfluxDB is stopped and restarted in a loaded run, and nothing is missing there. Last, a
//! labelled fraud run: the fraud verdicts of the log reach every sink exactly, and the
//! fraudulent devices were acknowledged like the honest ones.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::influx::Influx;
use common::kafka::Tansu;
use common::postgres::Postgres;
use common::{Fleet, Server};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// loadgen, built next to ingestd when missing.
fn loadgen_binary() -> PathBuf {
    let dir = Path::new(common::BIN).parent().unwrap().to_path_buf();
    let bin = dir.join("loadgen");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let profile = if dir.ends_with("release") {
            vec!["--release"]
        } else {
            vec![]
        };
        let status = Command::new(cargo)
            .args(["build", "-p", "loadgen"])
            .args(profile)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .unwrap();
        assert!(status.success(), "cargo build -p loadgen failed");
    }
    bin
}

struct Services {
    tansu: Tansu,
    influx: Influx,
    pg: Postgres,
}

impl Services {
    fn start() -> Services {
        let influx = Influx::new();
        influx.create_database("ingestd");
        Services {
            tansu: Tansu::start(),
            influx,
            pg: Postgres::new(),
        }
    }

    fn config(&self, dir: &Path) -> String {
        let path = dir.join("ingestd.toml");
        std::fs::write(
            &path,
            format!(
                "[kafka]\nbrokers = \"{}\"\npartitions = 3\n\
                 [influxdb]\nurl = \"{}\"\ndatabase = \"ingestd\"\nretry_backoff_max_ms = 500\n\
                 [postgres]\nurl = \"{}\"\nregistry = false\nflush_interval_ms = 20\n",
                self.tansu.brokers(),
                self.influx.url(),
                self.pg.url()
            ),
        )
        .unwrap();
        path.display().to_string()
    }
}

/// Runs loadgen against the server; returns the acknowledged (device, seq) pairs.
fn run_loadgen(
    server: &Server,
    fleet: &Fleet,
    devices: usize,
    rate: u64,
    seconds: u64,
) -> BTreeSet<(String, u64)> {
    run_loadgen_with(server, fleet, devices, rate, seconds, &[]).0
}

/// Runs loadgen (QoS 1) with `extra` flags; returns the acknowledged (device, seq) pairs
/// and its JSON report (loadgen/src/report.rs).
fn run_loadgen_with(
    server: &Server,
    fleet: &Fleet,
    devices: usize,
    rate: u64,
    seconds: u64,
    extra: &[&str],
) -> (BTreeSet<(String, u64)>, serde_json::Value) {
    let out = fleet
        .dir
        .path()
        .join(format!("acked-{}.txt", common::now_ms()));
    let report = fleet.dir.path().join("report.json");
    let status = Command::new(loadgen_binary())
        .args([
            "--quiet",
            "--target",
            &server.addr().to_string(),
            "--devices-dir",
            &fleet.dir.path().join("devices").display().to_string(),
            "--devices",
            &devices.to_string(),
            "--rate",
            &rate.to_string(),
            "--duration",
            &seconds.to_string(),
            "--qos",
            "1",
            "--threads",
            "1",
            "--json",
            &report.display().to_string(),
            "--acked-out",
            &out.display().to_string(),
        ])
        .args(extra)
        .status()
        .unwrap();
    assert!(status.success(), "loadgen failed: {status}");
    let acked = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| {
            let (device, seq) = line.split_once(' ').unwrap();
            (device.to_string(), seq.parse().unwrap())
        })
        .collect();
    let report = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    (acked, report)
}

/// What the log says each sink must hold: readings per (device, seq), points per
/// measurement, readings per device.
struct Expected {
    readings: BTreeSet<(String, u64)>,
    points: BTreeMap<String, u64>,
    per_device: BTreeMap<String, i64>,
}

fn expected(data: &Path) -> Expected {
    let mut expected = Expected {
        readings: BTreeSet::new(),
        points: BTreeMap::new(),
        per_device: BTreeMap::new(),
    };
    for record in common::read_log(data, 2) {
        if record.kind != ingestd::log::RecordKind::Reading {
            continue;
        }
        let device = record.meta["device"].as_str().unwrap().to_string();
        let seq = record.meta["seq"].as_u64().unwrap();
        expected.readings.insert((device.clone(), seq));
        *expected.per_device.entry(device).or_default() += 1;
        for name in record.meta["readings"].as_object().unwrap().keys() {
            *expected.points.entry(name.clone()).or_default() += 1;
        }
    }
    expected
}

fn check_everywhere(services: &Services, data: &Path, acked: &BTreeSet<(String, u64)>) {
    let expected = expected(data);
    assert!(
        acked.len() > 500,
        "a loaded run: {} acknowledged",
        acked.len()
    );
    let missing: Vec<_> = acked.difference(&expected.readings).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in the log: {missing:?}"
    );

    // Kafka: exactly the log's readings, after dedupe by (device, seq).
    let records = services.tansu.read_all(
        "telemetry",
        expected.readings.len(),
        Duration::from_secs(120),
    );
    let in_kafka: BTreeSet<(String, u64)> = records
        .iter()
        .map(|r| (r.device.clone(), r.seq.unwrap()))
        .collect();
    let missing: Vec<_> = acked.difference(&in_kafka).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in Kafka: {missing:?}"
    );
    assert_eq!(
        in_kafka, expected.readings,
        "Kafka after dedupe = the log's readings"
    );

    // InfluxDB: every reading value is a point.
    for (measurement, count) in &expected.points {
        assert_eq!(
            services.influx.count_points("ingestd", measurement),
            *count,
            "InfluxDB points of {measurement}"
        );
    }

    // PostgreSQL: each device's readings counted exactly.
    for (device, count) in &expected.per_device {
        let counted = services.pg.query_i64(&format!(
            "SELECT coalesce(sum(readings), 0) FROM device_stats WHERE device_id = '{device}'"
        ));
        assert_eq!(counted, *count, "PostgreSQL readings of {device}");
    }
}

#[test]
fn loadgen_to_kafka_influxdb_and_postgres_nothing_acknowledged_is_missing() {
    let services = Services::start();
    let fleet = Fleet::provision(20);
    let data = fleet.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = services.config(&data);
    let server = Server::start(&fleet, &data, &["--config", &config]);
    let acked = run_loadgen(&server, &fleet, 20, 1500, 5);
    server.wait_sinks_drained("", Duration::from_secs(120));
    check_everywhere(&services, &data, &acked);
    for sink in ["kafka", "influxdb", "postgres"] {
        assert!(
            server.metric("ingestd_sink_records_total", &format!("sink=\"{sink}\"")) > 0,
            "{sink} metrics"
        );
        assert_eq!(
            server.metric("ingestd_sink_up", &format!("sink=\"{sink}\"")),
            1,
            "{sink} up"
        );
        let label = format!("sink=\"{sink}\"");
        assert!(
            server.metric("ingestd_sink_visible_seconds_count", &label) > 0,
            "{sink}: receipt -> stored latency recorded"
        );
    }
}

#[test]
fn influxdb_stopped_and_restarted_in_a_loaded_run_misses_nothing() {
    let mut services = Services::start();
    let fleet = Fleet::provision(20);
    let data = fleet.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = services.config(&data);
    let server = Server::start(&fleet, &data, &["--config", &config]);
    let acked = std::thread::scope(|scope| {
        let load = scope.spawn(|| run_loadgen(&server, &fleet, 20, 1500, 12));
        // loadgen signs its messages before it starts publishing: wait for the load.
        let deadline = Instant::now() + Duration::from_secs(120);
        while server.metric("ingestd_sink_records_total", "sink=\"influxdb\"") < 1000 {
            assert!(Instant::now() < deadline, "the load never reached InfluxDB");
            std::thread::sleep(Duration::from_millis(50));
        }
        services.influx.stop();
        // While it is down its records wait in the log: the backlog grows.
        let deadline = Instant::now() + Duration::from_secs(8);
        while server.metric("ingestd_sink_backlog_records", "sink=\"influxdb\"") == 0 {
            assert!(
                Instant::now() < deadline,
                "no InfluxDB backlog while it is down: {}",
                server
                    .metrics_text()
                    .lines()
                    .filter(|l| !l.contains("_bucket") && !l.starts_with('#'))
                    .filter(|l| l.starts_with("ingestd_sink_")
                        || l.starts_with("ingestd_messages_accepted")
                        || l.starts_with("ingestd_connections_open"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(server.metric("ingestd_sink_up", "sink=\"influxdb\""), 0);
        assert!(server.metric("ingestd_sink_backlog_records", "sink=\"influxdb\"") > 0);
        services.influx.start();
        load.join().unwrap()
    });
    server.wait_sinks_drained("", Duration::from_secs(120));
    check_everywhere(&services, &data, &acked);
}

/// One device's line of loadgen's truth file (loadgen/README.md).
struct Truth {
    scenario: String,
    /// The sequence number of the device's first fraudulent reading; none when normal.
    onset_seq: Option<u64>,
    params: String,
}

fn read_truth(path: &Path) -> BTreeMap<String, Truth> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("device,scenario,onset_seq,params"));
    lines
        .map(|line| {
            let mut fields = line.splitn(4, ',');
            let device = fields.next().unwrap().to_string();
            let scenario = fields.next().unwrap().to_string();
            let onset_seq = Some(fields.next().unwrap())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap());
            let params = fields.next().unwrap_or("").to_string();
            (
                device,
                Truth {
                    scenario,
                    onset_seq,
                    params,
                },
            )
        })
        .collect()
}

/// A reading's fraud verdict as the durable log holds it: what every sink must show.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    /// The record's `fraud` object exactly (the Kafka readings topic carries it as is).
    json: serde_json::Value,
    score: f32,
    detectors: Vec<String>,
    flagged: bool,
    quarantined: bool,
    /// The reading's kinds: the InfluxDB measurements its points are in.
    kinds: Vec<String>,
}

impl Verdict {
    fn fired(&self, detector: &str) -> bool {
        self.detectors.iter().any(|d| d == detector)
    }
}

/// Detector names from a JSON array (absent: none fired).
fn detector_list(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| a.iter().map(|d| d.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Every reading in the log with its verdict; every reading must have one (scoring is on
/// by default).
fn log_verdicts(data: &Path) -> BTreeMap<(String, u64), Verdict> {
    let mut verdicts = BTreeMap::new();
    for record in common::read_log(data, 2) {
        assert_eq!(
            record.kind,
            ingestd::log::RecordKind::Reading,
            "nothing in this run is refused: {}",
            record.meta
        );
        let meta = &record.meta;
        let fraud = &meta["fraud"];
        assert!(fraud.is_object(), "a reading without a verdict: {meta}");
        let verdict = Verdict {
            json: fraud.clone(),
            score: fraud["score"].as_f64().unwrap() as f32,
            detectors: detector_list(&fraud["detectors"]),
            flagged: fraud["flagged"] == true,
            quarantined: fraud["quarantined"] == true,
            kinds: meta["readings"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect(),
        };
        let key = (
            meta["device"].as_str().unwrap().to_string(),
            meta["seq"].as_u64().unwrap(),
        );
        assert!(verdicts.insert(key, verdict).is_none(), "{meta}: twice");
    }
    verdicts
}

/// Fails naming the first differences when a sink's view differs from the log's (the whole
/// maps, thousands of entries, would bury them).
fn assert_same<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    actual: &BTreeMap<K, V>,
    expected: &BTreeMap<K, V>,
    what: &str,
) {
    let missing: Vec<_> = expected
        .iter()
        .filter(|(k, _)| !actual.contains_key(k))
        .take(5)
        .collect();
    let extra: Vec<_> = actual
        .iter()
        .filter(|(k, _)| !expected.contains_key(k))
        .take(5)
        .collect();
    let differing: Vec<_> = expected
        .iter()
        .filter_map(|(k, v)| Some((k, actual.get(k)?, v)))
        .filter(|(_, a, e)| a != e)
        .take(5)
        .map(|(k, a, e)| format!("{k:?}: {a:?}, the log has {e:?}"))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differing.is_empty(),
        "{what}: {} entries, the log says {}; missing {missing:?}; not in the log {extra:?}; \
         differing {differing:#?}",
        actual.len(),
        expected.len()
    );
}

/// [`assert_same`] for sets.
fn assert_same_set<K: Ord + Clone + std::fmt::Debug>(
    actual: &BTreeSet<K>,
    expected: &BTreeSet<K>,
    what: &str,
) {
    let as_map = |set: &BTreeSet<K>| set.iter().map(|k| (k.clone(), ())).collect();
    assert_same(&as_map(actual), &as_map(expected), what);
}

#[test]
fn a_labelled_fraud_run_lands_alerts_in_every_sink() {
    let started = Instant::now();
    let services = Services::start();
    let fleet = Fleet::provision(20);
    let data = fleet.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = services.config(&data);
    let server = Server::start(&fleet, &data, &["--config", &config]);
    // 20 devices at 50 readings/s each for 6 s: about 300 readings a device. A fifth of them
    // (exactly 4: loadgen assigns labels by largest remainder) turn out_of_bounds at a
    // reading drawn in [60, 120], past the server's 30-reading fraud warm-up. The seed fixes
    // which devices and their fault values, so a failure can be rerun as it was.
    let truth_path = fleet.dir.path().join("truth.csv");
    let (acked, report) = run_loadgen_with(
        &server,
        &fleet,
        20,
        1000,
        6,
        &[
            "--mqtt-version",
            "5",
            "--scenario",
            "normal=0.8,out_of_bounds=0.2",
            "--seed",
            "20251201",
            "--warmup-readings",
            "60",
            "--onset-span-readings",
            "60",
            "--truth",
            &truth_path.display().to_string(),
        ],
    );
    server.wait_sinks_drained("", Duration::from_secs(60));

    let truth = read_truth(&truth_path);
    let fraudulent: BTreeMap<&str, u64> = truth
        .iter()
        .filter(|(_, t)| t.scenario == "out_of_bounds")
        .map(|(device, t)| (device.as_str(), t.onset_seq.unwrap()))
        .collect();
    let normal: BTreeSet<&str> = truth
        .iter()
        .filter(|(_, t)| t.scenario == "normal")
        .map(|(device, _)| device.as_str())
        .collect();
    assert_eq!((fraudulent.len(), normal.len()), (4, 16), "the truth file");

    // The log is the reference: every reading scored once, nothing refused.
    let log = log_verdicts(&data);
    let in_log: BTreeSet<(String, u64)> = log.keys().cloned().collect();
    assert_same_set(&acked, &in_log, "acknowledged readings");
    let flagged: BTreeMap<&(String, u64), &Verdict> =
        log.iter().filter(|(_, v)| v.flagged).collect();
    let quarantined: BTreeSet<&(String, u64)> = log
        .iter()
        .filter(|(_, v)| v.quarantined)
        .map(|(k, _)| k)
        .collect();
    let label = |device: &str| truth[device].scenario.as_str();

    // PUBACKs: loadgen counts every acknowledgement with a v5 reason code >= 0x80 as
    // refused, by code; everything else as acked. Nothing refused, nothing lost, and each
    // scenario's devices had every message they sent acknowledged.
    assert_eq!(
        report["refused"], 0,
        "refused: {}",
        report["refused_reasons"]
    );
    assert_eq!(report["refused_reasons"], serde_json::json!({}));
    assert_eq!(report["lost"], 0, "lost");
    assert_eq!(report["errors"], serde_json::json!({}), "loadgen errors");
    assert_eq!(report["acked"], report["sent"]);
    assert_eq!(report["acked"].as_u64().unwrap(), acked.len() as u64);
    for scenario in ["normal", "out_of_bounds"] {
        let acked_in_scenario = acked.iter().filter(|(d, _)| label(d) == scenario).count();
        assert_eq!(
            report["scenarios"][scenario]["sent"].as_u64().unwrap(),
            acked_in_scenario as u64,
            "{scenario}: sent = positively acknowledged"
        );
    }

    // The engine on the ground truth: a fraudulent device's onset reading is always out of
    // bounds (later ones by chance), nothing of it before the onset is, and no honest
    // device ever is.
    for (device, onset) in &fraudulent {
        let params = &truth[*device].params;
        let at_onset = log
            .get(&(device.to_string(), *onset))
            .unwrap_or_else(|| panic!("{device}: its onset reading {onset} is not in the log"));
        assert!(
            at_onset.flagged && at_onset.fired("bounds"),
            "{device} ({params}): onset reading {onset} scored {:?}",
            at_onset.json
        );
        for ((d, seq), verdict) in &log {
            if d == device && *seq < *onset {
                assert!(!verdict.fired("bounds"), "{device} {seq} before its onset");
            }
        }
        assert!(
            log.iter()
                .any(|((d, seq), v)| d == device && *seq >= *onset && v.quarantined),
            "{device} ({params}): no reading quarantined after its onset"
        );
    }
    for ((device, seq), verdict) in &log {
        assert!(
            !(normal.contains(device.as_str()) && verdict.fired("bounds")),
            "honest {device} {seq}: {:?}",
            verdict.json
        );
    }

    // PostgreSQL: one alert row per flagged reading of the log and no other, with its
    // score, detectors and quarantine mark.
    let rows = services.pg.query_text(
        "SELECT device_id, seq, score, array_to_string(detectors, ','), quarantined \
         FROM alerts ORDER BY device_id, seq",
    );
    let mut in_pg: BTreeMap<(String, u64), (f32, Vec<String>, bool)> = BTreeMap::new();
    for row in rows.lines().filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = row.split('|').collect();
        let key = (cols[0].to_string(), cols[1].parse().unwrap());
        let detectors = cols[3].split(',').map(str::to_string).collect();
        let value = (cols[2].parse().unwrap(), detectors, cols[4] == "t");
        assert!(in_pg.insert(key, value).is_none(), "two rows: {row}");
    }
    let expected_pg: BTreeMap<(String, u64), (f32, Vec<String>, bool)> = flagged
        .iter()
        .map(|(k, v)| ((*k).clone(), (v.score, v.detectors.clone(), v.quarantined)))
        .collect();
    assert_same(
        &in_pg,
        &expected_pg,
        "PostgreSQL alerts (score, detectors, quarantined)",
    );
    for (device, onset) in &fraudulent {
        let bounds_alerts = services.pg.query_i64(&format!(
            "SELECT count(*) FROM alerts WHERE device_id = '{device}' AND seq >= {onset} \
             AND detectors @> '{{bounds}}'"
        ));
        let quarantined_alerts = services.pg.query_i64(&format!(
            "SELECT count(*) FROM alerts WHERE device_id = '{device}' AND seq >= {onset} \
             AND quarantined"
        ));
        assert!(
            bounds_alerts > 0 && quarantined_alerts > 0,
            "{device} in PostgreSQL"
        );
    }
    for device in truth.keys() {
        let count = |what: fn(&Verdict) -> bool| {
            log.iter()
                .filter(|((d, _), v)| d == device && what(v))
                .count() as i64
        };
        let stats = services.pg.query_text(&format!(
            "SELECT sum(readings) || '|' || sum(flagged) || '|' || sum(quarantined) \
             FROM device_stats WHERE device_id = '{device}'"
        ));
        assert_eq!(
            stats,
            format!(
                "{}|{}|{}",
                count(|_| true),
                count(|v| v.flagged),
                count(|v| v.quarantined)
            ),
            "PostgreSQL device_stats of {device}: readings|flagged|quarantined"
        );
    }

    // Kafka alerts topic: at least one message per flagged reading (deduplicated by the
    // device and seq headers, as consumers do), each with the log's verdict, and no other.
    let alerts = services
        .tansu
        .read_all("fraud-alerts", flagged.len(), Duration::from_secs(30));
    let mut alerted: BTreeSet<(String, u64)> = BTreeSet::new();
    for alert in &alerts {
        let key = (alert.device.clone(), alert.seq.unwrap());
        let verdict = log
            .get(&key)
            .unwrap_or_else(|| panic!("an alert for no reading: {}", alert.value));
        assert!(verdict.flagged, "alert for an unflagged reading {key:?}");
        let value = &alert.value;
        assert_eq!(
            (
                value["device"].as_str().unwrap(),
                value["seq"].as_u64().unwrap()
            ),
            (key.0.as_str(), key.1)
        );
        assert_eq!(alert.key, key.0, "alerts are keyed by device");
        assert_eq!(
            (
                value["score"].as_f64().unwrap() as f32,
                detector_list(&value["detectors"]),
                value["quarantined"] == true,
            ),
            (
                verdict.score,
                verdict.detectors.clone(),
                verdict.quarantined
            ),
            "Kafka alert {key:?}: {value}"
        );
        alerted.insert(key);
    }
    let expected_alerts: BTreeSet<(String, u64)> = flagged.keys().map(|k| (*k).clone()).collect();
    assert_same_set(&alerted, &expected_alerts, "Kafka alerts");
    for device in fraudulent.keys() {
        assert!(
            alerts.iter().any(|a| a.device == *device
                && detector_list(&a.value["detectors"]).contains(&"bounds".to_string())),
            "{device}: no bounds alert in Kafka"
        );
    }

    // Kafka readings topic: every reading's value carries the log's verdict as is.
    let records = services
        .tansu
        .read_all("telemetry", log.len(), Duration::from_secs(60));
    let mut in_kafka: BTreeSet<(String, u64)> = BTreeSet::new();
    for record in &records {
        let key = (record.device.clone(), record.seq.unwrap());
        let verdict = &log[&key];
        assert_eq!(record.value["fraud"], verdict.json, "Kafka reading {key:?}");
        in_kafka.insert(key);
    }
    assert_same_set(&in_kafka, &in_log, "Kafka readings");
    let marked: BTreeSet<&(String, u64)> = records
        .iter()
        .filter(|r| r.value["fraud"]["quarantined"] == true)
        .map(|r| {
            log.get_key_value(&(r.device.clone(), r.seq.unwrap()))
                .unwrap()
                .0
        })
        .collect();
    assert_same_set(
        &marked,
        &quarantined,
        "quarantined on the Kafka readings topic",
    );

    // InfluxDB: every point has its reading's score; the quarantined ones, and only they,
    // are marked; the detectors are on every point whose reading had any.
    let kinds: BTreeSet<&String> = log.values().flat_map(|v| &v.kinds).collect();
    for kind in kinds {
        let of_kind = |what: fn(&Verdict) -> bool| -> BTreeMap<(String, u64), &Verdict> {
            log.iter()
                .filter(|(_, v)| v.kinds.contains(kind) && what(v))
                .map(|(k, v)| (k.clone(), v))
                .collect()
        };
        let measurement = common::influx::identifier(kind);
        let scored = services.influx.query(
            "ingestd",
            &format!("SELECT COUNT(\"fraud_score\") FROM {measurement}"),
        );
        assert_eq!(
            scored["results"][0]["series"][0]["values"][0][1].as_u64(),
            Some(of_kind(|_| true).len() as u64),
            "InfluxDB {kind}: points with fraud_score"
        );
        let points =
            |filter: &str| -> BTreeMap<(String, u64), serde_json::Map<String, serde_json::Value>> {
                let q = format!(
                    "SELECT \"device\", \"seq\", \"fraud_score\", \"fraud_detectors\", \
                 \"quarantined\" FROM {measurement} WHERE {filter}"
                );
                services
                    .influx
                    .rows("ingestd", &q)
                    .into_iter()
                    .map(|row| {
                        let key = (
                            row["device"].as_str().unwrap().to_string(),
                            row["seq"].as_u64().unwrap(),
                        );
                        (key, row)
                    })
                    .collect()
            };
        let marked = points("\"quarantined\" = true");
        assert_same_set(
            &marked.keys().collect(),
            &of_kind(|v| v.quarantined).keys().collect(),
            &format!("InfluxDB {kind}: quarantined points"),
        );
        let with_detectors = points("\"fraud_detectors\" =~ /./");
        let expected = of_kind(|v| !v.detectors.is_empty());
        assert_same_set(
            &with_detectors.keys().collect(),
            &expected.keys().collect(),
            &format!("InfluxDB {kind}: points with detectors"),
        );
        for (key, row) in &with_detectors {
            let verdict = expected[key];
            assert_eq!(
                (
                    row["fraud_score"].as_f64().unwrap() as f32,
                    row["fraud_detectors"].as_str().unwrap().to_string(),
                ),
                (verdict.score, verdict.detectors.join(",")),
                "InfluxDB {kind} {key:?}"
            );
        }
    }
    for device in fraudulent.keys() {
        let marked = services.influx.query(
            "ingestd",
            &format!(
                "SELECT COUNT(\"fraud_score\") FROM /.*/ WHERE \"device\" = '{device}' \
                 AND \"quarantined\" = true"
            ),
        );
        let counts = marked["results"][0]["series"]
            .as_array()
            .map(|series| {
                series
                    .iter()
                    .map(|s| s["values"][0][1].as_u64().unwrap())
                    .sum()
            })
            .unwrap_or(0u64);
        assert!(
            counts > 0,
            "{device}: no quarantined point with a score in InfluxDB"
        );
    }

    // What the engine made of the honest devices: not asserted here (scripts/fraud-eval
    // measures false alerts), printed to read a run.
    let mut honest_detectors: BTreeMap<&str, usize> = BTreeMap::new();
    let mut honest_flagged = 0;
    for ((device, _), verdict) in &flagged {
        if normal.contains(device.as_str()) {
            honest_flagged += 1;
            for detector in &verdict.detectors {
                *honest_detectors.entry(detector.as_str()).or_default() += 1;
            }
        }
    }
    eprintln!(
        "labelled fraud run: {} readings, {} flagged ({honest_flagged} of honest devices, \
         detectors {honest_detectors:?}), {} quarantined, {} Kafka alert messages, {:.1} s",
        log.len(),
        flagged.len(),
        quarantined.len(),
        alerts.len(),
        started.elapsed().as_secs_f64()
    );
}
