//! The InfluxDB sink against a real influxd 1.x: every reading stored once and queryable,
//! replays harmless, outages and a missing database waited out without loss, a refused
//! record found inside a batch and reported alone, gzip on and off. One test uses a stand-in
//! server instead, to make concurrent writes finish out of order.
//!
//! `run()` is driven directly on a small multi-thread runtime with deliveries built by
//! `record::encode`, as the egress thread would hand them over. Nothing here asserts on
//! time: waits are for conditions, with generous deadlines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::influx;

use influx::Influx;
use ingestd::config::InfluxConfig;
use ingestd::egress::influx::{point_time_ns, REFUSED_REASON};
use ingestd::egress::{Delivery, Progress, SinkId, SinkInput};
use ingestd::log::RecordKind;
use ingestd::metrics::SinkMetrics;
use ingestd::record::{self, DeadLetterMeta, FraudMeta, ReadingMeta};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARDS: usize = 2;
const DEVICES: usize = 16;
/// Reading names: every record has the first two, every third record all three.
const KINDS: [&str; 3] = ["co2_ppm", "temperature_c", "humidity_pct"];
/// The first device timestamp (ms).
const BASE_MS: u64 = 1_750_000_000_000;
/// Waits for a condition give up after this long (they take well under a second here).
const DEADLINE: Duration = Duration::from_secs(120);
/// Deliveries the sink's channel holds: small, so back-pressure shows in the outage test.
const CHANNEL_RECORDS: usize = 256;
/// Region of device 0: a space, a comma and an `=` to escape.
const ODD_REGION: &str = "north, east=1";

fn config(influx: &Influx, database: &str) -> InfluxConfig {
    InfluxConfig {
        url: influx.url(),
        database: database.to_string(),
        batch_points_max: 1_000,
        flush_interval_ms: 20,
        timeout_ms: 5_000,
        retry_backoff_ms: 20,
        retry_backoff_ms_max: 500,
        ..InfluxConfig::default()
    }
}

/// Reading number `n` (global over both shards); `n / DEVICES` is its device's sequence
/// number. Four sequence numbers share each millisecond, so points of one device in one
/// millisecond must not overwrite each other.
fn reading_meta(n: usize) -> ReadingMeta {
    let device = n % DEVICES;
    let seq = (n / DEVICES + 1) as u64;
    let count = if n % 3 == 0 { 3 } else { 2 };
    let readings = KINDS[..count]
        .iter()
        .enumerate()
        .map(|(k, kind)| ((*kind).to_string(), value(n, k)))
        .collect();
    ReadingMeta {
        device: format!("dev-{device:02}"),
        seq,
        ts_ms: BASE_MS + seq / 4,
        readings,
        topic: format!("devices/dev-{device:02}/telemetry"),
        received_ms: BASE_MS + seq / 4 + 5,
        node: "node-test".to_string(),
        shard: n % SHARDS,
        qos: 1,
        region: if device == 0 {
            ODD_REGION.to_string()
        } else {
            format!("region-{}", device % 4)
        },
        project: "forest-7".to_string(),
        location: String::new(),
        // Odd devices have no sensor type: the tag is left out.
        sensor_type: if device % 2 == 0 {
            "ndir".to_string()
        } else {
            String::new()
        },
        peer: String::new(),
        connected_ms: 0,
        fraud: None,
    }
}

fn value(n: usize, kind: usize) -> f32 {
    match kind {
        0 => 400.0 + (n % 97) as f32 * 0.5,
        1 => -10.0 + (n % 61) as f32 * 0.1,
        _ => (n % 101) as f32,
    }
}

fn delivery(shard: usize, offset: u64, kind: RecordKind, meta: &impl serde::Serialize) -> Delivery {
    let mut payload = Vec::new();
    record::encode(meta, b"\x01signed-envelope", &mut payload);
    Delivery::new(shard, offset, kind, payload)
}

fn dead_letter_meta(shard: usize) -> DeadLetterMeta {
    DeadLetterMeta {
        reason: "bad_signature".to_string(),
        detail: "signature does not verify".to_string(),
        device: "dev-01".to_string(),
        topic: "devices/dev-01/telemetry".to_string(),
        received_ms: BASE_MS,
        node: "node-test".to_string(),
        shard,
        qos: 1,
        peer: "127.0.0.1:5000".to_string(),
        seq: Some(1),
        connected_ms: 0,
    }
}

