//! The whole pipeline against the real services: loadgen -> ingestd -> Kafka (tansu) +
//! InfluxDB + PostgreSQL. Every acknowledged reading is in Kafka exactly once per (device,
//! seq) after dedupe, in InfluxDB, and counted in PostgreSQL; counts compared exactly. Then
//! InfluxDB is stopped and restarted in a loaded run, and nothing is missing there.
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
        .status()
        .unwrap();
    assert!(status.success(), "loadgen failed: {status}");
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| {
            let (device, seq) = line.split_once(' ').unwrap();
            (device.to_string(), seq.parse().unwrap())
        })
        .collect()
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
