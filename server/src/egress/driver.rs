//! What every sink shares: the one error type, the one backoff, contiguous progress per
//! shard, refusals, and the per-sink metrics that go with them.
//!
//! A sink's own code only turns deliveries into requests and answers into
//! [`SinkError`]s; this module decides what follows:
//!
//! - [`SinkError::Retriable`] (the service is away, overloaded or misconfigured): the same
//!   request is tried again after [`Retry::failed`]'s jittered exponential backoff, for as
//!   long as it takes. The record is never skipped, and no progress passes it meanwhile.
//! - [`SinkError::Permanent`] (the record itself is unacceptable): the record is refused
//!   for good; the refusal is reported before the progress that covers it, and the shard
//!   writes a dead letter for it (docs/DELIVERY.md, section 6).
//! - Progress is contiguous per shard: [`Tracker`] lets answers come in any order and
//!   reports "everything of shard S below N is handled" only up to the first record still
//!   waiting. [`Reporter`] sends the reports on the bounded progress channel (a full
//!   channel makes the sink wait: back-pressure, never a lost report) and never lets a
//!   shard's reported end go backwards.
//!
//! Metrics (`ingestd_sink_*`, docs/OPERATIONS.md) are counted here where the driver sees
//! the event: `failures`, `retries` and `up` in [`Retry`], `refused` in [`Reporter`].

use super::sink::{Progress, SinkId};
use crate::metrics::SinkMetrics;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Progress reports queued from the sinks to the router at most. When the queue is full a
/// sink waits before it reports more (and so before it takes more deliveries); the router
/// only moves counters and refusals, so it empties quickly.
pub const PROGRESS_QUEUE_REPORTS: usize = 4096;

/// Characters of a sink's error text kept in a refusal's detail.
pub const REFUSED_DETAIL_CHARS_MAX: usize = 500;

/// How a sink's attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Trying again later may succeed: connection lost, timeout, overload, a server-side
    /// failure, or a configuration problem an operator fixes while the records wait.
    #[error("{0}")]
    Retriable(String),
    /// The record (or the request built from it) will never be accepted: it is refused
    /// for good and becomes a dead letter.
    #[error("{0}")]
    Permanent(String),
}

impl SinkError {
    #[must_use]
    pub fn is_retriable(&self) -> bool {
        matches!(self, SinkError::Retriable(_))
    }

    /// The error text, as a refusal's detail carries it.
    #[must_use]
    pub fn detail(&self) -> String {
        let (SinkError::Retriable(text) | SinkError::Permanent(text)) = self;
        text.chars().take(REFUSED_DETAIL_CHARS_MAX).collect()
    }
}

/// Exponential backoff between attempts, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    /// The wait after `failures` failures in a row before this one (0 for the first):
    /// `base_ms` doubled per failure up to `max_ms`, less up to half of it by `jitter`
    /// (0..1, so many nodes do not retry in step), and at least `retry_after` (a server's
    /// `Retry-After`) up to `max_ms`.
    #[must_use]
    pub fn delay(&self, failures: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let full_ms = self
            .base_ms
            .saturating_mul(1_u64 << failures.min(32))
            .min(self.max_ms);
        let cut_ms = (full_ms as f64 * 0.5 * jitter.clamp(0.0, 1.0)) as u64;
        let delay = Duration::from_millis(full_ms - cut_ms);
        match retry_after {
            Some(after) => delay.max(after.min(Duration::from_millis(self.max_ms))),
            None => delay,
        }
    }
}

/// One run of retriable failures: how long to wait before the next attempt, and the
/// sink's `up`, `failures` and `retries` metrics.
#[derive(Debug)]
pub struct Retry {
    backoff: Backoff,
    /// Failures in a row since the last success.
    failures: u32,
    /// The sink's metrics; none for a task that is not a sink (the registry watcher).
    metrics: Option<Arc<SinkMetrics>>,
}