/// A stream of deliveries over both shards, offsets counting per shard.
struct Stream {
    next_offset: [u64; SHARDS],
    next_reading: usize,
    /// Every delivery made, for replays.
    made: Vec<Delivery>,
    /// Points expected per measurement.
    expected: BTreeMap<String, u64>,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            next_offset: [0; SHARDS],
            next_reading: 0,
            made: Vec::new(),
            expected: BTreeMap::new(),
        }
    }

    /// The next `count` readings, with a dead letter after every `dead_letter_every`.
    fn readings(&mut self, count: usize, dead_letter_every: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        for _ in 0..count {
            let n = self.next_reading;
            self.next_reading += 1;
            let meta = reading_meta(n);
            for name in meta.readings.keys() {
                *self.expected.entry(name.clone()).or_default() += 1;
            }
            out.push(self.push(n % SHARDS, RecordKind::Reading, &meta));
            if dead_letter_every > 0 && n % dead_letter_every == dead_letter_every - 1 {
                let shard = (n + 1) % SHARDS;
                out.push(self.push(shard, RecordKind::DeadLetter, &dead_letter_meta(shard)));
            }
        }
        out
    }

    fn push(&mut self, shard: usize, kind: RecordKind, meta: &impl serde::Serialize) -> Delivery {
        let offset = self.next_offset[shard];
        self.next_offset[shard] += 1;
        let delivery = delivery(shard, offset, kind, meta);
        self.made.push(delivery.clone());
        delivery
    }

    /// Each shard's `Through` once everything made is handled.
    fn ends(&self) -> [u64; SHARDS] {
        self.next_offset
    }
}

/// `run()` on its own runtime, fed from the test thread.
struct Sink {
    runtime: tokio::runtime::Runtime,
    tx: Option<tokio::sync::mpsc::Sender<Arc<Delivery>>>,
    progress_rx: tokio::sync::mpsc::Receiver<Progress>,
    /// Every progress report so far, in order.
    progress: Vec<Progress>,
    metrics: Arc<SinkMetrics>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sink {
    fn start(config: InfluxConfig) -> Sink {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL_RECORDS);
        let (progress_tx, progress_rx) =
            tokio::sync::mpsc::channel(ingestd::egress::PROGRESS_QUEUE_REPORTS);
        let metrics = Arc::new(SinkMetrics::new(SHARDS));
        let input = SinkInput {
            rx,
            progress: progress_tx,
            metrics: Arc::clone(&metrics),
            shards: SHARDS,
        };
        let task = runtime.spawn(ingestd::egress::influx::run(config, input));
        Sink {
            runtime,
            tx: Some(tx),
            progress_rx,
            progress: Vec::new(),
            metrics,
            task: Some(task),
        }
    }

    /// Sends from another thread (the channel is bounded: a send waits while the sink
    /// is full); join the handle to know all were taken.
    fn send_in_background(&self, deliveries: Vec<Delivery>) -> std::thread::JoinHandle<()> {
        let tx = self.tx.clone().unwrap();
        std::thread::spawn(move || {
            for delivery in deliveries {
                tx.blocking_send(Arc::new(delivery)).unwrap();
            }
        })
    }

    /// Sends everything; a sink that stops taking deliveries fails the test.
    fn send(&mut self, deliveries: Vec<Delivery>) {
        let sender = self.send_in_background(deliveries);
        self.wait_until("the sink to take every delivery", |_| sender.is_finished());
        sender.join().unwrap();
    }

    fn collect(&mut self) {
        while let Ok(progress) = self.progress_rx.try_recv() {
            self.progress.push(progress);
        }
    }

