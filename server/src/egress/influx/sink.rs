//! The sink's loop: records gathered into batches, up to `writes_in_flight` batches
//! written at once, each reported (oldest first) once InfluxDB stored or refused all of
//! it; and the search that finds the refused records of a refused batch.

use super::encoding::{push_lines, Unrepresentable};
use super::service::{build_client, Endpoint, Writer};
use super::InfluxConfig;
use crate::egress::sink::Decoded;
use crate::egress::{Backoff, Delivery, Reporter, SinkId, SinkInput};
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Runs the sink until `input.rx` is closed and every record received has been stored or
/// refused, and reported.
///
/// A write that cannot get through is retried for as long as it takes, so while InfluxDB
/// is away this does not return; dropping the future stops it (records not yet reported
/// stay in the shards' logs and come again).
///
/// # Panics
///
/// If `config` did not pass `Config::validate` (the URL or token is unusable), or
/// `input.shards` is 0: both are bugs of the caller.
pub async fn run(config: InfluxConfig, input: SinkInput) {
    let SinkInput {
        mut rx,
        progress,
        metrics,
        shards,
    } = input;
    assert!(shards > 0, "the influxdb sink needs at least one shard");
    let endpoint = match Endpoint::new(&config) {
        Ok(endpoint) => endpoint,
        Err((key, problem)) => panic!("influxdb sink started with an invalid `{key}`: {problem}"),
    };
    let backoff = Backoff {
        base_ms: config.retry_backoff_ms,
        max_ms: config.retry_backoff_ms_max,
    };
    let client = build_client(&config, backoff, &metrics).await;
    let limits = BatchLimits::new(&config);
    let reporter = Reporter::new(SinkId::Influx, progress, metrics, shards);
    let writer = Arc::new(Writer {
        client,
        endpoint,
        gzip: config.gzip,
        backoff,
        reporter: reporter.clone(),
    });
    tracing::info!(url = %writer.endpoint.url, gzip = writer.gzip, "influxdb sink started");

    let mut open = Batch::new(shards);
    // Writes in flight, oldest first. Several may be under way (InfluxDB handles them in
    // parallel), but a batch is reported only once every older one is: progress stays
    // contiguous whichever write finishes first.
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let writes_max = config.writes_in_flight.max(1);
    let mut receiving = true;
    loop {
        let room = in_flight.len() < writes_max;
        if room && (open.is_due(Instant::now(), &limits) || !receiving) {
            if !open.is_empty() {
                let batch = std::mem::replace(&mut open, Batch::new(shards));
                in_flight.push_back(InFlight(tokio::spawn(Arc::clone(&writer).write(batch))));
                continue;
            } else if !receiving && in_flight.is_empty() {
                tracing::info!("influxdb sink stopped: input closed and everything reported");
                return;
            }
        }
        let accepting = receiving && !open.is_full(&limits);
        let due_at = open.due_at(&limits);
        tokio::select! {
            biased;
            joined = wait(in_flight.front_mut()), if !in_flight.is_empty() => {
                in_flight.pop_front();
                match joined {
                    Ok(batch) => report_through(&batch, &reporter).await,
                    Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                    // Cancelled: the runtime is shutting down.
                    Err(_) => return,
                }
            }
            () = sleep_until(due_at), if room && due_at.is_some() => {}
            delivery = rx.recv(), if accepting => match delivery {
                Some(delivery) => {
                    if let Err(why) = open.push(&delivery, Instant::now()) {
                        reporter.refused(delivery.shard, delivery.offset, why.to_string()).await;
                    }
                }
                None => receiving = false,
            },
        }
    }
}

