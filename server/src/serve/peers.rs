//! The peers summaries between shards (docs/FRAUD.md, `peers`).
//!
//! Each shard keeps the latest values of the devices it homes, per location and region
//! and kind (`fraud::peers::PeerTable`). Every `fraud.peers_exchange_interval_ms` it sends
//! what it observed to every other shard over a bounded SPSC ring per (from, to) pair:
//! lock-free, no shared table, no lock. A summary that finds its ring full is dropped and
//! counted; the next one carries fresher values anyway. Received summaries are merged on
//! the shard's ticker, which already wakes on its own cadence, so the exchange adds no
//! wake-up of its own.

use super::shard::Shard;
use ingestd_shards::fraud::peers::Summary;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Summaries in transit per (from, to) pair: a few intervals' worth.
const RING_SUMMARIES: usize = 4;

/// One shard's ends of the summary rings.
pub struct PeerLinks {
    outgoing: Vec<rtrb::Producer<Arc<Summary>>>,
    incoming: Vec<(usize, rtrb::Consumer<Arc<Summary>>)>,
    interval: Duration,
    last: Instant,
}

/// The rings of a node: element `i` is shard `i`'s ends.
#[must_use]
pub fn mesh(shards: usize, interval: Duration) -> Vec<PeerLinks> {
    let mut links: Vec<PeerLinks> = (0..shards)
        .map(|_| PeerLinks {
            outgoing: Vec::new(),
            incoming: Vec::new(),
            interval,
            last: Instant::now(),
        })
        .collect();
    for from in 0..shards {
        for to in 0..shards {
            if from != to {
                let (producer, consumer) = rtrb::RingBuffer::new(RING_SUMMARIES);
                links[from].outgoing.push(producer);
                links[to].incoming.push((from, consumer));
            }
        }
    }
    links
}

impl PeerLinks {
    /// Merges what arrived; sends this shard's summary when the interval has passed.
    pub fn exchange(&mut self, shard: &Shard) {
        let mut core = shard.core.borrow_mut();
        let Some(scorer) = core.scorer() else {
            return;
        };
        let table = scorer.peers();
        for (from, ring) in &mut self.incoming {
            while let Ok(summary) = ring.pop() {
                table.merge(*from, &summary);
            }
        }
        if self.last.elapsed() < self.interval {
            return;
        }
        self.last = Instant::now();
        let now_ms = super::now_ms();
        table.prune(now_ms);
        let summary = table.export(now_ms);
        if summary.groups.is_empty() || self.outgoing.is_empty() {
            return;
        }
        let summary = Arc::new(summary);
        for ring in &mut self.outgoing {
            if ring.push(Arc::clone(&summary)).is_err() {
                shard.metrics.fraud_peer_summaries_dropped.inc();
            }
        }
    }
}
