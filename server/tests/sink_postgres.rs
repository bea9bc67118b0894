//! The PostgreSQL sink and registry against a real PostgreSQL: a private cluster per test
//! (common/postgres.rs). Nothing is timed; every wait is for a condition, with a generous
//! deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::postgres;

use ingestd::config::PostgresConfig;
use ingestd::egress::postgres as pg_sink;
use ingestd::egress::{Delivery, Progress, SinkId, SinkInput};
use ingestd::log::RecordKind;
use ingestd::metrics::SinkMetrics;
use ingestd::pg;
use ingestd::record::{self, DeadLetterMeta, FraudMeta, ReadingMeta};
use ingestd::registry::{self, DeviceStatus, Registry};
use postgres::Postgres;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

const NODE: &str = "node-a";
const DEADLINE: Duration = Duration::from_secs(60);

/// The egress thread's runtime, as the server has it: the sink runs there while the test
/// thread delivers and checks with blocking calls.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn config(pg: &Postgres) -> PostgresConfig {
    PostgresConfig {
        url: pg.url(),
        flush_interval_ms: 20,
        batch_records_max: 700,
        retry_backoff_ms: 20,
        retry_backoff_ms_max: 200,
        ..PostgresConfig::default()
    }
}

fn reading(shard: usize, offset: u64, device: &str, seq: u64, received_ms: u64) -> Arc<Delivery> {
    scored_reading(shard, offset, device, seq, received_ms, None)
}

fn scored_reading(
    shard: usize,
    offset: u64,
    device: &str,
    seq: u64,
    received_ms: u64,
    fraud: Option<FraudMeta>,
) -> Arc<Delivery> {
    let meta = ReadingMeta {
        device: device.to_string(),
        seq,
        ts_ms: received_ms,
        readings: BTreeMap::from([("co2_ppm".to_string(), 415.5)]),
        topic: format!("devices/{device}/telemetry"),
        received_ms,
        node: NODE.to_string(),
        shard,
        qos: 1,
        region: "eu-west".to_string(),
        project: String::new(),
        location: format!("site-{}", device.len()),
        sensor_type: String::new(),
        peer: String::new(),
        connected_ms: 0,
        fraud,
    };
    let mut payload = Vec::new();
    record::encode(&meta, b"signed envelope", &mut payload);
    Arc::new(Delivery::new(shard, offset, RecordKind::Reading, payload))
}

fn dead_letter(
    shard: usize,
    offset: u64,
    device: &str,
    seq: Option<u64>,
    reason: &str,
    detail: &str,
    received_ms: u64,
) -> Arc<Delivery> {
    let meta = DeadLetterMeta {
        reason: reason.to_string(),
        detail: detail.to_string(),
        device: device.to_string(),
        topic: format!("devices/{device}/telemetry"),
        received_ms,
        node: NODE.to_string(),
        shard,
        qos: 1,
        peer: "127.0.0.1:40000".to_string(),
        seq,
        connected_ms: 0,
    };
    let mut payload = Vec::new();
    record::encode(&meta, b"refused envelope", &mut payload);
    Arc::new(Delivery::new(
        shard,
        offset,
        RecordKind::DeadLetter,
        payload,
    ))
}

/// A running sink and what it reported.
struct Harness {
    tx: Option<mpsc::Sender<Arc<Delivery>>>,
    progress: mpsc::Receiver<Progress>,
    metrics: Arc<SinkMetrics>,
    task: Option<tokio::task::JoinHandle<()>>,
    reported: Vec<Progress>,
}

impl Harness {
    fn start(rt: &Runtime, config: PostgresConfig, shards: usize) -> Harness {
        Harness::start_on(rt, config, shards, NODE)
    }

    /// A sink of node `node` (its own cursors).
    fn start_on(rt: &Runtime, config: PostgresConfig, shards: usize, node: &str) -> Harness {
        // Room for a whole test's deliveries: the sink stops reading while it retries, as
        // it should, and the test thread must not block on a full channel then.
        let (tx, rx) = mpsc::channel(100_000);
        let (progress_tx, progress) = mpsc::channel(ingestd::egress::PROGRESS_QUEUE_REPORTS);
        let metrics = Arc::new(SinkMetrics::new(shards));
        let input = SinkInput {
            rx,
            progress: progress_tx,
            metrics: metrics.clone(),
            shards,
        };
        let task = rt.spawn(pg_sink::run(config, node.to_string(), input));
        Harness {
            tx: Some(tx),
            progress,
            metrics,
            task: Some(task),
            reported: Vec::new(),
        }
    }