impl Retry {
    #[must_use]
    pub fn new(backoff: Backoff, metrics: Arc<SinkMetrics>) -> Self {
        Self {
            backoff,
            failures: 0,
            metrics: Some(metrics),
        }
    }

    /// The same backoff for a task that counts nothing.
    #[must_use]
    pub fn unmetered(backoff: Backoff) -> Self {
        Self {
            backoff,
            failures: 0,
            metrics: None,
        }
    }

    /// Failures in a row so far.
    #[must_use]
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Counts a failed attempt and returns how long to wait before the next one; the
    /// sink is down until an attempt succeeds.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        if let Some(metrics) = &self.metrics {
            metrics.failures.inc();
            metrics.up.set(0);
        }
        let delay = self
            .backoff
            .delay(self.failures, rand::random(), retry_after);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// A failed attempt: counts it, waits the backoff, and counts the retry that follows.
    pub async fn failed(&mut self, retry_after: Option<Duration>) {
        let delay = self.next_delay(retry_after);
        tokio::time::sleep(delay).await;
        if let Some(metrics) = &self.metrics {
            metrics.retries.inc();
        }
    }

    /// An attempt got an answer (stored or refused): the sink is up and the backoff starts
    /// again from its base. Returns the failures that came before it.
    pub fn succeeded(&mut self) -> u32 {
        if let Some(metrics) = &self.metrics {
            metrics.up.set(1);
        }
        std::mem::take(&mut self.failures)
    }
}

/// The wall clock in ms since the Unix epoch, for `ingestd_sink_visible_seconds` (from
/// the server receiving a message, by the same clock, to the sink storing it).
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sends a sink's reports to the router: refusals and contiguous progress. Cheap to clone
/// (concurrent writes of one sink share it).
#[derive(Debug, Clone)]
pub struct Reporter {
    sink: SinkId,
    tx: mpsc::Sender<Progress>,
    metrics: Arc<SinkMetrics>,
    /// Per shard, the highest end reported: a replay never moves it back.
    reported: Arc<[AtomicU64]>,
}

impl Reporter {
    #[must_use]
    pub fn new(
        sink: SinkId,
        tx: mpsc::Sender<Progress>,
        metrics: Arc<SinkMetrics>,
        shards: usize,
    ) -> Self {
        Self {
            sink,
            tx,
            metrics,
            reported: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The sink's metrics.
    #[must_use]
    pub fn metrics(&self) -> &Arc<SinkMetrics> {
        &self.metrics
    }

    /// A record refused for good, with the sink's reason code and `detail`. Must come
    /// before the `through` that covers it. A closed channel means the egress side is
    /// gone: nobody is left to tell, and the record stays in the log.
    pub async fn refused(&self, shard: usize, offset: u64, detail: String) {
        self.refusal(shard, offset, detail, true).await;
    }

    /// A refusal, counted in `refused` only when `new` (a sink that reports a refusal
    /// again after a replay counted it the first time).
    pub async fn refusal(&self, shard: usize, offset: u64, detail: String, new: bool) {
        if new {
            self.metrics.refused.inc();
        }
        let detail: String = detail.chars().take(REFUSED_DETAIL_CHARS_MAX).collect();
        tracing::debug!(sink = self.sink.name(), shard, offset, %detail, "a sink refused a record");
        let _ = self
            .tx
            .send(Progress::Refused {
                sink: self.sink,
                shard,
                offset,
                reason: self.sink.refused_reason().to_string(),
                detail,
            })
            .await;
    }

    /// Every record of `shard` below `end` is handled. Reported only when it moves the
    /// shard's end forward.
    pub async fn through(&self, shard: usize, end: u64) {
        let Some(slot) = self.reported.get(shard) else {
            return;
        };
        if slot.fetch_max(end, Ordering::AcqRel) >= end {
            return;
        }
        let _ = self
            .tx
            .send(Progress::Through {
                sink: self.sink,
                shard,
                end,
            })
            .await;
    }

    /// Sends what a [`Tracker`] released, in order.
    pub async fn send(&self, reports: Vec<Report>) {
        for report in reports {
            match report {
                Report::Refused {
                    shard,
                    offset,
                    detail,
                } => self.refused(shard, offset, detail).await,
                Report::Through { shard, end } => self.through(shard, end).await,
            }
        }
    }
}

/// What a [`Tracker`] releases once the records before it are answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Refused {
        shard: usize,
        offset: u64,
        detail: String,
    },
    Through {
        shard: usize,
        end: u64,
    },
}