/// A write in flight; aborted if the sink's task is dropped, so no write outlives it.
struct InFlight(JoinHandle<Batch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn wait(in_flight: Option<&mut InFlight>) -> Result<Batch, tokio::task::JoinError> {
    match in_flight {
        Some(InFlight(handle)) => handle.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reports `Through` for every shard the batch reached (the reporter leaves out any that
/// does not move a shard forward: a replay's batch never moves it back).
async fn report_through(batch: &Batch, reporter: &Reporter) {
    for (shard, end) in batch.ends().iter().enumerate() {
        if let Some(end) = *end {
            reporter.through(shard, end).await;
        }
    }
}

/// What closes a batch, from `InfluxConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub points_max: usize,
    pub bytes_max: usize,
    /// A batch is due this long after its first record arrived.
    pub age_max: Duration,
}

impl BatchLimits {
    #[must_use]
    pub fn new(config: &InfluxConfig) -> Self {
        Self {
            points_max: config.batch_points_max,
            bytes_max: config.batch_bytes_max,
            age_max: Duration::from_millis(config.flush_interval_ms),
        }
    }
}

/// One record's lines in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub shard: usize,
    pub offset: u64,
    /// Its lines: a slice of the batch's body.
    pub lines: Range<usize>,
    /// When the server received the message (ms since the Unix epoch), for the
    /// receipt -> queryable latency.
    pub received_ms: u64,
}

/// Records gathered for one write.
///
/// A record is added whole, so a batch may pass `points_max` or `bytes_max` by one
/// record's lines (a few readings).
#[derive(Debug)]
pub struct Batch {
    /// Line protocol of every entry, back to back: a run of entries is one slice of it.
    body: Vec<u8>,
    /// The records that have points, in arrival order: the unit of the refusal search.
    entries: Vec<Entry>,
    points: usize,
    /// Per shard, one past the highest offset delivered into this batch, records without
    /// points included: what `Progress::Through` reports once the batch is handled.
    ends: Vec<Option<u64>>,
    /// When the first record arrived; `None` while empty.
    opened_at: Option<Instant>,
}

impl Batch {
    #[must_use]
    pub fn new(shards: usize) -> Self {
        Self {
            body: Vec::new(),
            entries: Vec::new(),
            points: 0,
            ends: vec![None; shards],
            opened_at: None,
        }
    }

    /// Adds a delivery: its points if it is a reading, its offset in any case (a refused
    /// record is handled too once its refusal is reported, which the caller does).
    ///
    /// # Panics
    ///
    /// If the delivery's shard is outside the sink's shard count (a bug of the egress side).
    pub fn push(&mut self, delivery: &Delivery, now: Instant) -> Result<(), Unrepresentable> {
        assert!(
            delivery.shard < self.ends.len(),
            "delivery from shard {} but the sink has {} shards",
            delivery.shard,
            self.ends.len()
        );
        self.opened_at.get_or_insert(now);
        let end = delivery.offset.saturating_add(1);
        let slot = &mut self.ends[delivery.shard];
        *slot = Some(slot.map_or(end, |known| known.max(end)));
        if let Decoded::Reading(meta) = delivery.decoded() {
            let start = self.body.len();
            let points = push_lines(meta, &mut self.body)?;
            if points > 0 {
                self.points += points;
                self.entries.push(Entry {
                    shard: delivery.shard,
                    offset: delivery.offset,
                    lines: start..self.body.len(),
                    received_ms: meta.received_ms,
                });
            }
        }
        Ok(())
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.opened_at.is_none()
    }

    /// At its point or byte limit: no more records are taken into it.
    #[must_use]
    pub fn is_full(&self, limits: &BatchLimits) -> bool {
        self.points >= limits.points_max || self.body.len() >= limits.bytes_max
    }

    /// When it is due by age; `None` while empty.
    #[must_use]
    pub fn due_at(&self, limits: &BatchLimits) -> Option<Instant> {
        self.opened_at.map(|at| at + limits.age_max)
    }

    /// Full, or old enough: it should be written as soon as a write slot is free.
    #[must_use]
    pub fn is_due(&self, now: Instant, limits: &BatchLimits) -> bool {
        !self.is_empty()
            && (self.is_full(limits) || self.due_at(limits).is_some_and(|at| now >= at))
    }

    #[must_use]
    pub fn points(&self) -> usize {
        self.points
    }

    #[must_use]
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    #[must_use]
    pub fn ends(&self) -> &[Option<u64>] {
        &self.ends
    }

    /// The lines of entries `range`, one contiguous slice.
    #[must_use]
    pub fn lines(&self, range: Range<usize>) -> &[u8] {
        let entries = &self.entries[range];
        match (entries.first(), entries.last()) {
            (Some(first), Some(last)) => &self.body[first.lines.start..last.lines.end],
            _ => &[],
        }
    }
}

// ---------------------------------------------------------------------------------------
// The refusal search

/// Finds the records InfluxDB refuses in a batch: a refused run of entries is split in
/// halves, each written again (writes are idempotent), down to single entries, which are
/// refused. Runs come out in entry order; the stack holds at most log2(n) + 1 runs.
#[derive(Debug)]
pub struct Bisect {
    /// Runs still to write, the next one last.
    todo: Vec<Range<usize>>,
}

impl Bisect {
    /// A search over entries `0..entries`, starting with all of them in one write.
    #[must_use]
    pub fn new(entries: usize) -> Self {
        // An empty search has nothing to write.
        let todo = (entries > 0).then_some(0..entries).into_iter().collect();
        Self { todo }
    }

    /// The next run of entries to write.
    pub fn next_run(&mut self) -> Option<Range<usize>> {
        self.todo.pop()
    }

    /// `run` was refused: the entry to refuse if it is a single one, else `None` and its
    /// halves come next, first half first.
    pub fn refused(&mut self, run: Range<usize>) -> Option<usize> {
        assert!(!run.is_empty(), "an empty run was written");
        if run.len() == 1 {
            return Some(run.start);
        }
        let middle = run.start + run.len() / 2;
        self.todo.push(middle..run.end);
        self.todo.push(run.start..middle);
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::encoding::tests::{dead_letter, lines, meta, reading};
    use super::*;
    use crate::log::RecordKind;

    fn limits() -> BatchLimits {
        BatchLimits {
            points_max: 5,
            bytes_max: 1024,
            age_max: Duration::from_millis(20),
        }
    }

    #[test]
    fn a_batch_is_due_when_full_or_old() {
        let limits = limits();
        let t0 = Instant::now();
        let mut batch = Batch::new(2);
        assert!(batch.is_empty());
        assert!(!batch.is_due(t0 + Duration::from_secs(60), &limits));
        assert_eq!(batch.due_at(&limits), None);

        let m = meta("d", 1, 1, &[("a", 1.0), ("b", 2.0)]);
        batch.push(&reading(0, 10, &m), t0).unwrap();
        assert_eq!(batch.points(), 2);
        assert!(!batch.is_full(&limits));
        assert!(!batch.is_due(t0 + Duration::from_millis(19), &limits));
        assert!(batch.is_due(t0 + Duration::from_millis(20), &limits));
        // A later record does not restart the clock.
        batch
            .push(&reading(0, 11, &m), t0 + Duration::from_millis(15))
            .unwrap();
        assert_eq!(batch.due_at(&limits), Some(t0 + Duration::from_millis(20)));
        // The third record reaches the point limit (passing it by one point).
        batch.push(&reading(1, 3, &m), t0).unwrap();
        assert_eq!(batch.points(), 6);
        assert!(batch.is_full(&limits));
        assert!(batch.is_due(t0, &limits));
    }

    #[test]
    fn a_batch_is_full_at_its_byte_limit() {
        let limits = BatchLimits {
            points_max: 1_000,
            bytes_max: 300,
            age_max: Duration::from_secs(1),
        };
        let t0 = Instant::now();
        let mut batch = Batch::new(1);
        let m = meta("d", 1, 1, &[("co2_ppm", 1.0)]);
        let mut offset = 0;
        while !batch.is_full(&limits) {
            batch.push(&reading(0, offset, &m), t0).unwrap();
            offset += 1;
        }
        assert!(batch.lines(0..batch.entries().len()).len() >= 300);
        assert!(batch.lines(0..batch.entries().len() - 1).len() < 300);
        assert!(batch.is_due(t0, &limits));
    }

    #[test]
    fn a_batch_covers_every_record_and_slices_lines_per_record() {
        let t0 = Instant::now();
        let mut batch = Batch::new(3);
        let a = meta("a", 1, 1, &[("co2_ppm", 1.0)]);
        let b = meta("b", 2, 1, &[("co2_ppm", 2.0), ("temperature_c", 3.0)]);
        batch.push(&reading(0, 5, &a), t0).unwrap();
        batch.push(&dead_letter(1, 8), t0).unwrap();
        batch.push(&reading(1, 9, &b), t0).unwrap();
        batch.push(&dead_letter(0, 6), t0).unwrap();
        let other = Delivery::new(0, 7, RecordKind::Reading, b"\x09opaque".to_vec());
        batch.push(&other, t0).unwrap();
        // A replay from a lower offset inside the same batch does not lower its end.
        batch.push(&reading(0, 2, &a), t0).unwrap();
        assert_eq!(batch.ends(), &[Some(8), Some(10), None]);
        assert_eq!(batch.entries().len(), 3);
        assert_eq!(batch.points(), 4);
        assert_eq!(batch.lines(0..1), lines(&a).as_bytes());
        assert_eq!(batch.lines(1..2), lines(&b).as_bytes());
        let both = format!("{}{}", lines(&b), lines(&a));
        assert_eq!(batch.lines(1..3), both.as_bytes());

        // An unrepresentable reading is still covered, and writes nothing.
        let mut bad = meta("c", 3, 1, &[("co2_ppm", 1.0)]);
        bad.device = "c\r".to_string();
        assert!(batch.push(&reading(2, 0, &bad), t0).is_err());
        assert_eq!(batch.ends()[2], Some(1));
        assert_eq!(batch.entries().len(), 3);
    }

    #[test]
    fn a_batch_of_dead_letters_is_due_by_age_only() {
        let limits = limits();
        let t0 = Instant::now();
        let mut batch = Batch::new(1);
        for offset in 0..100 {
            batch.push(&dead_letter(0, offset), t0).unwrap();
        }
        assert_eq!(batch.points(), 0);
        assert!(!batch.is_full(&limits));
        assert!(!batch.is_due(t0, &limits));
        assert!(batch.is_due(t0 + limits.age_max, &limits));
        assert_eq!(batch.lines(0..0), b"");
    }

    /// Drives the search with a fake writer that refuses a run holding any bad entry, as
    /// InfluxDB answers 400 for a body with any bad point. Returns the refused entries and
    /// the number of writes.
    fn search(entries: usize, write: impl Fn(Range<usize>) -> bool) -> (Vec<usize>, usize) {
        let mut bisect = Bisect::new(entries);
        let mut refused = Vec::new();
        let mut stored = Vec::new();
        let mut writes = 0;
        while let Some(run) = bisect.next_run() {
            writes += 1;
            assert!(bisect.todo.len() <= 1 + entries.max(1).ilog2() as usize);
            if write(run.clone()) {
                stored.push(run);
            } else if let Some(index) = bisect.refused(run) {
                refused.push(index);
            }
        }
        // Stored runs and refused entries cover every entry once, in order.
        let mut covered: Vec<usize> = stored
            .into_iter()
            .flatten()
            .chain(refused.clone())
            .collect();
        covered.sort_unstable();
        assert_eq!(covered, (0..entries).collect::<Vec<_>>());
        (refused, writes)
    }

    #[test]
    fn bisect_finds_exactly_the_refused_records() {
        assert_eq!(search(0, |_| unreachable!()), (vec![], 0));
        assert_eq!(search(1000, |_| true), (vec![], 1));
        assert_eq!(search(1, |_| false), (vec![0], 1));

        let (refused, writes) = search(1000, |run| !run.contains(&617));
        assert_eq!(refused, vec![617]);
        // Two writes per level of halving, plus the first.
        assert!(writes <= 1 + 2 * 10, "{writes} writes");

        let bad = [0, 1, 500, 998, 999];
        let (refused, _) = search(1000, |run| !bad.iter().any(|b| run.contains(b)));
        assert_eq!(refused, bad);

        let (refused, writes) = search(7, |_| false);
        assert_eq!(refused, (0..7).collect::<Vec<_>>());
        assert_eq!(writes, 13);
    }

    #[test]
    fn bisect_writes_runs_in_order() {
        let mut bisect = Bisect::new(8);
        let run = bisect.next_run().unwrap();
        assert_eq!(run, 0..8);
        assert_eq!(bisect.refused(run), None);
        assert_eq!(bisect.next_run(), Some(0..4));
        assert_eq!(bisect.next_run(), Some(4..8));
        assert_eq!(bisect.next_run(), None);
    }
}
