//! The sink's loop: deliveries queued per shard, flushed as one transaction per shard
//! when `batch_records_max` records wait or the oldest has waited `flush_interval_ms`,
//! retried (driver's backoff) until committed, then refusals and progress reported.

use super::encoding::{Item, ItemBody};
use super::service::{apply_batch, Outcome, Session};
use crate::config::PostgresConfig;
use crate::egress::{Backoff, Delivery, Reporter, Retry, SinkId, SinkInput};
use crate::pg::{failure_kind, Failure, PgError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per shard: records waiting for the next batch.
#[derive(Debug, Default)]
struct ShardState {
    items: Vec<Item>,
}

/// The sink's state between batches.
struct Sink {
    config: PostgresConfig,
    node: String,
    reporter: Reporter,
    shard_count: usize,
    session: Option<Session>,
    /// Migrations ran on some connection of this sink.
    migrated: bool,
    shards: BTreeMap<usize, ShardState>,
    /// Records waiting across all shards.
    pending: usize,
    retry: Retry,
}

impl Sink {
    /// Queues a delivery. A delivery at or below the shard's last queued offset starts a
    /// replay: what is queued goes first, so a batch never holds an offset twice.
    async fn push(&mut self, delivery: &Delivery) {
        assert!(
            delivery.shard < self.shard_count,
            "delivery for shard {} of {}",
            delivery.shard,
            self.shard_count
        );
        let rewinds = self
            .shards
            .get(&delivery.shard)
            .and_then(|s| s.items.last())
            .is_some_and(|last| delivery.offset <= last.offset);
        if rewinds {
            self.flush_shard(delivery.shard).await;
        }
        self.shards
            .entry(delivery.shard)
            .or_default()
            .items
            .push(Item::from_delivery(delivery));
        self.pending += 1;
    }

    async fn flush_all(&mut self) {
        let shards: Vec<usize> = self
            .shards
            .iter()
            .filter(|(_, s)| !s.items.is_empty())
            .map(|(&shard, _)| shard)
            .collect();
        for shard in shards {
            self.flush_shard(shard).await;
        }
    }

    /// Applies the shard's queued records, retrying until they are committed, then
    /// reports refusals and progress.
    async fn flush_shard(&mut self, shard: usize) {
        let Some(state) = self.shards.get_mut(&shard) else {
            return;
        };
        let items = std::mem::take(&mut state.items);
        let Some(last) = items.last() else {
            return;
        };
        let end = last.offset + 1;
        let mut bisect = false;
        let outcome = loop {
            match self.attempt(shard, &items, end, bisect).await {
                Ok(outcome) => break outcome,
                Err(PgError::Postgres(error))
                    if !bisect && failure_kind(&error) == Failure::Content =>
                {
                    tracing::warn!(
                        shard,
                        error = %error,
                        "postgres refused a batch: applying its records in parts to find the refused ones"
                    );
                    bisect = true;
                }
                Err(error) => {
                    let delay = self.retry.next_delay(None);
                    tracing::warn!(
                        shard,
                        records = items.len(),
                        retry_in_ms = delay.as_millis() as u64,
                        error = %error,
                        "postgres write failed; retrying"
                    );
                    if self.session.as_ref().is_none_or(|s| s.client.is_closed())
                        || matches!(error, PgError::Timeout { .. })
                    {
                        self.session = None;
                    }
                    tokio::time::sleep(delay).await;
                    self.reporter.metrics().retries.inc();
                }
            }
        };
        self.retry.succeeded();
        let metrics = self.reporter.metrics();
        metrics.batches.inc();
        metrics.records.add(outcome.applied);
        let now_ms = crate::egress::driver::now_ms();
        for item in &items {
            if let ItemBody::Reading { received_ms, .. } = &item.body {
                metrics
                    .visible
                    .observe_us(now_ms.saturating_sub(*received_ms) * 1000);
            }
        }
        metrics.bytes.add(outcome.bytes);
        self.pending -= items.len();
        // The refusals found again while replaying a range the cursor covers come first
        // and were counted when they happened; they are reported again all the same (the
        // shard may not have written their dead letters before a restart).
        let earlier = outcome.refusals.len() - outcome.refused_now as usize;
        for (index, refusal) in outcome.refusals.into_iter().enumerate() {
            tracing::warn!(
                shard,
                offset = refusal.offset,
                detail = %refusal.detail,
                "postgres refused a record for good"
            );
            self.reporter
                .refusal(shard, refusal.offset, refusal.detail, index >= earlier)
                .await;
        }
        self.reporter.through(shard, end).await;
    }

    /// One try at a batch: (re)connects when needed, then one transaction, bounded by
    /// `write_timeout_ms`. A try that timed out after its commit reached the server is
    /// harmless to repeat: the cursor skips what it applied.
    async fn attempt(
        &mut self,
        shard: usize,
        items: &[Item],
        end: u64,
        bisect: bool,
    ) -> Result<Outcome, PgError> {
        let session = match self.session.take() {
            Some(session) => session,
            None => {
                let session = Session::open(&self.config, !self.migrated).await?;
                self.migrated = true;
                self.reporter.metrics().up.set(1);
                session
            }
        };
        let session = self.session.insert(session);
        let started = Instant::now();
        let timeout = Duration::from_millis(self.config.write_timeout_ms);
        let result = tokio::time::timeout(
            timeout,
            apply_batch(session, &self.node, shard, items, end, bisect),
        )
        .await;
        match result {
            Ok(Ok(outcome)) => {
                self.reporter
                    .metrics()
                    .latency
                    .observe_us(started.elapsed().as_micros() as u64);
                Ok(outcome)
            }
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(PgError::Timeout {
                ms: self.config.write_timeout_ms,
                doing: "writing a batch",
            }),
        }
    }
}

/// The statistics sink: applies deliveries to `device_stats` and `dead_letters` in
/// batches of at most `batch_records_max` records or `flush_interval_ms`, each batch one
/// transaction that moves its shard's cursor, and reports `Through` once committed.
/// Returns when `input.rx` is closed and everything received is applied and reported.
pub async fn run(config: PostgresConfig, node_id: String, input: SinkInput) {
    let SinkInput {
        mut rx,
        progress,
        metrics,
        shards,
    } = input;
    let flush_interval = Duration::from_millis(config.flush_interval_ms);
    let batch_records_max = config.batch_records_max;
    let backoff = Backoff {
        base_ms: config.retry_backoff_ms,
        max_ms: config.retry_backoff_ms_max,
    };
    let mut sink = Sink {
        retry: Retry::new(backoff, Arc::clone(&metrics)),
        reporter: Reporter::new(SinkId::Postgres, progress, metrics, shards),
        config,
        node: node_id,
        shard_count: shards,
        session: None,
        migrated: false,
        shards: BTreeMap::new(),
        pending: 0,
    };
    // When the oldest queued record must be written at the latest.
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let received = match deadline {
            Some(at) => tokio::select! {
                received = rx.recv() => received,
                () = tokio::time::sleep_until(at) => {
                    sink.flush_all().await;
                    deadline = None;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(delivery) = received else {
            break;
        };
        sink.push(&delivery).await;
        if sink.pending == 0 {
            deadline = None;
        } else if deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + flush_interval);
        }
        if sink.pending >= batch_records_max {
            sink.flush_all().await;
            deadline = None;
        }
    }
    sink.flush_all().await;
}
