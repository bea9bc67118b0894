//! A shard's durable state besides its records, on the driver's side: checkpoints of the
//! core's replay windows and credential nonces (`Core::snapshot`), the start-up state handed
//! to the core, and a full disk waited out. The rules (a credential's record durable before
//! its CONNACK, back-pressure while the disk is full) are the core's; this is file work.
//!
//! - Checkpoints ([`crate::log::checkpoint`]) are written when `log.checkpoint_interval_bytes`
//!   have been committed since the last one (never on a timer: an idle shard writes none)
//!   and at a clean shutdown. Start-up then scans only the log after the checkpoint's offset
//!   (`crate::log::rebuild`), so its cost is bounded by that interval per shard.
//! - A commit that finds no space (ENOSPC, EDQUOT) is retried here until it succeeds: the
//!   core is told (`Event::DiskFull`) and pauses its readers, `/readyz` says not ready,
//!   `ingestd_log_disk_full{shard}` is 1 and the free space is measured every second, and
//!   only then.

use super::notify::Broadcast;
use super::shard::Shard;
use crate::log::checkpoint::{self, Checkpoint};
use crate::log::rebuild::ShardStart;
use crate::log::{space, LogError};
use ingestd_shards::core::Event;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Longest wait between two commit attempts on a full disk (free space is measured every
/// second in between, and a retry is made as soon as there is room).
const DISK_FULL_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The shard's part of this module's state.
pub struct Durable {
    /// Notified after every commit attempt: tasks waiting for an offset to be durable.
    pub committed: Broadcast,
    checkpoint_interval_bytes: u64,
    /// The shard's committed-bytes total when the last checkpoint was started.
    committed_since_checkpoint_bytes: Cell<u64>,
    /// A checkpoint is being written (one at a time).
    checkpointing: Cell<bool>,
    /// The offset of the newest checkpoint on disk: an older snapshot never replaces it.
    checkpoint_offset: Cell<Option<u64>>,
}

impl Durable {
    #[must_use]
    pub fn new(config: &crate::config::Config) -> Self {
        Self {
            committed: Broadcast::default(),
            checkpoint_interval_bytes: config.log.checkpoint_interval_bytes,
            committed_since_checkpoint_bytes: Cell::new(0),
            checkpointing: Cell::new(false),
            checkpoint_offset: Cell::new(None),
        }
    }
}

/// Hands what start-up rebuilt for this shard to its core (before it serves).
pub fn restore(shard: &Shard, start: ShardStart, now_ms: u64) {
    let mut core = shard.core.borrow_mut();
    for (device, window) in start.windows {
        core.restore_replay(&device, window);
    }
    for (device, nonce, ts_ms) in start.nonces {
        core.restore_credential(&device, nonce, ts_ms, now_ms);
    }
    if let (Some(scorer), Some(model)) = (core.scorer(), start.fraud.model.as_deref()) {
        if !scorer.restore_model(model) {
            tracing::warn!(
                shard = shard.id,
                "the learned fraud model did not decode: learning afresh"
            );
        }
    }
    for (device, state) in start.fraud.devices {
        core.restore_fraud(&device, state);
    }
    shard.durable.checkpoint_offset.set(start.checkpoint_offset);
}

/// Waits until every record below `end` is durable (the core commits what it appended);
/// `false` when the log failed and never will make it durable.
pub async fn wait_durable(shard: &Shard, end: u64) -> bool {
    while shard.log.durable_end() < end {
        if shard.shared.metrics.health.failed.load(Ordering::Relaxed) {
            return false;
        }
        let since = shard.durable.committed.generation();
        shard.durable.committed.changed(since).await;
    }
    true
}

/// Commits the shard's log, waiting out a full disk; afterwards wakes whoever waits for a
/// commit. Any other error is returned as it came.
pub async fn commit(shard: &Rc<Shard>) -> Result<u64, LogError> {
    let mut backoff = Duration::from_secs(1);
    loop {
        let result = shard.log.commit().await;
        match &result {
            Err(error) if error.is_no_space() => {
                disk_full(shard, error);
                wait_for_space(shard, backoff).await;
                backoff = (backoff * 2).min(DISK_FULL_BACKOFF_MAX);
                continue;
            }
            Ok(_) => disk_has_space(shard),
            Err(error) if !error.is_retriable() => {
                // Before the waiters wake: they must see that no commit will come.
                shard
                    .shared
                    .metrics
                    .health
                    .failed
                    .store(true, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        shard.durable.committed.notify_all();
        if result.is_ok() {
            after_commit(shard);
        }
        return result;
    }
}

fn disk_full(shard: &Shard, error: &LogError) {
    let free = space::free_bytes(shard.log.dir());
    shard.metrics.log_disk_free_bytes.set(free.unwrap_or(0));
    if shard.metrics.log_disk_full.get() == 1 {
        return;
    }
    shard.metrics.log_disk_full.set(1);
    shard.run(Event::DiskFull { full: true });
    shard
        .shared
        .metrics
        .health
        .disk_full_shards
        .fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        shard = shard.id,
        disk = %shard.log.dir().display(),
        free_bytes = ?free,
        needed_bytes = shard.log.space_needed_bytes(),
        %error,
        "the durable log's disk is full: this shard reads and acknowledges nothing until space returns; not ready"
    );
}

fn disk_has_space(shard: &Shard) {
    if shard.metrics.log_disk_full.get() == 0 {
        return;
    }
    shard.metrics.log_disk_full.set(0);
    shard.run(Event::DiskFull { full: false });
    shard
        .shared
        .metrics
        .health
        .disk_full_shards
        .fetch_sub(1, Ordering::Relaxed);
    let free = space::free_bytes(shard.log.dir());
    shard.metrics.log_disk_free_bytes.set(free.unwrap_or(0));
    tracing::warn!(
        shard = shard.id,
        disk = %shard.log.dir().display(),
        free_bytes = ?free,
        "the durable log's disk has space again: committing and acknowledging"
    );
}

/// Waits until the disk has room for the next commit, or `backoff` has passed (space
/// accounting can differ from what a write needs: quotas, reserved blocks).
async fn wait_for_space(shard: &Shard, backoff: Duration) {
    let started = Instant::now();
    loop {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        let free = space::free_bytes(shard.log.dir());
        shard.metrics.log_disk_free_bytes.set(free.unwrap_or(0));
        let room = free.is_some_and(|free| free >= shard.log.space_needed_bytes());
        if room || started.elapsed() >= backoff {
            return;
        }
    }
}

/// Counts committed bytes and starts a checkpoint when enough have accumulated.
fn after_commit(shard: &Rc<Shard>) {
    let since = shard.durable.committed_since_checkpoint_bytes.get();
    let bytes = shard.metrics.log_commit_bytes.get();
    // The committer counts its bytes after this returns; the running total is enough to
    // measure the interval (`since` holds the total at the last checkpoint).
    if bytes.saturating_sub(since) < shard.durable.checkpoint_interval_bytes
        || shard.durable.checkpointing.get()
    {
        return;
    }
    shard.durable.committed_since_checkpoint_bytes.set(bytes);
    shard.durable.checkpointing.set(true);
    let shard = Rc::clone(shard);
    glommio::spawn_local(async move {
        write_checkpoint(&shard).await;
        shard.durable.checkpointing.set(false);
    })
    .detach();
}

/// Snapshots the shard's windows and nonces and writes them as its checkpoint once the log
/// is durable up to the snapshot's offset. Also run at a clean shutdown.
pub async fn write_checkpoint(shard: &Shard) {
    let (offset, bytes, fraud) = snapshot(shard);
    if !wait_durable(shard, offset).await {
        return;
    }
    if shard
        .durable
        .checkpoint_offset
        .get()
        .is_some_and(|written| written >= offset)
    {
        return;
    }
    let started = Instant::now();
    let size = bytes.len();
    match checkpoint::write(shard.log.dir(), bytes).await {
        Ok(()) => {
            shard.durable.checkpoint_offset.set(Some(offset));
            tracing::debug!(
                shard = shard.id,
                offset,
                bytes = size,
                ms = started.elapsed().as_millis() as u64,
                "checkpoint written"
            );
        }
        Err(error) => {
            // The previous checkpoint stays; start-up scans a little more log.
            tracing::warn!(shard = shard.id, %error, "writing the checkpoint failed");
        }
    }
    if let Some(fraud) = fraud {
        let size = fraud.len();
        let started = Instant::now();
        match checkpoint::write_named(shard.log.dir(), crate::fraud::checkpoint::FILE_NAME, fraud)
            .await
        {
            Ok(()) => tracing::debug!(
                shard = shard.id,
                offset,
                bytes = size,
                ms = started.elapsed().as_millis() as u64,
                "fraud checkpoint written"
            ),
            // The previous one stays; start-up replays a little more log.
            Err(error) => {
                tracing::warn!(shard = shard.id, %error, "writing the fraud checkpoint failed")
            }
        }
    }
}

/// The checkpoint of the shard's state now: the core's windows and nonces, which reflect
/// exactly the records below its next offset (they change only together with an append).
fn snapshot(shard: &Shard) -> (u64, Vec<u8>, Option<Vec<u8>>) {
    let mut core = shard.core.borrow_mut();
    let snapshot = core.snapshot(super::now_ms());
    // The fraud state changes only with an append too: the same offset covers it.
    let fraud = core
        .scorer()
        .map(|scorer| scorer.encode_model())
        .map(|model| crate::fraud::checkpoint::FraudCheckpoint {
            shard: shard.id as u32,
            shards: shard.shards as u32,
            covered_offset: snapshot.offset,
            states: Vec::new(),
            model,
        });
    let fraud = fraud.map(|mut saved| {
        saved.states = core.encode_fraud_states();
        saved.encode()
    });
    drop(core);
    debug_assert_eq!(snapshot.offset, shard.log.next_offset());
    let checkpoint = Checkpoint {
        shard: shard.id as u32,
        shards: shard.shards as u32,
        covered_offset: snapshot.offset,
        windows: snapshot.windows,
        nonces: snapshot.nonces,
    };
    (snapshot.offset, checkpoint.encode(), fraud)
}
