//! The operators' fraud tools: `ingestd fraud backtest` is deterministic, flags what the
//! engine flags, and reproduces the verdicts a log recorded; `ingestd fraud explain` prints
//! a device's state and a reading's findings from a data directory; bad input names its
//! line. The last test runs a real server, so the log it replays was scored live.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use ingestd::fraud::backtest::{backtest, BacktestOptions, Format, OUTPUT_HEADER};
use ingestd::log::format::{encode_record, segment_header};
use ingestd::log::{segment_file_name, shard_dir, RecordKind};
use ingestd::record::{self, CredentialMeta, DeadLetterMeta, FraudMeta, ReadingMeta};
use ingestd_codec::envelope::{Kind, Reading};
use ingestd_shards::fraud::engine::{
    address_hash, device_hash, DeviceFraud, Envelope, FraudConfig, Scorer,
};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

const T0_MS: u64 = 1_764_000_000_000;
const MINUTE_MS: u64 = 60_000;
const DAY_MS: f64 = 86_400_000.0;

/// A deterministic uniform in [-1, 1) (xorshift64).
fn jitter(state: &mut u64) -> f32 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    ((*state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
}

/// An honest indoor station at `t_ms`: CO2, temperature and humidity with a daily cycle and
/// noise at the sensors' floors, rounded to their resolutions.
fn honest(t_ms: u64, state: &mut u64) -> [Reading; 3] {
    let phase = (t_ms as f64 / DAY_MS * std::f64::consts::TAU).sin() as f32;
    [
        Reading::new(
            Kind::Co2Ppm,
            (430.0 + 60.0 * phase + 6.0 * jitter(state)).round(),
        ),
        Reading::new(
            Kind::TemperatureC,
            ((19.0 + 2.5 * phase + 0.08 * jitter(state)) * 100.0).round() / 100.0,
        ),
        Reading::new(
            Kind::HumidityRhPct,
            ((52.0 - 6.0 * phase + 0.6 * jitter(state)) * 10.0).round() / 10.0,
        ),
    ]
}

fn kind_name(code: u16) -> &'static str {
    Kind::from_code(code).and_then(Kind::name).unwrap()
}

/// A long-format CSV (`device,timestamp,kind,value`, columns shuffled to show the order is
/// free) of `devices` honest stations, one envelope a minute for `minutes`; the CO2 of
/// station 0 at minute `spike_at` is 1500 ppm.
fn station_csv(devices: usize, minutes: u64, spike_at: u64) -> String {
    let mut csv = String::from("kind,value,timestamp,device,note\n");
    let mut states: Vec<u64> = (0..devices as u64).map(|d| 7 + d * 1000).collect();
    for minute in 0..minutes {
        let t_ms = T0_MS + minute * MINUTE_MS;
        for (d, state) in states.iter_mut().enumerate() {
            for reading in honest(t_ms, state) {
                let mut value = reading.value;
                if d == 0 && minute == spike_at && reading.kind == Kind::Co2Ppm.code() {
                    value = 1500.0;
                }
                csv.push_str(&format!(
                    "{},{value},{t_ms},station-{d},ignored\n",
                    kind_name(reading.kind)
                ));
            }
        }
    }
    csv
}

fn ingestd(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BIN).args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One output row.
#[derive(Debug)]
struct Row {
    device: String,
    seq: u64,
    timestamp: u64,
    score: String,
    flagged: bool,
    detectors: String,
}

fn rows(output: &str) -> Vec<Row> {
    let mut lines = output.lines();
    assert_eq!(lines.next(), Some(OUTPUT_HEADER));
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), 7, "{line}");
            Row {
                device: cells[0].to_string(),
                seq: cells[1].parse().unwrap(),
                timestamp: cells[2].parse().unwrap(),
                score: cells[3].to_string(),
                flagged: cells[4].parse().unwrap(),
                detectors: cells[6].to_string(),
            }
        })
        .collect()
}

