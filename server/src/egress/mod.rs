//! The egress side: everything that leaves the node for Kafka, InfluxDB and PostgreSQL.
//!
//! The contract (docs/DELIVERY.md says it for operators):
//!
//! - Every record a shard appends to its durable log (a validated reading or a dead
//!   letter) is offered to every configured sink once it is durable (fsynced), in log order
//!   per shard, as a [`Delivery`] carrying the shard, the record's log offset and the
//!   record payload (the `crate::record` format: metadata JSON plus the raw signed
//!   envelope).
//! - A sink reports [`Progress::Through`] once every record of a shard below an offset is
//!   handled: stored by the sink, or refused by it and reported with [`Progress::Refused`]
//!   first. It never reports a record it has not stored; retriable failures are retried
//!   (with backoff) for as long as it takes, while the records wait in the log.
//! - Deliveries may repeat after a restart (each sink resumes from its last checkpoint);
//!   a sink makes that harmless by (device, seq) or by its own cursor.
//! - Shards reach the egress thread only through bounded rings. A full ring or a full
//!   sink queue never drops a record: the sink's feeder notices the gap in offsets and
//!   reads the missing records back from the durable log.
//!
//! Threads: one egress thread runs a small tokio runtime with, per configured sink, a
//! feeder task (live records from the shards' rings, gaps from the log on disk) and the
//! sink's own task; a dispatcher moving records off the shard rings; a router moving
//! progress back; a checkpointer. rdkafka adds its own threads.
//!
//! Layout: [`driver`] is what every sink shares (the error type, backoff, contiguous
//! progress, refusals, metrics); each sink is a folder (`config`, `encoding`, `service`,
//! `sink`); [`SinkId`] lists them, and per-sink state is indexed by [`SinkId::index`].
//! docs/DELIVERY.md ("Adding a sink") says how to add one.

pub mod driver;
pub mod feeder;
pub mod influx;
pub mod kafka;
pub mod postgres;
pub mod sink;

pub use driver::{Backoff, Reporter, Retry, SinkError, Tracker, PROGRESS_QUEUE_REPORTS};
pub use sink::{Delivery, Progress, SinkId, SinkInput};

use crate::config::Config;
use crate::log::{shard_dir, LogReader};
use crate::metrics::{Registry as MetricsRegistry, SinkMetrics};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A record a sink refused for good, sent back to its shard, which writes a dead letter
/// for it. `original` is the refused record's payload, read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub offset: u64,
    pub sink: SinkId,
    pub reason: String,
    pub detail: String,
    pub original: Option<Delivery>,
}

/// Refusals queued from the egress thread to one shard at most. When the ring is full the
/// router waits (and with it the sinks' progress) until the shard has taken some: a
/// refusal is never dropped.
pub const REFUSALS_RING_RECORDS: usize = 4096;

/// Positions shared between the shards and the egress thread (plain counters; records
/// themselves only cross in the rings).
#[derive(Debug)]
pub struct Positions {
    /// Per shard: every record below this offset is fsynced. Set by the shard.
    pub durable_end: Vec<AtomicU64>,
    /// Per sink ([`SinkId::index`]), per shard: every record below this offset is handled
    /// by the sink. Set by the egress thread.
    confirmed: Vec<Vec<AtomicU64>>,
    /// Per sink ([`SinkId::index`]): whether it is configured.
    configured: Vec<bool>,
}

impl Positions {
    /// Positions for `shards` shards, with the sinks for which `configured` is true.
    #[must_use]
    pub fn new(shards: usize, configured: impl Fn(SinkId) -> bool) -> Self {
        let zeros = || (0..shards).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Self {
            durable_end: zeros(),
            confirmed: SinkId::ALL.iter().map(|_| zeros()).collect(),
            configured: SinkId::ALL.iter().map(|sink| configured(*sink)).collect(),
        }
    }

    /// Whether `sink` is configured (records are offered to it).
    #[must_use]
    pub fn is_configured(&self, sink: SinkId) -> bool {
        self.configured[sink.index()]
    }

    /// The configured sinks.
    pub fn sinks(&self) -> impl Iterator<Item = SinkId> + '_ {
        SinkId::ALL
            .iter()
            .copied()
            .filter(|sink| self.is_configured(*sink))
    }

    /// Where `sink` has got on `shard`.
    #[must_use]
    pub fn confirmed(&self, sink: SinkId, shard: usize) -> u64 {
        self.confirmed[sink.index()][shard].load(Ordering::Acquire)
    }

    /// Moves `sink`'s position on `shard` forward to `end` (never back).
    pub fn confirm(&self, sink: SinkId, shard: usize, end: u64) {
        if let Some(slot) = self.confirmed[sink.index()].get(shard) {
            slot.fetch_max(end, Ordering::AcqRel);
        }
    }

    /// Whether every configured sink has every durable record of every shard.
    #[must_use]
    pub fn drained(&self) -> bool {
        self.sinks().all(|sink| {
            self.durable_end
                .iter()
                .enumerate()
                .all(|(shard, end)| self.confirmed(sink, shard) >= end.load(Ordering::Acquire))
        })
    }
}