/// Where one record stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Not answered yet, or failed retriably and waiting to be sent again.
    Waiting,
    Stored,
    Refused(String),
}

/// One record a sink holds until it is answered.
#[derive(Debug)]
struct Slot<T> {
    offset: u64,
    state: State,
    item: T,
}

/// What a [`Tracker::complete`] means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Stored or refused: nothing more to do for this record.
    Answered,
    /// Failed retriably: send it again (it holds back its shard's progress until then).
    Retry,
    /// Not held (already answered, or never accepted).
    Unknown,
}

/// Contiguous progress per shard over records answered in any order.
///
/// Records are accepted in offset order per shard (the feeder delivers them so) and
/// answered in any order; [`Tracker::advance`] releases, per shard, the refusals and the
/// end of the longest answered prefix. Memory: the records accepted and not yet released,
/// which the sink bounds (it stops taking deliveries past its in-flight limit).
#[derive(Debug)]
pub struct Tracker<T> {
    shards: Vec<VecDeque<Slot<T>>>,
    /// Records held, all shards together.
    held: usize,
}

impl<T> Tracker<T> {
    #[must_use]
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards).map(|_| VecDeque::new()).collect(),
            held: 0,
        }
    }

    /// Records accepted and not yet released.
    #[must_use]
    pub fn held(&self) -> usize {
        self.held
    }

    /// Holds a record until it is answered. Returns false (and holds nothing) when the
    /// shard is unknown or the offset does not follow the last one held: the caller
    /// treats the record as a replay of one already held.
    pub fn accept(&mut self, shard: usize, offset: u64, item: T) -> bool {
        let Some(queue) = self.shards.get_mut(shard) else {
            return false;
        };
        if queue.back().is_some_and(|last| last.offset + 1 != offset) {
            return false;
        }
        queue.push_back(Slot {
            offset,
            state: State::Waiting,
            item,
        });
        self.held += 1;
        true
    }

    fn slot_mut(&mut self, shard: usize, offset: u64) -> Option<&mut Slot<T>> {
        let queue = self.shards.get_mut(shard)?;
        let first = queue.front()?.offset;
        let index = usize::try_from(offset.checked_sub(first)?).ok()?;
        queue.get_mut(index)
    }

    /// The record held at (`shard`, `offset`), if still waiting for its answer.
    pub fn waiting_mut(&mut self, shard: usize, offset: u64) -> Option<&mut T> {
        self.slot_mut(shard, offset)
            .filter(|slot| slot.state == State::Waiting)
            .map(|slot| &mut slot.item)
    }

    /// Every record still waiting, in offset order per shard.
    pub fn waiting(&mut self) -> impl Iterator<Item = (usize, u64, &mut T)> {
        self.shards
            .iter_mut()
            .enumerate()
            .flat_map(|(shard, queue)| {
                queue
                    .iter_mut()
                    .filter(|slot| slot.state == State::Waiting)
                    .map(move |slot| (shard, slot.offset, &mut slot.item))
            })
    }

    /// Records the answer for one record.
    pub fn complete(
        &mut self,
        shard: usize,
        offset: u64,
        answer: Result<(), SinkError>,
    ) -> Completion {
        let Some(slot) = self.slot_mut(shard, offset) else {
            return Completion::Unknown;
        };
        if slot.state != State::Waiting {
            return Completion::Unknown;
        }
        match answer {
            Ok(()) => slot.state = State::Stored,
            Err(error @ SinkError::Permanent(_)) => slot.state = State::Refused(error.detail()),
            Err(SinkError::Retriable(_)) => return Completion::Retry,
        }
        Completion::Answered
    }

    /// Releases the answered prefix of every shard: its refusals in offset order, then the
    /// shard's new end.
    pub fn advance(&mut self) -> Vec<Report> {
        let mut reports = Vec::new();
        for (shard, queue) in self.shards.iter_mut().enumerate() {
            let mut end = None;
            while queue
                .front()
                .is_some_and(|slot| slot.state != State::Waiting)
            {
                let Some(slot) = queue.pop_front() else {
                    break;
                };
                self.held -= 1;
                if let State::Refused(detail) = slot.state {
                    reports.push(Report::Refused {
                        shard,
                        offset: slot.offset,
                        detail,
                    });
                }
                end = Some(slot.offset + 1);
            }
            if let Some(end) = end {
                reports.push(Report::Through { shard, end });
            }
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn through(shard: usize, end: u64) -> Report {
        Report::Through { shard, end }
    }

    #[test]
    fn progress_is_contiguous_whatever_order_the_answers_come_in() {
        let mut tracker = Tracker::new(2);
        for offset in 10..15 {
            assert!(tracker.accept(0, offset, ()));
        }
        for offset in 0..3 {
            assert!(tracker.accept(1, offset, ()));
        }
        assert!(!tracker.accept(0, 20, ()), "a gap is not held");
        assert!(!tracker.accept(7, 0, ()), "no such shard");
        assert_eq!(tracker.held(), 8);

        assert_eq!(tracker.complete(0, 12, Ok(())), Completion::Answered);
        assert_eq!(tracker.complete(0, 11, Ok(())), Completion::Answered);
        assert_eq!(tracker.complete(1, 2, Ok(())), Completion::Answered);
        assert_eq!(tracker.advance(), vec![], "10 and 1/0 are still waiting");
        assert_eq!(tracker.complete(0, 10, Ok(())), Completion::Answered);
        assert_eq!(tracker.advance(), vec![through(0, 13)]);
        assert_eq!(tracker.held(), 5);
        assert_eq!(
            tracker.complete(0, 12, Ok(())),
            Completion::Unknown,
            "released"
        );
        assert_eq!(tracker.complete(0, 14, Ok(())), Completion::Answered);
        assert_eq!(tracker.complete(1, 0, Ok(())), Completion::Answered);
        assert_eq!(tracker.advance(), vec![through(1, 1)]);
        assert_eq!(tracker.complete(0, 13, Ok(())), Completion::Answered);
        assert_eq!(tracker.complete(1, 1, Ok(())), Completion::Answered);
        assert_eq!(tracker.advance(), vec![through(0, 15), through(1, 3)]);
        assert_eq!(tracker.held(), 0);
        // The next record follows on from where the shard was.
        assert!(tracker.accept(0, 15, ()));
    }

    #[test]
    fn a_permanent_error_becomes_a_refusal_and_progress_moves_past_it() {
        let mut tracker = Tracker::new(1);
        for offset in 0..4 {
            tracker.accept(0, offset, ());
        }
        tracker.complete(0, 0, Ok(()));
        let refused = SinkError::Permanent("message too large".to_string());
        assert_eq!(tracker.complete(0, 1, Err(refused)), Completion::Answered);
        tracker.complete(0, 3, Ok(()));
        assert_eq!(
            tracker.advance(),
            vec![
                Report::Refused {
                    shard: 0,
                    offset: 1,
                    detail: "message too large".to_string()
                },
                through(0, 2)
            ],
            "the refusal comes before the progress that covers it"
        );
        tracker.complete(0, 2, Ok(()));
        assert_eq!(tracker.advance(), vec![through(0, 4)]);
    }

    #[test]
    fn a_retriable_error_is_retried_with_growing_jittered_backoff_and_never_skipped() {
        let metrics = Arc::new(SinkMetrics::new(1));
        let backoff = Backoff {
            base_ms: 100,
            max_ms: 1_000,
        };
        let mut retry = Retry::new(backoff, Arc::clone(&metrics));
        let mut tracker = Tracker::new(1);
        tracker.accept(0, 0, "first");
        tracker.accept(0, 1, "second");
        tracker.complete(0, 1, Ok(()));
        let mut delays = Vec::new();
        for _ in 0..6 {
            let failed = SinkError::Retriable("connection refused".to_string());
            assert_eq!(tracker.complete(0, 0, Err(failed)), Completion::Retry);
            assert_eq!(
                tracker.advance(),
                vec![],
                "never reported past a waiting record"
            );
            assert_eq!(
                tracker.waiting().count(),
                1,
                "still held for its next attempt"
            );
            assert_eq!(tracker.waiting_mut(0, 0).copied(), Some("first"));
            delays.push(retry.next_delay(None).as_millis() as u64);
        }
        assert_eq!(metrics.failures.get(), 6);
        assert_eq!(metrics.up.get(), 0);
        // Doubling from the base up to the cap, each at least half its full value.
        for (failures, delay) in delays.iter().enumerate() {
            let full = (100_u64 << failures).min(1_000);
            assert!(
                (full / 2..=full).contains(delay),
                "attempt {failures}: {delay} ms outside {}..={full}",
                full / 2
            );
        }
        assert!(delays[4] > delays[0] && delays[5] >= 500);
        assert_eq!(retry.succeeded(), 6);
        assert_eq!(metrics.up.get(), 1);
        let delay = retry.next_delay(None).as_millis() as u64;
        assert!((50..=100).contains(&delay), "back to the base: {delay}");
        assert_eq!(tracker.complete(0, 0, Ok(())), Completion::Answered);
        assert_eq!(tracker.advance(), vec![through(0, 2)]);
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let backoff = Backoff {
            base_ms: 100,
            max_ms: 5_000,
        };
        let ms = |failures, jitter| backoff.delay(failures, jitter, None).as_millis();
        assert_eq!(ms(0, 0.0), 100);
        assert_eq!(ms(1, 0.0), 200);
        assert_eq!(ms(5, 0.0), 3_200);
        assert_eq!(ms(6, 0.0), 5_000);
        assert_eq!(ms(u32::MAX, 0.0), 5_000);
        assert_eq!(ms(0, 1.0), 50);
        assert_eq!(ms(6, 0.5), 3_750);
        assert_eq!(ms(6, 7.0), 2_500);
        // Retry-After is honoured up to the cap.
        let after = |secs| {
            backoff
                .delay(0, 0.0, Some(Duration::from_secs(secs)))
                .as_millis()
        };
        assert_eq!(after(2), 2_000);
        assert_eq!(after(60), 5_000);
    }

    #[tokio::test]
    async fn the_reporter_never_moves_a_shard_back_and_counts_refusals() {
        let metrics = Arc::new(SinkMetrics::new(2));
        let (tx, mut rx) = mpsc::channel(16);
        let reporter = Reporter::new(SinkId::Influx, tx, Arc::clone(&metrics), 2);
        reporter.through(0, 10).await;
        reporter.through(0, 5).await;
        reporter.through(0, 10).await;
        reporter.refused(1, 3, "x".repeat(900)).await;
        reporter.through(1, 4).await;
        drop(reporter);
        let mut got = Vec::new();
        while let Some(progress) = rx.recv().await {
            got.push(progress);
        }
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[0],
            Progress::Through {
                sink: SinkId::Influx,
                shard: 0,
                end: 10
            }
        );
        let Progress::Refused { reason, detail, .. } = &got[1] else {
            panic!("{got:?}")
        };
        assert_eq!(reason, "influxdb_refused");
        assert_eq!(detail.len(), REFUSED_DETAIL_CHARS_MAX);
        assert_eq!(metrics.refused.get(), 1);
    }
}