#[test]
fn backtest_twice_on_one_csv_gives_byte_identical_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("history.csv");
    std::fs::write(&input, station_csv(3, 240, 200)).unwrap();
    let mut outputs = Vec::new();
    for name in ["a.csv", "b.csv"] {
        let out = dir.path().join(name);
        let (ok, _, stderr) = ingestd(&[
            "fraud",
            "backtest",
            "--input",
            path(&input),
            "--out",
            path(&out),
        ]);
        assert!(ok, "{stderr}");
        assert!(stderr.contains("2160 row(s) of CSV scored: "), "{stderr}");
        outputs.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(outputs[0], outputs[1]);
    // One row per input row, in input order, and no partial file left behind.
    let rows = rows(std::str::from_utf8(&outputs[0]).unwrap());
    assert_eq!(rows.len(), 3 * 3 * 240);
    assert_eq!((rows[0].device.as_str(), rows[0].seq), ("station-0", 1));
    assert_eq!((rows[3].device.as_str(), rows[3].seq), ("station-1", 1));
    assert_eq!(rows.last().unwrap().seq, 240);
    assert!(!dir.path().join("a.csv.partial").exists());
}

#[test]
fn a_spike_at_a_known_row_is_flagged() {
    let spike_at = 150;
    let csv = station_csv(1, 200, spike_at);
    let mut out = Vec::new();
    let summary = backtest(
        &FraudConfig::default(),
        BacktestOptions::default(),
        csv.as_bytes(),
        &mut out,
    )
    .unwrap();
    assert_eq!(summary.format, Format::Csv);
    let rows = rows(std::str::from_utf8(&out).unwrap());
    let flagged: Vec<(u64, &str)> = rows
        .iter()
        .filter(|r| r.flagged)
        .map(|r| (r.seq, r.detectors.as_str()))
        .collect();
    // The spike's envelope (its three rows), and nothing else.
    assert_eq!(flagged.len(), 3, "{flagged:?}");
    for (seq, detectors) in flagged {
        assert_eq!(seq, spike_at + 1);
        assert!(
            detectors.split('|').any(|d| d == "deviation"),
            "{detectors}"
        );
    }
    let spike = &rows[3 * spike_at as usize];
    assert_eq!(spike.timestamp, T0_MS + spike_at * MINUTE_MS);
    assert!(spike.flagged);

    // The same history with RFC 3339 timestamps scores the same.
    let rfc3339: String = csv
        .lines()
        .map(|line| {
            let mut cells: Vec<String> = line.split(',').map(str::to_string).collect();
            if let Ok(ms) = cells[2].parse::<u64>() {
                let seconds = ms / 1000 - 1_764_000_000;
                // T0_MS is 2025-11-24T16:00:00Z.
                let (h, m) = (16 + seconds / 3600, seconds / 60 % 60);
                let (day, h) = (24 + h / 24, h % 24);
                cells[2] = format!("2025-11-{day:02}T{h:02}:{m:02}:00.000Z");
            }
            cells.join(",") + "\n"
        })
        .collect();
    let mut again = Vec::new();
    backtest(
        &FraudConfig::default(),
        BacktestOptions::default(),
        rfc3339.as_bytes(),
        &mut again,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(again).unwrap(),
        String::from_utf8(out).unwrap()
    );
}

/// The records a shard core would have written, scored by the engine exactly as
/// `core::publish` scores them (one scorer per shard, state per device, refused sequences
/// fed to `Scorer::refused`).
struct LiveShard {
    shard: usize,
    scorer: Scorer,
    devices: HashMap<String, DeviceFraud>,
    records: Vec<(RecordKind, Vec<u8>)>,
}

impl LiveShard {
    fn new(shard: usize) -> LiveShard {
        LiveShard {
            shard,
            scorer: Scorer::new(FraudConfig::default()),
            devices: HashMap::new(),
            records: Vec::new(),
        }
    }

    fn reading(
        &mut self,
        device: &str,
        seq: u64,
        t_ms: u64,
        peer: &str,
        connected_ms: u64,
        readings: &[Reading],
    ) -> FraudMeta {
        let state = self
            .devices
            .entry(device.to_string())
            .or_insert_with(|| DeviceFraud::new("lab", "north"));
        let received_ms = t_ms + 150;
        let envelope = Envelope {
            device: device_hash(device),
            seq,
            device_ms: t_ms,
            received_ms,
            address: address_hash(peer),
            connected_ms,
            readings,
        };
        let verdict = self.scorer.score(state, &envelope).verdict;
        let config = &self.scorer.config().score;
        let fraud = FraudMeta {
            score: verdict.score,
            detectors: verdict.fired.iter().map(|d| d.name().to_string()).collect(),
            flagged: verdict.is_flagged(config),
            quarantined: verdict.is_quarantined(config),
        };
        let meta = ReadingMeta {
            device: device.to_string(),
            seq,
            ts_ms: t_ms,
            readings: readings
                .iter()
                .map(|r| (kind_name(r.kind).to_string(), r.value))
                .collect::<BTreeMap<_, _>>(),
            topic: topic(device),
            received_ms,
            node: "node-1".into(),
            shard: self.shard,
            qos: 1,
            region: "north".into(),
            project: String::new(),
            location: "lab".into(),
            sensor_type: String::new(),
            peer: peer.to_string(),
            connected_ms,
            fraud: Some(fraud.clone()),
        };
        let mut payload = Vec::new();
        record::encode(&meta, b"signed envelope", &mut payload);
        self.records.push((RecordKind::Reading, payload));
        fraud
    }