    fn send(&self, delivery: Arc<Delivery>) {
        self.tx.as_ref().unwrap().blocking_send(delivery).unwrap();
    }

    fn drain(&mut self) {
        while let Ok(progress) = self.progress.try_recv() {
            self.reported.push(progress);
        }
    }

    /// The highest `Through` end reported for a shard.
    fn through(&self, shard: usize) -> u64 {
        self.reported
            .iter()
            .filter_map(|p| match p {
                Progress::Through {
                    sink: SinkId::Postgres,
                    shard: s,
                    end,
                } if *s == shard => Some(*end),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    fn wait_through(&mut self, shard: usize, end: u64) {
        let started = Instant::now();
        loop {
            self.drain();
            if self.through(shard) >= end {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "shard {shard}: Through reached {} of {end}",
                self.through(shard)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Closes the input and waits for the sink to finish (everything applied).
    fn finish(&mut self, rt: &Runtime) {
        self.tx = None;
        if let Some(task) = self.task.take() {
            rt.block_on(task).unwrap();
        }
        self.drain();
    }

    fn refused(&self) -> Vec<u64> {
        self.reported
            .iter()
            .filter_map(|p| match p {
                Progress::Refused { offset, reason, .. } => {
                    assert_eq!(reason, pg_sink::REFUSED_REASON);
                    Some(*offset)
                }
                _ => None,
            })
            .collect()
    }
}

async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

fn migrate(rt: &Runtime, pg: &Postgres) {
    rt.block_on(async { pg::migrate(&client(&pg.url()).await).await.unwrap() });
}

#[test]
fn migrations_apply_once_even_concurrently_and_refuse_a_future_schema() {
    let pg = Postgres::new();
    let rt = runtime();
    // Four nodes starting at once on an empty database.
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let url = pg.url();
            tasks.push(tokio::spawn(async move {
                pg::migrate(&client(&url).await).await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    });
    let tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'";
    assert_eq!(
        pg.query_i64("SELECT count(*) FROM schema_migrations"),
        i64::from(pg::SCHEMA_VERSION)
    );
    for table in [
        "devices",
        "device_stats",
        "dead_letters",
        "alerts",
        "sink_cursors",
        "sink_refusals",
    ] {
        assert_eq!(
            pg.query_text(&format!("SELECT to_regclass('{table}') IS NOT NULL")),
            "t",
            "{table}"
        );
    }
    assert_eq!(
        pg.query_text("SELECT to_regclass('fraud_alerts') IS NULL"),
        "t",
        "the unused placeholder is gone"
    );
    let count = pg.query_i64(tables);
    // Again: nothing to do.
    migrate(&rt, &pg);
    assert_eq!(
        pg.query_i64("SELECT count(*) FROM schema_migrations"),
        i64::from(pg::SCHEMA_VERSION)
    );
    assert_eq!(pg.query_i64(tables), count);
    // A newer build migrated this database: this one must not write to it.
    pg.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (99, now())");
    let error = rt
        .block_on(async { pg::migrate(&client(&pg.url()).await).await })
        .unwrap_err()
        .to_string();
    assert!(error.contains("version 99"), "{error}");
    println!("future schema refused: {error}");
}

/// Expected per-device figures, computed from what was delivered.
#[derive(Debug, Default, Clone, PartialEq)]
struct Expected {
    readings: i64,
    dead_letters: i64,
    last_seq: Option<u64>,
    last_seen_ms: u64,
}

fn stats_in_db(pg: &Postgres) -> BTreeMap<String, String> {
    let text = pg.query_text(
        "SELECT coalesce(string_agg(device_id || ' ' || readings || ' ' || dead_letters || ' ' \
         || coalesce(last_seq::text, '-') || ' ' \
         || (extract(epoch FROM last_seen) * 1000)::bigint, ',' ORDER BY device_id), '') \
         FROM device_stats",
    );
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|row| {
            let (device, rest) = row.split_once(' ').unwrap();
            (device.to_string(), rest.to_string())
        })
        .collect()
}

fn stats_expected(expected: &BTreeMap<String, Expected>) -> BTreeMap<String, String> {
    expected
        .iter()
        .map(|(device, e)| {
            let seq = e.last_seq.map_or("-".to_string(), |s| s.to_string());
            (
                device.clone(),
                format!(
                    "{} {} {} {}",
                    e.readings, e.dead_letters, seq, e.last_seen_ms
                ),
            )
        })
        .collect()
}

const REASONS: [&str; 3] = ["bad_signature", "stale_sequence", "clock_skew"];

/// A deterministic stream: device `i % devices`, home shard by device index, every
/// seventh record a dead letter. Returns the deliveries and the expected figures.
fn stream(
    records: u64,
    devices: u64,
    shards: usize,
) -> (Vec<Arc<Delivery>>, BTreeMap<String, Expected>) {
    let mut next_offset = vec![0u64; shards];
    let mut seq: HashMap<u64, u64> = HashMap::new();
    let mut out = Vec::new();
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    let base_ms = 1_764_201_600_000;
    for i in 0..records {
        let d = i % devices;
        let device = format!("dev-{d:06}");
        let shard = (d as usize) % shards;
        let offset = next_offset[shard];
        next_offset[shard] += 1;
        let received_ms = base_ms + i;
        let e = expected.entry(device.clone()).or_default();
        e.last_seen_ms = e.last_seen_ms.max(received_ms);
        if i % 7 == 3 {
            let reason = REASONS[(i / 7) as usize % REASONS.len()];
            out.push(dead_letter(
                shard,
                offset,
                &device,
                Some(1 << 40),
                reason,
                "refused",
                received_ms,
            ));
            e.dead_letters += 1;
        } else {
            let s = seq.entry(d).or_insert(1000);
            *s += 3;
            out.push(reading(shard, offset, &device, *s, received_ms));
            e.readings += 1;
            e.last_seq = Some(*s);
        }
    }
    (out, expected)
}

fn ends(deliveries: &[Arc<Delivery>], shards: usize) -> Vec<u64> {
    let mut ends = vec![0; shards];
    for d in deliveries {
        ends[d.shard] = ends[d.shard].max(d.offset + 1);
    }
    ends
}

#[test]
fn ten_thousand_records_are_counted_exactly() {
    let pg = Postgres::new();
    let rt = runtime();
    let (deliveries, expected) = stream(10_000, 50, 2);
    let mut sink = Harness::start(&rt, config(&pg), 2);
    for delivery in &deliveries {
        sink.send(delivery.clone());
    }
    let ends = ends(&deliveries, 2);
    for (shard, &end) in ends.iter().enumerate() {
        sink.wait_through(shard, end);
    }
    assert_eq!(stats_in_db(&pg), stats_expected(&expected));
    assert_eq!(
        pg.query_i64("SELECT sum(readings) FROM device_stats"),
        8_571
    );
    assert_eq!(pg.query_i64("SELECT count(*) FROM dead_letters"), 1_429);
    let by_reason = pg.query_text(
        "SELECT string_agg(reason || '=' || n, ',' ORDER BY reason) FROM \
         (SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason) r",
    );
    assert_eq!(
        by_reason,
        "bad_signature=477,clock_skew=476,stale_sequence=476"
    );
    // Indexed by device and time, and found by reason.
    assert_eq!(
        pg.query_i64(
            "SELECT count(*) FROM dead_letters WHERE device_id = 'dev-000003' \
             AND reason = 'bad_signature' AND seq = 1099511627776 AND node = 'node-a'"
        ),
        pg.query_i64(
            "SELECT count(*) FROM dead_letters WHERE device_id = 'dev-000003' \
             AND reason = 'bad_signature'"
        )
    );
    let cursors = pg.query_text(
        "SELECT string_agg(shard || ':' || next_offset, ',' ORDER BY shard) FROM sink_cursors",
    );
    assert_eq!(cursors, format!("0:{},1:{}", ends[0], ends[1]));
    sink.finish(&rt);
    assert!(sink.refused().is_empty());
    let m = &sink.metrics;
    assert_eq!(m.records.get(), 10_000);
    assert!(m.batches.get() >= 2);
    assert_eq!(m.latency.count(), m.batches.get());
    assert!(m.bytes.get() > 0);
    assert_eq!(m.up.get(), 1);
    assert_eq!(
        (m.failures.get(), m.retries.get(), m.refused.get()),
        (0, 0, 0)
    );
    println!(
        "10000 records in {} batches, ~{} bytes sent",
        m.batches.get(),
        m.bytes.get()
    );
}

#[test]
fn a_replay_from_a_lower_offset_counts_nothing_twice() {
    let pg = Postgres::new();
    let rt = runtime();
    let (deliveries, expected) = stream(1_600, 20, 1);
    let mut first = Harness::start(&rt, config(&pg), 1);
    for delivery in &deliveries[..1_000] {
        first.send(delivery.clone());
    }
    first.wait_through(0, 1_000);
    first.finish(&rt);

    // A restart: the shard replays from its last checkpoint, below what was applied.
    let mut second = Harness::start(&rt, config(&pg), 1);
    for delivery in &deliveries[600..1_500] {
        second.send(delivery.clone());
    }
    second.wait_through(0, 1_500);
    // And a rewind within one run (the shard re-reads its log after a full ring).
    for delivery in &deliveries[1_200..1_600] {
        second.send(delivery.clone());
    }
    second.finish(&rt);
    assert_eq!(second.through(0), 1_600);
    assert_eq!(stats_in_db(&pg), stats_expected(&expected));
    assert_eq!(
        pg.query_i64("SELECT sum(readings) + sum(dead_letters) FROM device_stats"),
        1_600
    );
    assert_eq!(pg.query_i64("SELECT count(*) FROM dead_letters"), 229);
    // The second run counted only what the first had not: 500 + 100 records.
    assert_eq!(second.metrics.records.get(), 600);
}

#[test]
fn an_outage_loses_nothing_and_reports_nothing_uncommitted() {
    let pg = Postgres::new();
    let rt = runtime();
    let (deliveries, expected) = stream(6_000, 30, 2);
    let ends = ends(&deliveries, 2);
    let mut config = config(&pg);
    // Slow reconnects give the check below time to read the cursors first.
    config.retry_backoff_ms_max = 1_000;
    let mut sink = Harness::start(&rt, config, 2);
    for delivery in &deliveries[..2_000] {
        sink.send(delivery.clone());
    }
    sink.wait_through(0, 300);
    // Mid-stream: records still flowing while PostgreSQL goes down.
    for delivery in &deliveries[2_000..3_000] {
        sink.send(delivery.clone());
    }
    pg.stop();
    for delivery in &deliveries[3_000..] {
        sink.send(delivery.clone());
    }
    let started = Instant::now();
    while sink.metrics.failures.get() < 3 {
        assert!(started.elapsed() < DEADLINE, "the sink never noticed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sink.metrics.up.get(), 0);
    sink.drain();
    let claimed = [sink.through(0), sink.through(1)];
    println!(
        "during the outage: Through {claimed:?} of {ends:?}, {} failures",
        sink.metrics.failures.get()
    );
    assert!(claimed[0] < ends[0] || claimed[1] < ends[1]);
    pg.start();
    // Every Through reported was committed: the cursors (which only grow) cover them.
    for (shard, claimed) in claimed.iter().enumerate() {
        let cursor = pg.query_i64(&format!(
            "SELECT coalesce(max(next_offset), 0) FROM sink_cursors WHERE shard = {shard}"
        ));
        assert!(
            cursor >= *claimed as i64,
            "shard {shard}: Through {claimed} reported, cursor {cursor}"
        );
    }
    for (shard, &end) in ends.iter().enumerate() {
        sink.wait_through(shard, end);
    }
    sink.finish(&rt);
    assert_eq!(stats_in_db(&pg), stats_expected(&expected));
    assert_eq!(
        pg.query_i64("SELECT sum(readings) + sum(dead_letters) FROM device_stats"),
        6_000
    );
    assert_eq!(pg.query_i64("SELECT count(*) FROM dead_letters"), 857);
    assert!(sink.metrics.retries.get() >= 3);
    assert_eq!(sink.metrics.up.get(), 1);
}

#[test]
fn a_record_postgres_refuses_is_reported_once_and_skipped() {
    let pg = Postgres::new();
    let rt = runtime();
    migrate(&rt, &pg);
    // Stands for any refusal caused by a record's content.
    pg.execute("ALTER TABLE dead_letters ADD CONSTRAINT no_poison CHECK (detail <> 'poison')");
    let poisoned = [40u64, 77];
    let deliveries: Vec<Arc<Delivery>> = (0..100u64)
        .map(|offset| {
            if poisoned.contains(&offset) {
                dead_letter(
                    0,
                    offset,
                    "dev-1",
                    None,
                    "malformed",
                    "poison",
                    1_000 + offset,
                )
            } else if offset % 10 == 5 {
                dead_letter(
                    0,
                    offset,
                    "dev-1",
                    None,
                    "malformed",
                    "fine",
                    1_000 + offset,
                )
            } else {
                reading(0, offset, "dev-1", offset, 1_000 + offset)
            }
        })
        .collect();
    let mut sink = Harness::start(&rt, config(&pg), 1);
    for delivery in &deliveries {
        sink.send(delivery.clone());
    }
    sink.finish(&rt);
    assert_eq!(sink.refused(), poisoned);
    // Each refusal comes before the Through that covers it.
    let first_through_past = sink
        .reported
        .iter()
        .position(|p| matches!(p, Progress::Through { end, .. } if *end > 77))
        .unwrap();
    let last_refusal = sink
        .reported
        .iter()
        .rposition(|p| matches!(p, Progress::Refused { .. }))
        .unwrap();
    assert!(last_refusal < first_through_past);
    assert_eq!(sink.through(0), 100);
    assert_eq!(sink.metrics.refused.get(), 2);
    assert_eq!(
        pg.query_text("SELECT readings || ' ' || dead_letters FROM device_stats"),
        "88 10"
    );
    assert_eq!(pg.query_i64("SELECT count(*) FROM sink_refusals"), 2);

    // A replay of the same records: nothing counted again, refusals reported again (a
    // shard that crashed before it wrote them down must still hear of them).
    let mut again = Harness::start(&rt, config(&pg), 1);
    for delivery in &deliveries {
        again.send(delivery.clone());
    }
    again.finish(&rt);
    assert_eq!(again.refused(), poisoned);
    assert_eq!(again.through(0), 100);
    assert_eq!(again.metrics.refused.get(), 0);
    assert_eq!(
        pg.query_text("SELECT readings || ' ' || dead_letters FROM device_stats"),
        "88 10"
    );
}

fn verdict(score: f32, detectors: &[&str], flagged: bool, quarantined: bool) -> Option<FraudMeta> {
    Some(FraudMeta {
        score,
        detectors: detectors.iter().map(|d| (*d).to_string()).collect(),
        flagged,
        quarantined,
    })
}

/// The `alerts` table, one line per row in key order.
fn alerts_in_db(pg: &Postgres) -> Vec<String> {
    pg.query_text(
        "SELECT device_id, seq, score, array_to_string(detectors, '+'), quarantined, \
         location, region, node, shard, log_offset, \
         (extract(epoch FROM ts) * 1000)::bigint, (extract(epoch FROM received) * 1000)::bigint, \
         readings->>'co2_ppm' \
         FROM alerts ORDER BY device_id, seq",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// Per device: readings, flagged, quarantined.
fn verdict_counts(pg: &Postgres) -> String {
    pg.query_text(
        "SELECT string_agg(device_id || ' ' || readings || ' ' || flagged || ' ' || quarantined, \
         ',' ORDER BY device_id) FROM device_stats",
    )
}

#[test]
fn flagged_readings_land_in_alerts_once_and_verdicts_are_counted() {
    let pg = Postgres::new();
    let rt = runtime();
    let base = 1_764_201_600_000;
    // Offsets 0..8 on one shard: flagged and quarantined, flagged only, scored clean,
    // unscored (an older log), a dead letter, and a sequence beyond bigint.
    let batch = |offset_base: u64| -> Vec<Arc<Delivery>> {
        let o = offset_base;
        vec![
            scored_reading(
                0,
                o,
                "dev-a",
                10,
                base,
                verdict(0.95, &["bounds", "peers"], true, true),
            ),
            scored_reading(
                0,
                o + 1,
                "dev-a",
                11,
                base + 1,
                verdict(0.1, &[], false, false),
            ),
            scored_reading(
                0,
                o + 2,
                "dev-bb",
                7,
                base + 2,
                verdict(0.6, &["rate"], true, false),
            ),
            reading(0, o + 3, "dev-bb", 8, base + 3),
            dead_letter(0, o + 4, "dev-bb", Some(9), "bad_signature", "no", base + 4),
            // Quarantined without an alert (thresholds set so): counted, no row.
            scored_reading(
                0,
                o + 5,
                "dev-c",
                1,
                base + 5,
                verdict(0.4, &["model"], false, true),
            ),
            scored_reading(
                0,
                o + 6,
                "dev-c",
                u64::MAX - 1,
                base + 6,
                verdict(0.7, &["clone", "timing"], true, false),
            ),
            reading(0, o + 7, "dev-a", 12, base + 7),
        ]
    };
    let first = batch(0);
    let mut sink = Harness::start(&rt, config(&pg), 1);
    for delivery in &first {
        sink.send(delivery.clone());
    }
    sink.wait_through(0, 8);
    let expected = vec![
        format!("dev-a|10|0.95|bounds+peers|t|site-5|eu-west|node-a|0|0|{base}|{base}|415.5"),
        format!(
            "dev-bb|7|0.6|rate|f|site-6|eu-west|node-a|0|2|{}|{}|415.5",
            base + 2,
            base + 2
        ),
        format!(
            "dev-c|18446744073709551614|0.7|clone+timing|f|site-5|eu-west|node-a|0|6|{}|{}|415.5",
            base + 6,
            base + 6
        ),
    ];
    assert_eq!(alerts_in_db(&pg), expected);
    let counts = "dev-a 3 1 1,dev-bb 2 1 0,dev-c 2 1 1";
    assert_eq!(verdict_counts(&pg), counts);
    assert_eq!(
        pg.query_i64("SELECT count(*) FROM alerts WHERE detectors @> '{peers}' AND quarantined"),
        1,
        "found by detector"
    );

    // The same batch again: within the run (a rewind) and after a restart.
    for delivery in &first {
        sink.send(delivery.clone());
    }
    sink.finish(&rt);
    let mut again = Harness::start(&rt, config(&pg), 1);
    for delivery in &first {
        again.send(delivery.clone());
    }
    again.finish(&rt);
    assert_eq!(again.through(0), 8);
    assert_eq!(alerts_in_db(&pg), expected, "one row per (device, seq)");
    assert_eq!(verdict_counts(&pg), counts, "counted once");

    // The same readings from another node's log (its own cursor, other offsets): the
    // counters are that node's to add, the alerts stay one per (device, seq), first kept.
    let mut other = Harness::start_on(&rt, config(&pg), 1, "node-b");
    for delivery in batch(100) {
        other.send(delivery);
    }
    other.finish(&rt);
    assert_eq!(other.through(0), 108);
    assert!(other.refused().is_empty());
    assert_eq!(alerts_in_db(&pg), expected);
    assert_eq!(pg.query_i64("SELECT sum(flagged) FROM device_stats"), 6);
}

#[test]
fn the_registry_is_imported_loaded_and_bad_rows_are_skipped() {
    let pg = Postgres::new();
    let rt = runtime();
    let config = config(&pg);
    let (file, _) = registry::provision(20, "dev-", &mut rand::rngs::OsRng);
    let imported = rt.block_on(pg::import_registry(&config, &file)).unwrap();
    assert_eq!(imported, 20);
    // The same file again changes nothing.
    assert_eq!(rt.block_on(pg::import_registry(&config, &file)).unwrap(), 0);
    let loaded = rt.block_on(pg::load_registry(&config)).unwrap();
    assert_eq!(loaded.len(), 20);
    let from_file = Registry::from_file(file.clone()).unwrap();
    for device in &file.devices {
        let got = loaded.get(&device.id).unwrap();
        let want = from_file.get(&device.id).unwrap();
        assert_eq!(got.key, want.key);
        assert_eq!(got.status, DeviceStatus::Active);
        assert_eq!(
            (&got.region, &got.project, &got.location, &got.sensor_type),
            (
                &want.region,
                &want.project,
                &want.location,
                &want.sensor_type
            )
        );
    }

    // Rows written by hand that the server refuses: a weak key, a bad id.
    pg.execute(&format!(
        "INSERT INTO devices (device_id, public_key, status) VALUES \
         ('weak-1', '01{}', 'active'), ('bad id', '{}', 'active')",
        "0".repeat(62),
        file.devices[0].public_key
    ));
    let loaded = rt.block_on(pg::load_registry(&config)).unwrap();
    assert_eq!(loaded.len(), 20);
    assert!(loaded.get("weak-1").is_none());
    assert!(loaded.get("bad id").is_none());
    assert!(loaded.get("dev-000019").is_some());

    // A file the server refuses is not imported at all.
    let mut bad = file.clone();
    bad.devices[3].public_key = "zz".to_string();
    let error = rt
        .block_on(pg::import_registry(&config, &bad))
        .unwrap_err()
        .to_string();
    assert!(error.contains("dev-000003"), "{error}");

    assert!(rt
        .block_on(pg::set_device_status(
            &config,
            "dev-000004",
            DeviceStatus::Revoked
        ))
        .unwrap());
    assert!(!rt
        .block_on(pg::set_device_status(
            &config,
            "no-such-device",
            DeviceStatus::Revoked
        ))
        .unwrap());
    let loaded = rt.block_on(pg::load_registry(&config)).unwrap();
    assert_eq!(
        loaded.get("dev-000004").unwrap().status,
        DeviceStatus::Revoked
    );
}

/// What the watcher handed over, and when.
type Seen = std::sync::mpsc::Receiver<(Instant, Registry)>;

fn wait_for(seen: &Seen, what: &str, check: impl Fn(&Registry) -> bool) -> Instant {
    let started = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(started.elapsed());
        let (at, registry) = seen
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the watcher never delivered a registry where {what}"));
        if check(&registry) {
            return at;
        }
    }
}

#[test]
fn the_watcher_delivers_revocations_and_survives_a_restart() {
    let pg = Postgres::new();
    let rt = runtime();
    let config = config(&pg);
    let (file, _) = registry::provision(50, "dev-", &mut rand::rngs::OsRng);
    rt.block_on(pg::import_registry(&config, &file)).unwrap();
    let (tx, seen) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let on_change: Arc<dyn Fn(Registry) + Send + Sync> = Arc::new(move |registry| {
        let _ = tx.lock().unwrap().send((Instant::now(), registry));
    });
    rt.spawn(pg::watch_registry(config.clone(), on_change));
    // The first load after LISTEN.
    wait_for(&seen, "all 50 devices are active", |r| {
        r.len() == 50 && r.get("dev-000007").unwrap().status == DeviceStatus::Active
    });

    let revoked = |id: &'static str| {
        move |r: &Registry| r.get(id).is_some_and(|d| d.status == DeviceStatus::Revoked)
    };
    let url = pg.url();
    let (sent, committed) = rt.block_on(async {
        let client = client(&url).await;
        let sent = Instant::now();
        client
            .execute(
                "UPDATE devices SET status = 'revoked' WHERE device_id = 'dev-000007'",
                &[],
            )
            .await
            .unwrap();
        (sent, Instant::now())
    });
    let delivered = wait_for(&seen, "dev-000007 is revoked", revoked("dev-000007"));
    println!(
        "revoke -> on_change: {:.1} ms from sending the UPDATE ({:.1} ms after its commit returned)",
        delivered.saturating_duration_since(sent).as_secs_f64() * 1e3,
        delivered.saturating_duration_since(committed).as_secs_f64() * 1e3,
    );

    // A restart of PostgreSQL: the watcher reconnects, reloads, and follows later changes.
    pg.stop();
    std::thread::sleep(Duration::from_millis(300));
    pg.start();
    pg.execute("UPDATE devices SET status = 'revoked' WHERE device_id = 'dev-000042'");
    wait_for(&seen, "dev-000042 is revoked", revoked("dev-000042"));
    pg.execute("DELETE FROM devices WHERE device_id = 'dev-000043'");
    wait_for(&seen, "dev-000043 is gone", |r| {
        r.get("dev-000043").is_none() && r.len() == 49
    });
}

#[test]
fn the_cli_imports_a_registry_and_sets_a_status() {
    let pg = Postgres::new();
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_ingestd");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let devices = dir.path().join("devices");
    run(&[
        "devices",
        "provision",
        "--count",
        "5",
        "--out",
        devices.to_str().unwrap(),
    ]);
    let registry = devices.join("registry.json");
    let url = pg.url();
    let out = run(&[
        "devices",
        "pg-import",
        "--postgres",
        &url,
        "--registry",
        registry.to_str().unwrap(),
    ]);
    assert!(out.contains('5'), "{out}");
    assert_eq!(pg.query_i64("SELECT count(*) FROM devices"), 5);
    run(&[
        "devices",
        "pg-status",
        "--postgres",
        &url,
        "dev-000002",
        "revoked",
    ]);
    assert_eq!(
        pg.query_text("SELECT status FROM devices WHERE device_id = 'dev-000002'"),
        "revoked"
    );
    let out = std::process::Command::new(bin)
        .args([
            "devices",
            "pg-status",
            "--postgres",
            &url,
            "nobody",
            "active",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"));
}
