//! A sink's feeder: hands the sink every durable record of every shard, contiguously and
//! in offset order per shard, starting from the sink's checkpoint.
//!
//! Recent records arrive live from the shards (through the dispatcher). Whatever is not
//! there — records from before a restart, records dropped because a ring or this sink's
//! queue was full while the sink was slow or down — is read back from the shard's
//! durable log on disk. The sink therefore never sees a gap, and a slow sink only costs
//! disk reads, never memory or records.

use super::{Delivery, Positions, SinkId};
use crate::log::LogReader;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Runs until the sink's queue closes (the egress thread is stopping).
pub async fn feed(
    sink: SinkId,
    mut live: mpsc::Receiver<Arc<Delivery>>,
    out: mpsc::Sender<Arc<Delivery>>,
    mut next: Vec<u64>,
    positions: Arc<Positions>,
    dirs: Vec<PathBuf>,
) {
    loop {
        // Under load records are waiting: take them without arming a timer each time.
        let received = match live.try_recv() {
            Ok(delivery) => Ok(Some(delivery)),
            Err(mpsc::error::TryRecvError::Disconnected) => Ok(None),
            Err(mpsc::error::TryRecvError::Empty) => {
                tokio::time::timeout(Duration::from_millis(50), live.recv()).await
            }
        };
        match received {
            Ok(Some(delivery)) => {
                let shard = delivery.shard;
                let Some(&expected) = next.get(shard) else {
                    continue;
                };
                if delivery.offset < expected {
                    // Already sent from the log.
                    continue;
                }
                if delivery.offset > expected {
                    match catch_up(sink, shard, expected, delivery.offset, &dirs[shard], &out).await
                    {
                        Some(reached) => next[shard] = reached,
                        None => return,
                    }
                    if next[shard] != delivery.offset {
                        // The log did not yield the whole gap yet (a segment was rolling):
                        // the idle pass below picks it up; this record comes again from
                        // the log then.
                        continue;
                    }
                }
                if out.send(delivery).await.is_err() {
                    return;
                }
                next[shard] += 1;
            }
            Ok(None) => return,
            Err(_) => {
                // Quiet for a moment: make sure nothing durable was missed on any shard.
                for shard in 0..next.len() {
                    let durable = positions.durable_end[shard].load(Ordering::Acquire);
                    if next[shard] < durable && live.is_empty() {
                        match catch_up(sink, shard, next[shard], durable, &dirs[shard], &out).await
                        {
                            Some(reached) => next[shard] = reached,
                            None => return,
                        }
                    }
                }
            }
        }
    }
}

/// Sends the records `[from, until)` of `shard` from its log. Returns how far it got
/// (`until` unless the log ended early), or `None` when the sink's queue closed.
async fn catch_up(
    sink: SinkId,
    shard: usize,
    from: u64,
    until: u64,
    dir: &std::path::Path,
    out: &mpsc::Sender<Arc<Delivery>>,
) -> Option<u64> {
    let dir = dir.to_path_buf();
    let out = out.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut next = from;
        let reader = match LogReader::open(&dir, from) {
            Ok(reader) => reader,
            Err(error) => {
                tracing::error!(sink = sink.name(), shard, %error, "reading the durable log for a sink failed; retrying");
                return Some(next);
            }
        };
        for entry in reader {
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    tracing::error!(sink = sink.name(), shard, %error, "reading the durable log for a sink failed; retrying");
                    return Some(next);
                }
            };
            if entry.offset >= until {
                break;
            }
            if entry.offset != next {
                tracing::error!(sink = sink.name(), shard, expected = next, found = entry.offset, "the durable log skipped an offset");
                return Some(next);
            }
            let delivery = Delivery::new(shard, entry.offset, entry.kind, entry.payload);
            if out.blocking_send(Arc::new(delivery)).is_err() {
                return None;
            }
            next += 1;
        }
        Some(next)
    })
    .await
    .ok()
    .flatten();
    if let Some(reached) = result {
        if reached < until {
            // Not all there yet (a failure or a roll in between): try again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    result
}