    fn dead_letter(&mut self, device: &str, reason: &str, seq: u64, t_ms: u64, peer: &str) {
        let connected_ms = T0_MS;
        if matches!(reason, "replayed" | "stale_sequence") {
            let state = self
                .devices
                .entry(device.to_string())
                .or_insert_with(|| DeviceFraud::new("lab", "north"));
            self.scorer
                .refused(state, seq, address_hash(peer), connected_ms, t_ms + 150);
        }
        let meta = DeadLetterMeta {
            reason: reason.into(),
            detail: "refused".into(),
            device: device.into(),
            topic: topic(device),
            received_ms: t_ms + 150,
            node: "node-1".into(),
            shard: self.shard,
            qos: 1,
            peer: peer.into(),
            seq: Some(seq),
            connected_ms,
        };
        let mut payload = Vec::new();
        record::encode(&meta, b"signed envelope", &mut payload);
        self.records.push((RecordKind::DeadLetter, payload));
    }

    fn credential(&mut self, device: &str) {
        let meta = CredentialMeta {
            device: device.into(),
            nonce: "00".repeat(16),
            ts_ms: T0_MS,
        };
        let mut payload = Vec::new();
        record::encode(&meta, b"", &mut payload);
        self.records.push((RecordKind::Credential, payload));
    }
}

const HOME_PEER: &str = "10.0.0.7:50000";
const OTHER_PEER: &str = "192.0.2.9:41000";

/// Two shards' logs: station-a (shard 0) spikes at seq 151; station-b (shard 1) is used
/// from a second place from seq 101 on, in alternation, and a replayed sequence of it is
/// refused. Returns the shards and the recorded verdicts by (device, seq).
fn live_log() -> (Vec<LiveShard>, BTreeMap<(String, u64), FraudMeta>) {
    let mut recorded = BTreeMap::new();
    let mut a = LiveShard::new(0);
    let mut b = LiveShard::new(1);
    a.credential("station-a");
    b.credential("station-b");
    let (mut sa, mut sb) = (7u64, 99u64);
    for i in 0..200u64 {
        let t_ms = T0_MS + i * MINUTE_MS;
        let mut readings = honest(t_ms, &mut sa);
        if i == 150 {
            readings[0].value = 1500.0;
        }
        let fraud = a.reading("station-a", i + 1, t_ms, HOME_PEER, T0_MS, &readings);
        recorded.insert(("station-a".to_string(), i + 1), fraud);

        let readings = honest(t_ms, &mut sb);
        let (peer, connected_ms) = if i >= 100 && i % 2 == 1 {
            (OTHER_PEER, T0_MS + 100 * MINUTE_MS)
        } else {
            (HOME_PEER, T0_MS)
        };
        if i == 120 {
            b.dead_letter("station-b", "replayed", 90, t_ms, OTHER_PEER);
            b.dead_letter("station-b", "bad_signature", 121, t_ms, OTHER_PEER);
        }
        let fraud = b.reading("station-b", i + 1, t_ms, peer, connected_ms, &readings);
        recorded.insert(("station-b".to_string(), i + 1), fraud);
    }
    (vec![a, b], recorded)
}

/// The shards' records as `ingestd log export` prints them.
fn export(shards: &[LiveShard]) -> String {
    let mut out = String::new();
    for shard in shards {
        for (offset, (kind, payload)) in shard.records.iter().enumerate() {
            let line = serde_json::json!({
                "shard": shard.shard,
                "offset": offset,
                "kind": kind.name(),
                "payload_hex": ingestd::registry::hex(payload),
            });
            out.push_str(&format!("{line}\n"));
        }
    }
    out
}