/// A shard's end of the egress rings.
pub struct ShardLink {
    /// Durable records, in offset order. When full, the shard drops them (the feeder
    /// reads them back from the log).
    pub out: rtrb::Producer<Delivery>,
    /// Records a sink refused for good.
    pub refused: rtrb::Consumer<Refusal>,
    /// Wakes the dispatcher after pushing.
    pub wake: Arc<tokio::sync::Notify>,
    pub positions: Arc<Positions>,
}

/// Why the egress could not start.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("egress runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Kafka(String),
    #[error("{0}")]
    Postgres(String),
}

/// How far each sink had got, per shard, persisted in the shard's log directory.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sink name to the offset below which it confirmed every record.
    pub sinks: BTreeMap<String, u64>,
}

const CHECKPOINT_FILE: &str = "egress.checkpoint";

impl Checkpoint {
    /// Reads a shard's checkpoint; a missing or unreadable one means "from the start"
    /// (replays are idempotent, so starting early is safe, starting late is not).
    #[must_use]
    pub fn load(dir: &Path) -> Self {
        match std::fs::read(dir.join(CHECKPOINT_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(dir = %dir.display(), %error, "unreadable egress checkpoint; the sinks start from the beginning of the log");
                Self::default()
            }),
            Err(_) => Self::default(),
        }
    }

    /// Writes it atomically (temp file, fsync, rename).
    pub fn store(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(dir)?;
        let temp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&serde_json::to_vec(self).unwrap_or_default())?;
        file.sync_data()?;
        std::fs::rename(&temp, dir.join(CHECKPOINT_FILE))
    }

    #[must_use]
    pub fn get(&self, sink: SinkId) -> u64 {
        self.sinks.get(sink.name()).copied().unwrap_or(0)
    }
}

/// The running egress thread.
pub struct Egress {
    positions: Arc<Positions>,
    handle: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the caller hands over for the registry from PostgreSQL.
pub type RegistryCallback = Arc<dyn Fn(crate::registry::Registry) + Send + Sync>;

impl Egress {
    /// Starts the egress thread with every configured sink. Returns the shards' links.
    /// With no sink configured there is nothing to start: `Ok(None)`.
    ///
    /// Kafka is checked before this returns: when it answers, missing topics are created
    /// (or, with `kafka.create_topics = false`, the start is refused); when it does not
    /// answer, the server starts anyway and records wait in the log.
    pub fn start(
        config: &Arc<Config>,
        shards: usize,
        metrics: &mut MetricsRegistry,
    ) -> Result<Option<(Self, Vec<ShardLink>)>, EgressError> {
        if !SinkId::ALL.iter().any(|sink| sink.configured(config)) {
            return Ok(None);
        }
        let positions = Arc::new(Positions::new(shards, |sink| sink.configured(config)));
        let dirs: Vec<PathBuf> = (0..shards)
            .map(|shard| shard_dir(&config.data_dir, shard))
            .collect();
        let checkpoints: Vec<Checkpoint> = dirs.iter().map(|dir| Checkpoint::load(dir)).collect();
        for &sink in SinkId::ALL {
            for (shard, checkpoint) in checkpoints.iter().enumerate() {
                positions.confirm(sink, shard, checkpoint.get(sink));
            }
        }
        let sink_metrics: Vec<(SinkId, Arc<SinkMetrics>)> = positions
            .sinks()
            .map(|sink| (sink, Arc::new(SinkMetrics::new(shards))))
            .collect();
        for (sink, m) in &sink_metrics {
            metrics.sinks.push((sink.name(), Arc::clone(m)));
        }

        // One thread runs every sink task: the egress needs a fraction of a core, and
        // tasks on one thread hand records to each other without cross-thread wake-ups.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .thread_name("ingestd-egress")
            .enable_all()
            .build()
            .map_err(EgressError::Runtime)?;

        if positions.is_configured(SinkId::Kafka) {
            runtime.block_on(kafka::prepare(&config.kafka))?;
        }

        let handle = runtime.handle().clone();
        let ring = config.egress.ring_records;
        let wake = Arc::new(tokio::sync::Notify::new());
        let mut links = Vec::with_capacity(shards);
        let mut outs = Vec::with_capacity(shards);
        let mut refused_tx = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (out_tx, out_rx) = rtrb::RingBuffer::new(ring);
            let (ref_tx, ref_rx) = rtrb::RingBuffer::new(REFUSALS_RING_RECORDS);
            links.push(ShardLink {
                out: out_tx,
                refused: ref_rx,
                wake: Arc::clone(&wake),
                positions: Arc::clone(&positions),
            });
            outs.push(out_rx);
            refused_tx.push(ref_tx);
        }