    /// The highest `Through` reported for a shard (0 if none).
    fn through(&self, shard: usize) -> u64 {
        self.progress
            .iter()
            .filter_map(|p| match p {
                Progress::Through {
                    sink,
                    shard: s,
                    end,
                } if *s == shard => {
                    assert_eq!(*sink, SinkId::Influx);
                    Some(*end)
                }
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    fn refused(&self) -> Vec<(usize, u64, String, String)> {
        self.progress
            .iter()
            .filter_map(|p| match p {
                Progress::Refused {
                    sink,
                    shard,
                    offset,
                    reason,
                    detail,
                } => {
                    assert_eq!(*sink, SinkId::Influx);
                    Some((*shard, *offset, reason.clone(), detail.clone()))
                }
                Progress::Through { .. } => None,
            })
            .collect()
    }

    fn wait_until(&mut self, what: &str, mut done: impl FnMut(&Sink) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.collect();
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited {DEADLINE:?} for {what}; last progress {:?}, metrics {:?}",
                self.progress.last(),
                self.metrics
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_through(&mut self, ends: [u64; SHARDS]) {
        self.wait_until(&format!("Through {ends:?}"), |sink| {
            (0..SHARDS).all(|shard| sink.through(shard) >= ends[shard])
        });
    }

    /// Closes the input and waits for `run()` to return (everything written and reported).
    fn finish(&mut self) {
        self.tx = None;
        let task = self.task.take().unwrap();
        self.runtime
            .block_on(async { tokio::time::timeout(DEADLINE, task).await })
            .expect("run() did not return after its input closed")
            .unwrap();
        self.collect();
    }

    /// Each shard's `Through` reports never go back, and every refusal comes before the
    /// first `Through` that covers it.
    fn check_order(&self) {
        let mut reached = [0_u64; SHARDS];
        for p in &self.progress {
            match p {
                Progress::Through { shard, end, .. } => {
                    assert!(*end > reached[*shard], "{p:?} after {reached:?}");
                    reached[*shard] = *end;
                }
                Progress::Refused { shard, offset, .. } => {
                    assert!(
                        *offset >= reached[*shard],
                        "{p:?} after Through {reached:?}"
                    );
                }
            }
        }
    }
}

fn counts(influx: &Influx, db: &str) -> BTreeMap<String, u64> {
    KINDS
        .iter()
        .map(|kind| (kind.to_string(), influx.count_points(db, kind)))
        .collect()
}

#[test]
fn ten_thousand_readings_from_two_shards_are_all_stored() {
    let influx = Influx::new();
    influx.create_database("t");
    let mut sink = Sink::start(config(&influx, "t"));
    let mut stream = Stream::new();
    let deliveries = stream.readings(10_000, 250);
    assert_eq!(deliveries.len(), 10_040);
    sink.send(deliveries);
    sink.finish();

    assert_eq!(sink.refused(), vec![]);
    for shard in 0..SHARDS {
        assert_eq!(sink.through(shard), stream.ends()[shard], "shard {shard}");
    }
    sink.check_order();
    assert_eq!(counts(&influx, "t"), stream.expected);
    assert_eq!(stream.expected["co2_ppm"], 10_000);
    assert_eq!(stream.expected["humidity_pct"], 3_334);

    let m = &sink.metrics;
    assert_eq!(m.records.get(), 10_000);
    assert_eq!(m.refused.get(), 0);
    assert_eq!(m.up.get(), 1);
    assert!(m.batches.get() >= 24, "{} batches", m.batches.get());
    assert_eq!(m.latency.count(), m.batches.get());
    assert!(m.bytes.get() > 0);
    assert_eq!(m.failures.get(), 0);

    // Device 0 (the odd region): every co2 point with its tags, value, seq and time.
    let rows = influx.rows(
        "t",
        "SELECT * FROM \"co2_ppm\" WHERE \"device\" = 'dev-00' ORDER BY time",
    );
    let expected: Vec<usize> = (0..10_000).filter(|n| n % DEVICES == 0).collect();
    assert_eq!(rows.len(), expected.len());
    for (row, n) in rows.iter().zip(expected) {
        let meta = reading_meta(n);
        assert_eq!(row["device"], "dev-00");
        assert_eq!(row["region"], ODD_REGION);
        assert_eq!(row["project"], "forest-7");
        assert_eq!(row["sensor_type"], "ndir");
        assert_eq!(row["seq"].as_u64(), Some(meta.seq));
        assert_eq!(
            row["value"].as_f64().unwrap() as f32,
            meta.readings["co2_ppm"]
        );
        assert_eq!(row["time"].as_i64(), point_time_ns(meta.ts_ms, meta.seq));
    }
    // Device 1: no sensor type, so no such tag on its points.
    let rows = influx.rows(
        "t",
        "SELECT * FROM \"temperature_c\" WHERE \"device\" = 'dev-01' ORDER BY time LIMIT 3",
    );
    assert_eq!(rows.len(), 3);
    for (row, n) in rows.iter().zip([1, 17, 33]) {
        assert_eq!(row["sensor_type"], serde_json::Value::Null);
        assert_eq!(row["region"], "region-1");
        assert_eq!(
            row["value"].as_f64().unwrap() as f32,
            reading_meta(n).readings["temperature_c"]
        );
    }
}

#[test]
fn scored_readings_carry_their_verdict_on_every_point() {
    let influx = Influx::new();
    influx.create_database("t");
    let mut sink = Sink::start(config(&influx, "t"));
    let verdict = |score: f32, detectors: &[&str], flagged: bool, quarantined: bool| {
        Some(FraudMeta {
            score,
            detectors: detectors.iter().map(|d| (*d).to_string()).collect(),
            flagged,
            quarantined,
        })
    };
    // Readings 0, 3 and 6 have all three kinds; device n % 16.
    let verdicts = [
        verdict(0.95, &["bounds", "peers"], true, true),
        verdict(0.6, &["rate"], true, false),
        verdict(0.0, &[], false, false),
        // Unscored: a record written before scoring, or with scoring off.
        None,
    ];
    let mut stream = Stream::new();
    let mut deliveries = Vec::new();
    for (n, fraud) in verdicts.iter().enumerate() {
        let mut meta = reading_meta(n);
        meta.fraud = fraud.clone();
        deliveries.push(stream.push(n % SHARDS, RecordKind::Reading, &meta));
    }
    sink.send(deliveries.clone());
    sink.wait_through(stream.ends());
    // Every kind's point of a reading carries the verdict.
    for (n, fraud) in verdicts.iter().enumerate() {
        let meta = reading_meta(n);
        for (kind, value) in &meta.readings {
            let rows = influx.rows(
                "t",
                &format!(
                    "SELECT value, fraud_score, fraud_detectors, quarantined FROM \"{kind}\" \
                     WHERE device = '{}'",
                    meta.device
                ),
            );
            assert_eq!(rows.len(), 1, "{kind} {n}: {rows:?}");
            let row = &rows[0];
            assert_eq!(row["value"].as_f64().unwrap() as f32, *value);
            let Some(fraud) = fraud else {
                for field in ["fraud_score", "fraud_detectors", "quarantined"] {
                    assert_eq!(row[field], serde_json::Value::Null, "{kind} {n} {field}");
                }
                continue;
            };
            assert_eq!(row["fraud_score"].as_f64().unwrap() as f32, fraud.score);
            let detectors = fraud.detectors.join(",");
            let expected = if detectors.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::Value::from(detectors)
            };
            assert_eq!(row["fraud_detectors"], expected, "{kind} {n}");
            let expected = if fraud.quarantined {
                serde_json::Value::Bool(true)
            } else {
                serde_json::Value::Null
            };
            assert_eq!(row["quarantined"], expected, "{kind} {n}");
        }
    }
    // What the oracle (or an analyst) filters on.
    let quarantined = influx.rows(
        "t",
        "SELECT count(value) FROM co2_ppm WHERE quarantined = true",
    );
    assert_eq!(quarantined[0]["count"], 1);
    let flagged = influx.rows(
        "t",
        "SELECT count(value) FROM co2_ppm WHERE fraud_score >= 0.5",
    );
    assert_eq!(flagged[0]["count"], 2);

    // A replay writes the same points over themselves.
    sink.send(deliveries);
    sink.finish();
    assert_eq!(sink.refused(), vec![]);
    assert_eq!(influx.count_points("t", "co2_ppm"), 4);
    let quarantined = influx.rows(
        "t",
        "SELECT count(value) FROM co2_ppm WHERE quarantined = true",
    );
    assert_eq!(quarantined[0]["count"], 1);
}

#[test]
fn a_replay_from_a_lower_offset_changes_nothing() {
    let influx = Influx::new();
    influx.create_database("t");
    let mut sink = Sink::start(config(&influx, "t"));
    let mut stream = Stream::new();
    let first = stream.readings(2_000, 100);
    sink.send(first);
    sink.wait_through(stream.ends());
    let before = counts(&influx, "t");
    assert_eq!(before, stream.expected);

    // The shards replay: shard 0 from offset 300, shard 1 from the start, interleaved.
    let replay: Vec<Delivery> = stream
        .made
        .iter()
        .filter(|d| d.shard == 1 || d.offset >= 300)
        .cloned()
        .collect();
    let replayed_readings = replay
        .iter()
        .filter(|d| d.kind == RecordKind::Reading)
        .count() as u64;
    sink.send(replay);
    sink.finish();

    assert_eq!(counts(&influx, "t"), before);
    assert_eq!(sink.refused(), vec![]);
    for shard in 0..SHARDS {
        assert_eq!(sink.through(shard), stream.ends()[shard]);
    }
    sink.check_order();
    // The replay was written again, not skipped.
    assert_eq!(sink.metrics.records.get(), 2_000 + replayed_readings);
}

#[test]
fn an_outage_is_waited_out_and_nothing_is_lost() {
    let mut influx = Influx::new();
    influx.create_database("t");
    let mut sink = Sink::start(config(&influx, "t"));
    let mut stream = Stream::new();
    sink.send(stream.readings(500, 0));
    let before = stream.ends();
    sink.wait_through(before);
    assert_eq!(sink.metrics.up.get(), 1);

    influx.stop();
    let sender = sink.send_in_background(stream.readings(2_000, 0));
    sink.wait_until("three failed attempts", |sink| {
        sink.metrics.retries.get() >= 3 && sink.metrics.failures.get() >= 3
    });
    assert_eq!(sink.metrics.up.get(), 0);
    for (shard, end) in before.into_iter().enumerate() {
        assert_eq!(sink.through(shard), end, "Through moved while down");
    }
    assert_eq!(sink.refused(), vec![]);
    // Back-pressure: two batches and the channel hold fewer than 2,000 records, so the
    // sender is still waiting.
    assert!(
        !sender.is_finished(),
        "the sink took 2,000 records while down"
    );

    influx.start();
    sink.wait_until("the sink to take every delivery", |_| sender.is_finished());
    sender.join().unwrap();
    sink.finish();
    for shard in 0..SHARDS {
        assert_eq!(sink.through(shard), stream.ends()[shard]);
    }
    sink.check_order();
    assert_eq!(sink.refused(), vec![]);
    assert_eq!(counts(&influx, "t"), stream.expected);
    assert_eq!(sink.metrics.records.get(), 2_500);
    assert_eq!(sink.metrics.up.get(), 1);
}

#[test]
fn a_missing_database_is_retried_until_it_exists() {
    let influx = Influx::new();
    let mut sink = Sink::start(config(&influx, "later"));
    let mut stream = Stream::new();
    sink.send(stream.readings(300, 50));
    sink.wait_until("two failed attempts", |sink| {
        sink.metrics.failures.get() >= 2
    });
    assert_eq!(sink.metrics.up.get(), 0);
    assert_eq!((sink.through(0), sink.through(1)), (0, 0));
    assert_eq!(sink.refused(), vec![]);

    influx.create_database("later");
    sink.finish();
    assert_eq!(counts(&influx, "later"), stream.expected);
    for shard in 0..SHARDS {
        assert_eq!(sink.through(shard), stream.ends()[shard]);
    }
    assert_eq!(sink.refused(), vec![]);
}

#[test]
fn a_refused_record_is_found_and_reported_alone() {
    let influx = Influx::new();
    influx.create_database("t");
    let mut stream = Stream::new();
    let mut deliveries = stream.readings(1_000, 0);
    // Reading 437 becomes one whose only reading is a vendor kind InfluxDB already holds
    // as a string: a field type conflict, answered 400.
    let target = 437;
    let mut meta = reading_meta(target);
    for name in meta.readings.keys() {
        *stream.expected.get_mut(name).unwrap() -= 1;
    }
    meta.readings = BTreeMap::from([("kind_40001".to_string(), 1.5)]);
    let shard = target % SHARDS;
    let offset = deliveries[target].offset;
    deliveries[target] = delivery(shard, offset, RecordKind::Reading, &meta);
    let time = point_time_ns(meta.ts_ms, 0).unwrap();
    let (status, body) = influx.write("t", &format!("kind_40001,device=x value=\"text\" {time}\n"));
    assert_eq!(status, 204, "{body}");

    // One batch for all of them: it closes when the input does.
    let mut config = config(&influx, "t");
    config.batch_points_max = 5_000;
    config.flush_interval_ms = 600_000;
    let mut sink = Sink::start(config);
    sink.send(deliveries);
    sink.finish();

    let refused = sink.refused();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let (r_shard, r_offset, reason, detail) = &refused[0];
    assert_eq!((*r_shard, *r_offset), (shard, offset));
    assert_eq!(reason, REFUSED_REASON);
    assert!(detail.contains("field type conflict"), "{detail}");
    assert!(detail.chars().count() <= 500);
    sink.check_order();
    for shard in 0..SHARDS {
        assert_eq!(sink.through(shard), stream.ends()[shard]);
    }
    assert_eq!(counts(&influx, "t"), stream.expected);
    assert_eq!(influx.count_points("t", "kind_40001"), 1);
    let m = &sink.metrics;
    assert_eq!(m.refused.get(), 1);
    assert_eq!(m.records.get(), 999);
    assert_eq!(m.batches.get(), 1);
    // The search wrote halves: more writes than batches.
    assert!(m.latency.count() > 2, "{} writes", m.latency.count());
}

#[test]
fn gzip_on_and_off_both_store_everything() {
    let influx = Influx::new();
    let mut bytes = Vec::new();
    for gzip in [false, true] {
        let db = format!("gzip_{gzip}");
        influx.create_database(&db);
        let mut config = config(&influx, &db);
        config.gzip = gzip;
        let mut sink = Sink::start(config);
        let mut stream = Stream::new();
        sink.send(stream.readings(1_500, 100));
        sink.finish();
        assert_eq!(counts(&influx, &db), stream.expected, "gzip {gzip}");
        for shard in 0..SHARDS {
            assert_eq!(sink.through(shard), stream.ends()[shard], "gzip {gzip}");
        }
        assert_eq!(sink.refused(), vec![]);
        bytes.push(sink.metrics.bytes.get());
    }
    // Compressed line protocol is several times smaller on the wire.
    assert!(
        bytes[1] * 3 < bytes[0],
        "plain {} gzip {}",
        bytes[0],
        bytes[1]
    );
}

/// A stand-in for InfluxDB that answers 204 to every write, holding back the answer to a
/// write containing `slow` for `delay`. It records when each write arrived and when it
/// was answered. Unit-level fault injection beside the real-server tests: it makes the
/// older of two concurrent writes finish last, which a real server does not do on demand.
struct SlowFirstServer {
    url: String,
    /// (body holds `slow`, arrived, answered)
    log: Arc<std::sync::Mutex<Vec<(bool, Instant, Instant)>>>,
}

impl SlowFirstServer {
    fn start(slow: &'static str, delay: Duration) -> SlowFirstServer {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let shared = Arc::clone(&log);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let log = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    loop {
                        let mut length = 0usize;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some((name, value)) = line.split_once(':') {
                                if name.eq_ignore_ascii_case("content-length") {
                                    length = value.trim().parse().unwrap();
                                }
                            }
                        }
                        let arrived = Instant::now();
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        let is_slow = String::from_utf8_lossy(&body).contains(slow);
                        if is_slow {
                            std::thread::sleep(delay);
                        }
                        log.lock().unwrap().push((is_slow, arrived, Instant::now()));
                        if stream
                            .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        SlowFirstServer { url, log }
    }
}

#[test]
fn concurrent_writes_are_reported_in_order_whichever_finishes_first() {
    let server = SlowFirstServer::start("slow_first", Duration::from_millis(500));
    let mut sink = Sink::start(InfluxConfig {
        url: server.url.clone(),
        database: "ingestd".to_string(),
        // One record per batch, written as soon as it arrives, two writes at a time.
        batch_points_max: 1,
        flush_interval_ms: 1,
        writes_in_flight: 2,
        gzip: false,
        timeout_ms: 5_000,
        ..InfluxConfig::default()
    });
    let deliveries: Vec<Delivery> = (0..4)
        .map(|n| {
            let mut meta = reading_meta(n * SHARDS);
            let name = if n == 0 { "slow_first" } else { "co2_ppm" };
            meta.readings = BTreeMap::from([(name.to_string(), 1.5)]);
            delivery(0, n as u64, RecordKind::Reading, &meta)
        })
        .collect();
    sink.send(deliveries);
    sink.wait_through([4, 0]);
    // The reports for shard 0 only ever grow: the batches written after the slow one
    // finished first, but were not reported before it.
    let ends: Vec<u64> = sink
        .progress
        .iter()
        .filter_map(|p| match p {
            Progress::Through { shard: 0, end, .. } => Some(*end),
            _ => None,
        })
        .collect();
    assert_eq!(ends.first(), Some(&1), "reports: {ends:?}");
    assert!(ends.windows(2).all(|w| w[0] < w[1]), "reports: {ends:?}");
    assert_eq!(ends.last(), Some(&4), "reports: {ends:?}");
    // And the writes did overlap: a later batch arrived while the slow one was pending.
    let log = server.log.lock().unwrap().clone();
    let slow = log
        .iter()
        .find(|(is_slow, _, _)| *is_slow)
        .expect("the slow write arrived");
    assert!(
        log.iter()
            .any(|(is_slow, arrived, _)| !is_slow && *arrived < slow.2),
        "no write overlapped the slow one: {log:?}"
    );
    sink.finish();
}
