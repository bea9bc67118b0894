//! What crosses between the shards and the sink tasks.

use crate::log::format::RecordKind;
use crate::metrics::SinkMetrics;
use crate::record::{self, DeadLetterMeta, ReadingMeta};
use std::sync::{Arc, OnceLock};

/// Which sink a progress report is about. Adding a sink is a variant here (with its
/// arms below) and a folder beside this file (docs/DELIVERY.md, "Adding a sink").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SinkId {
    Kafka,
    Influx,
    Postgres,
}

impl SinkId {
    /// Every sink, in the order of [`SinkId::index`].
    pub const ALL: &'static [SinkId] = &[SinkId::Kafka, SinkId::Influx, SinkId::Postgres];

    /// Its position in [`SinkId::ALL`]: per-sink lists are `Vec`s indexed by it.
    #[must_use]
    pub fn index(self) -> usize {
        match self {
            SinkId::Kafka => 0,
            SinkId::Influx => 1,
            SinkId::Postgres => 2,
        }
    }

    /// Whether the config turns this sink on.
    #[must_use]
    pub fn configured(self, config: &crate::config::Config) -> bool {
        match self {
            SinkId::Kafka => !config.kafka.brokers.is_empty(),
            SinkId::Influx => !config.influxdb.url.is_empty(),
            SinkId::Postgres => !config.postgres.url.is_empty(),
        }
    }

    /// Its name in metrics, logs and checkpoints.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            SinkId::Kafka => "kafka",
            SinkId::Influx => "influxdb",
            SinkId::Postgres => "postgres",
        }
    }

    /// The dead-letter reason of a record this sink refused for good.
    #[must_use]
    pub fn refused_reason(self) -> &'static str {
        match self {
            SinkId::Kafka => super::kafka::REFUSED_REASON,
            SinkId::Influx => super::influx::REFUSED_REASON,
            SinkId::Postgres => super::postgres::REFUSED_REASON,
        }
    }
}

/// One durable-log record offered to the sinks.
///
/// The sinks share one `Arc<Delivery>`, and its decoded metadata is computed once for all
/// of them: a record coming live from a shard carries the metadata the shard built (no
/// decoding at all), a record read back from the log is decoded by the first sink that
/// asks.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub shard: usize,
    /// The record's offset in its shard's log: deliveries of one shard arrive in
    /// increasing offset order (a replay starts again from a lower one).
    pub offset: u64,
    pub kind: RecordKind,
    /// The record payload (`crate::record` format).
    pub payload: Vec<u8>,
    decoded: OnceLock<Decoded>,
}

impl PartialEq for Delivery {
    fn eq(&self, other: &Self) -> bool {
        // The decoded form is a function of the payload.
        (self.shard, self.offset, self.kind, &self.payload)
            == (other.shard, other.offset, other.kind, &other.payload)
    }
}

impl Eq for Delivery {}

/// A delivery's metadata, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Reading(ReadingMeta),
    DeadLetter(DeadLetterMeta),
    /// Stored without decoding (benchmark mode) or unreadable by this version: sinks
    /// skip it (it stays in the log).
    Other,
}

impl Delivery {
    #[must_use]
    pub fn new(shard: usize, offset: u64, kind: RecordKind, payload: Vec<u8>) -> Self {
        Self {
            shard,
            offset,
            kind,
            payload,
            decoded: OnceLock::new(),
        }
    }

    /// A reading whose metadata the caller already holds: `meta` must be what `payload`
    /// encodes (the shard builds both from one value).
    #[must_use]
    pub fn with_reading(shard: usize, offset: u64, payload: Vec<u8>, meta: ReadingMeta) -> Self {
        Self {
            shard,
            offset,
            kind: RecordKind::Reading,
            payload,
            decoded: OnceLock::from(Decoded::Reading(meta)),
        }
    }

    /// The decoded metadata. A record this version cannot read is `Other`, never an
    /// error: the log holds it either way.
    #[must_use]
    pub fn decoded(&self) -> &Decoded {
        self.decoded.get_or_init(|| {
            let Some((meta, _raw)) = record::split(&self.payload) else {
                return Decoded::Other;
            };
            match self.kind {
                RecordKind::Reading => serde_json::from_slice::<ReadingMeta>(meta)
                    .map_or(Decoded::Other, Decoded::Reading),
                RecordKind::DeadLetter => serde_json::from_slice::<DeadLetterMeta>(meta)
                    .map_or(Decoded::Other, Decoded::DeadLetter),
                RecordKind::Credential => Decoded::Other,
            }
        })
    }
}

/// What a sink tells the shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Every record of `shard` with an offset below `end` is handled by `sink`.
    Through {
        sink: SinkId,
        shard: usize,
        end: u64,
    },
    /// The sink refused this record for good (it is not retried); the shard writes a dead
    /// letter for it. Sent before the `Through` that covers the record.
    Refused {
        sink: SinkId,
        shard: usize,
        offset: u64,
        reason: String,
        detail: String,
    },
}

/// What a sink task is given.
pub struct SinkInput {
    /// Deliveries, in offset order per shard.
    pub rx: tokio::sync::mpsc::Receiver<Arc<Delivery>>,
    /// Where progress goes (bounded, [`super::driver::PROGRESS_QUEUE_REPORTS`]: a full
    /// queue makes the sink wait).
    pub progress: tokio::sync::mpsc::Sender<Progress>,
    pub metrics: Arc<SinkMetrics>,
    /// Number of shards (offsets are tracked per shard).
    pub shards: usize,
}