        let stop = Arc::new(AtomicBool::new(false));
        // Bounded: a sink whose reports are not taken waits (driver::PROGRESS_QUEUE_REPORTS).
        let (progress_tx, progress_rx) = mpsc::channel(PROGRESS_QUEUE_REPORTS);
        let mut live_senders = Vec::new();
        let mut sink_handles = Vec::new();
        let mut feeder_handles = Vec::new();
        for (sink, m) in &sink_metrics {
            let (live_tx, live_rx) = mpsc::channel(ring);
            let (sink_tx, sink_rx) = mpsc::channel(ring);
            live_senders.push(live_tx);
            let input = SinkInput {
                rx: sink_rx,
                progress: progress_tx.clone(),
                metrics: Arc::clone(m),
                shards,
            };
            let start: Vec<u64> = checkpoints.iter().map(|c| c.get(*sink)).collect();
            feeder_handles.push(runtime.spawn(feeder::feed(
                *sink,
                live_rx,
                sink_tx,
                start,
                Arc::clone(&positions),
                dirs.clone(),
            )));
            let handle = match sink {
                SinkId::Kafka => runtime.spawn(kafka::run(config.kafka.clone(), input)),
                SinkId::Influx => runtime.spawn(influx::run(config.influxdb.clone(), input)),
                SinkId::Postgres => runtime.spawn(postgres::run(
                    config.postgres.clone(),
                    config.node_id.clone(),
                    input,
                )),
            };
            sink_handles.push(handle);
        }
        drop(progress_tx);

        runtime.spawn(dispatch(outs, live_senders, Arc::clone(&wake)));
        let router = runtime.spawn(route(
            progress_rx,
            refused_tx,
            Arc::clone(&positions),
            dirs.clone(),
        ));

        let thread = {
            let positions = Arc::clone(&positions);
            let stop = Arc::clone(&stop);
            let interval = Duration::from_millis(config.egress.checkpoint_interval_ms);
            let drain = Duration::from_millis(config.shutdown.drain_timeout_ms);
            std::thread::Builder::new()
                .name("ingestd-egress".to_string())
                .spawn(move || {
                    runtime.block_on(async {
                        checkpoint_loop(&positions, &dirs, &sink_metrics, &stop, interval).await;
                        // Stopping: the shards have committed their last records. Give the
                        // sinks until the drain deadline to take everything durable.
                        let deadline = Instant::now() + drain;
                        while !positions.drained() && Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        if !positions.drained() {
                            tracing::warn!("stopping before every sink confirmed every record; they stay in the durable log and are delivered at the next start");
                        }
                        store_checkpoints(&positions, &dirs);
                        for feeder in feeder_handles {
                            feeder.abort();
                        }
                        for handle in sink_handles {
                            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
                        }
                        router.abort();
                        store_checkpoints(&positions, &dirs);
                    });
                    runtime.shutdown_timeout(Duration::from_secs(2));
                })
                .map_err(EgressError::Runtime)?
        };
        Ok(Some((
            Self {
                positions,
                handle,
                stop,
                thread: Some(thread),
            },
            links,
        )))
    }

    #[must_use]
    pub fn positions(&self) -> &Arc<Positions> {
        &self.positions
    }