/// The shards' records as a data directory's durable log (one segment per shard).
fn write_data_dir(data_dir: &Path, shards: &[LiveShard]) {
    for shard in shards {
        let dir = shard_dir(data_dir, shard.shard);
        std::fs::create_dir_all(&dir).unwrap();
        let mut segment = segment_header().to_vec();
        for (kind, payload) in &shard.records {
            encode_record(*kind, payload, &mut segment);
        }
        std::fs::write(dir.join(segment_file_name(0)), segment).unwrap();
    }
}

#[test]
fn a_log_export_reproduces_the_scores_recorded_in_it() {
    let (shards, recorded) = live_log();
    // The log is not trivial: a spike and a clone were flagged live.
    let flagged: Vec<(&str, u64, &[String])> = recorded
        .iter()
        .filter(|(_, f)| f.flagged)
        .map(|((d, s), f)| (d.as_str(), *s, f.detectors.as_slice()))
        .collect();
    assert!(
        flagged
            .iter()
            .any(|(d, s, f)| *d == "station-a" && *s == 151 && f.contains(&"deviation".into())),
        "{flagged:?}"
    );
    assert!(
        flagged
            .iter()
            .any(|(d, _, f)| *d == "station-b" && f.contains(&"clone".into())),
        "{flagged:?}"
    );

    let input = export(&shards);
    let mut out = Vec::new();
    let summary = backtest(
        &FraudConfig::default(),
        BacktestOptions::default(),
        input.as_bytes(),
        &mut out,
    )
    .unwrap();
    assert_eq!(summary.format, Format::LogExport);
    assert_eq!((summary.rows, summary.recorded), (400, 400));
    assert_eq!(summary.reproduced, 400, "{:?}", summary.first_difference);
    for row in rows(std::str::from_utf8(&out).unwrap()) {
        let live = &recorded[&(row.device.clone(), row.seq)];
        assert_eq!(row.score, format!("{:.6}", live.score), "{row:?}");
        assert_eq!(row.flagged, live.flagged, "{row:?}");
        assert_eq!(row.detectors, live.detectors.join("|"), "{row:?}");
    }
}