    /// The egress runtime, for other network tasks (the registry watcher).
    #[must_use]
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Drains (bounded by `shutdown.drain_timeout_ms`), checkpoints and stops. Call after
    /// the shards have stopped.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Moves records from the shard rings to every sink's feeder. A full feeder queue drops
/// the record for that sink only; its feeder reads it back from the log.
async fn dispatch(
    mut outs: Vec<rtrb::Consumer<Delivery>>,
    live: Vec<mpsc::Sender<Arc<Delivery>>>,
    wake: Arc<tokio::sync::Notify>,
) {
    loop {
        let mut moved = 0usize;
        for out in &mut outs {
            while let Ok(delivery) = out.pop() {
                moved += 1;
                let delivery = Arc::new(delivery);
                for sender in &live {
                    let _ = sender.try_send(Arc::clone(&delivery));
                }
            }
        }
        if moved == 0 {
            let _ = tokio::time::timeout(Duration::from_millis(5), wake.notified()).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// Applies the sinks' progress: confirmed positions for the shards' acknowledgements and
/// the checkpoint, refusals to the shard that owns the record.
async fn route(
    mut progress: mpsc::Receiver<Progress>,
    mut refused: Vec<rtrb::Producer<Refusal>>,
    positions: Arc<Positions>,
    dirs: Vec<PathBuf>,
) {
    while let Some(report) = progress.recv().await {
        match report {
            Progress::Through { sink, shard, end } => positions.confirm(sink, shard, end),
            Progress::Refused {
                sink,
                shard,
                offset,
                reason,
                detail,
            } => {
                tracing::warn!(sink = sink.name(), shard, offset, %reason, %detail, "a sink refused a record; writing a dead letter");
                let Some(dir) = dirs.get(shard).cloned() else {
                    continue;
                };
                let original = tokio::task::spawn_blocking(move || read_one(&dir, shard, offset))
                    .await
                    .ok()
                    .flatten();
                let mut refusal = Refusal {
                    offset,
                    sink,
                    reason,
                    detail,
                    original,
                };
                let Some(ring) = refused.get_mut(shard) else {
                    continue;
                };
                loop {
                    match ring.push(refusal) {
                        Ok(()) => break,
                        Err(rtrb::PushError::Full(back)) => {
                            refusal = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            }
        }
    }
}

fn read_one(dir: &Path, shard: usize, offset: u64) -> Option<Delivery> {
    let entry = LogReader::open(dir, offset).ok()?.next()?.ok()?;
    (entry.offset == offset).then_some(Delivery::new(shard, offset, entry.kind, entry.payload))
}

async fn checkpoint_loop(
    positions: &Arc<Positions>,
    dirs: &[PathBuf],
    sinks: &[(SinkId, Arc<SinkMetrics>)],
    stop: &AtomicBool,
    interval: Duration,
) {
    let mut last = Instant::now();
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        for (sink, metrics) in sinks {
            for (shard, gauge) in metrics.backlog.iter().enumerate() {
                let durable = positions.durable_end[shard].load(Ordering::Acquire);
                gauge.set(durable.saturating_sub(positions.confirmed(*sink, shard)));
            }
        }
        if last.elapsed() >= interval {
            last = Instant::now();
            let positions = Arc::clone(positions);
            let dirs = dirs.to_vec();
            let _ = tokio::task::spawn_blocking(move || store_checkpoints(&positions, &dirs)).await;
        }
    }
}

fn store_checkpoints(positions: &Positions, dirs: &[PathBuf]) {
    for (shard, dir) in dirs.iter().enumerate() {
        let mut checkpoint = Checkpoint::default();
        for sink in positions.sinks() {
            checkpoint
                .sinks
                .insert(sink.name().to_string(), positions.confirmed(sink, shard));
        }
        if let Err(error) = checkpoint.store(dir) {
            tracing::warn!(dir = %dir.display(), %error, "writing the egress checkpoint failed; the sinks resume from the previous one");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sink_has_its_place_name_and_reason() {
        for (index, sink) in SinkId::ALL.iter().enumerate() {
            assert_eq!(sink.index(), index, "{sink:?}");
            assert_eq!(
                sink.refused_reason(),
                format!("{}_refused", sink.name()),
                "{sink:?}"
            );
        }
        let mut names: Vec<&str> = SinkId::ALL.iter().map(|sink| sink.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SinkId::ALL.len(), "names are unique");
    }

    #[test]
    fn positions_cover_the_configured_sinks_only() {
        let positions = Positions::new(2, |sink| sink == SinkId::Influx);
        assert!(positions.is_configured(SinkId::Influx));
        assert!(!positions.is_configured(SinkId::Kafka));
        assert_eq!(positions.sinks().collect::<Vec<_>>(), [SinkId::Influx]);
        positions.durable_end[0].store(5, Ordering::Release);
        positions.durable_end[1].store(3, Ordering::Release);
        assert!(!positions.drained());
        positions.confirm(SinkId::Influx, 0, 5);
        positions.confirm(SinkId::Influx, 1, 3);
        assert!(
            positions.drained(),
            "an unconfigured sink does not hold it back"
        );
        positions.confirm(SinkId::Influx, 0, 2);
        assert_eq!(
            positions.confirmed(SinkId::Influx, 0),
            5,
            "never moves back"
        );
        positions.confirm(SinkId::Influx, 9, 1);
        assert_eq!(positions.confirmed(SinkId::Kafka, 1), 0);
    }

    #[test]
    fn checkpoints_name_the_configured_sinks() {
        let dir = std::env::temp_dir().join(format!("ingestd-checkpoint-{}", std::process::id()));
        let positions = Positions::new(1, |sink| sink != SinkId::Postgres);
        positions.confirm(SinkId::Kafka, 0, 7);
        positions.confirm(SinkId::Influx, 0, 4);
        store_checkpoints(&positions, std::slice::from_ref(&dir));
        let checkpoint = Checkpoint::load(&dir);
        assert_eq!(checkpoint.get(SinkId::Kafka), 7);
        assert_eq!(checkpoint.get(SinkId::Influx), 4);
        assert!(!checkpoint.sinks.contains_key("postgres"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