#[test]
fn explain_prints_the_state_and_the_findings_of_a_reading() {
    let (shards, recorded) = live_log();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_data_dir(&data, &shards);

    let (ok, out, err) = ingestd(&[
        "fraud",
        "explain",
        "--device",
        "station-a",
        "--seq",
        "151",
        "--data-dir",
        path(&data),
    ]);
    assert!(ok, "{err}");
    for expected in [
        "device station-a: 200 reading(s) scored, warm",
        "clock: offset 150.0 ms",
        "pace 60000.0 ms",
        "series co2_ppm",
        "series temperature_c",
        "series humidity_rh_pct",
        "readings learned 200",
        "reading seq 151 (shard 0, log offset 151)",
        "co2_ppm=1500",
        "flagged yes",
        "deviation    co2_ppm",
        "a spike or a level shift",
        ": equal to the replay",
    ] {
        assert!(out.contains(expected), "{expected:?} not in:\n{out}");
    }
    let live = &recorded[&("station-a".to_string(), 151)];
    assert!(
        out.contains(&format!("replayed: score {:.6}", live.score)),
        "{out}"
    );

    // Default: the last reading; the clone evidence of station-b is explained.
    let (ok, out, err) = ingestd(&[
        "fraud",
        "explain",
        "--device",
        "station-b",
        "--data-dir",
        path(&data),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("reading seq 200 (shard 1,"), "{out}");
    assert!(out.contains(": equal to the replay"), "{out}");

    // Not in the log: a clear error, exit non-zero.
    let (ok, _, err) = ingestd(&[
        "fraud",
        "explain",
        "--device",
        "station-z",
        "--data-dir",
        path(&data),
    ]);
    assert!(!ok);
    assert!(err.contains("device station-z has no readings"), "{err}");
    let (ok, _, err) = ingestd(&[
        "fraud",
        "explain",
        "--device",
        "station-a",
        "--seq",
        "999",
        "--data-dir",
        path(&data),
    ]);
    assert!(!ok);
    assert!(
        err.contains("no reading with seq 999 in the log (200 reading(s): seq 1..=200)"),
        "{err}"
    );
}

#[test]
fn bad_input_names_the_line_and_leaves_the_output_alone() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.csv");
    std::fs::write(
        &input,
        "timestamp,value\n1764000000000,420\n\n1764000060000,4x0\n1764000120000,421\n",
    )
    .unwrap();
    let out = dir.path().join("scores.csv");
    std::fs::write(&out, "earlier scores\n").unwrap();
    let (ok, _, err) = ingestd(&[
        "fraud",
        "backtest",
        "--input",
        path(&input),
        "--out",
        path(&out),
    ]);
    assert!(!ok);
    assert!(
        err.contains("bad.csv: line 4: value \"4x0\" is not a finite number"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "earlier scores\n");
    assert!(!dir.path().join("scores.csv.partial").exists());

    // An export line that is not one.
    std::fs::write(
        &input,
        "{\"shard\":0,\"offset\":0,\"kind\":\"reading\",\"payload_hex\":\"zz\"}\n",
    )
    .unwrap();
    let (ok, _, err) = ingestd(&[
        "fraud",
        "backtest",
        "--input",
        path(&input),
        "--out",
        path(&out),
    ]);
    assert!(!ok);
    assert!(err.contains("line 1: payload_hex is not hex"), "{err}");

    // The help says what the commands do.
    let (ok, help, _) = ingestd(&["fraud", "backtest", "--help"]);
    assert!(ok);
    assert!(help.contains("device,seq,timestamp,score,flagged,quarantined,detectors"));
    assert!(help.contains("RFC 3339"));
    let (ok, help, _) = ingestd(&["fraud", "explain", "--help"]);
    assert!(ok);
    assert!(help.contains("--seq"));
}

/// A real server scores readings live; its log, exported, replays to the same verdicts,
/// and explain agrees with the record.
#[test]
fn a_served_log_replays_to_the_verdicts_recorded_live() {
    use ingestd_codec::envelope;
    use ingestd_codec::mqtt::{Protocol, QoS, ReasonCode};

    let fleet = Fleet::provision(2);
    let dir = fleet.dir.path();
    let data = dir.join("data");
    let config = dir.join("fraud.toml");
    std::fs::write(&config, "[fraud]\nwarmup_readings = 5\n").unwrap();
    let mut server = Server::start(&fleet, &data, &["--config", path(&config)]);
    let count = 24u64;
    for i in 0..2 {
        let device = fleet.device(i);
        let (mut client, _) = Client::connect(server.addr(), &fleet, &device, Protocol::V311);
        for seq in 1..=count {
            let co2 = if i == 0 && seq == 20 {
                2500.0
            } else {
                420.0 + (seq % 3) as f32
            };
            let mut scratch = Vec::new();
            let env = envelope::sign(
                fleet.key(&device),
                &topic(&device),
                &device,
                seq,
                now_ms(),
                &[
                    Reading::new(Kind::Co2Ppm, co2),
                    Reading::new(Kind::TemperatureC, 21.0 + (seq % 2) as f32 * 0.1),
                ],
                &mut scratch,
            )
            .unwrap();
            let mut payload = Vec::new();
            env.encode_binary(&mut payload);
            let pkid = u16::try_from(seq).unwrap();
            client.publish(&topic(&device), &payload, QoS::AtLeastOnce, pkid);
            assert_eq!(client.read(), Reply::PubAck(pkid, ReasonCode::Success));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    assert!(server.terminate().success());

    let (ok, exported, err) = ingestd(&["log", "export", "--data-dir", path(&data)]);
    assert!(ok, "{err}");
    let export = dir.join("export.jsonl");
    std::fs::write(&export, &exported).unwrap();
    let scores = dir.join("scores.csv");
    let (ok, _, err) = ingestd(&[
        "fraud",
        "backtest",
        "--input",
        path(&export),
        "--out",
        path(&scores),
        "--config",
        path(&config),
    ]);
    assert!(ok, "{err}");
    let total = 2 * count;
    assert!(
        err.contains(&format!(
            "{total} of {total} recorded verdict(s) reproduced"
        )),
        "{err}"
    );
    let rows = rows(&std::fs::read_to_string(&scores).unwrap());
    let spike = rows
        .iter()
        .find(|r| r.device == fleet.device(0) && r.seq == 20)
        .unwrap();
    assert!(spike.flagged, "{spike:?}");

    let (ok, out, err) = ingestd(&[
        "fraud",
        "explain",
        "--device",
        &fleet.device(0),
        "--seq",
        "20",
        "--data-dir",
        path(&data),
        "--config",
        path(&config),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("flagged yes"), "{out}");
    assert!(out.contains(": equal to the replay"), "{out}");
}
