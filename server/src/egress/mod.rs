//! The egress side: everything that leaves the node for Kafka, InfluxDB and PostgreSQL.
//!
//! The contract (docs/DELIVERY.md says it for operators):
//!
//! - Every record a shard appends to its durable log (a validated reading or a dead
//!   letter) is also offered to every configured sink, in log order per shard, as a
//!   [`Delivery`] carrying the shard, the record's log offset and the record payload
//!   (the `crate::record` format: metadata JSON plus the raw signed envelope).
//! - A sink reports [`Progress::Through`] once every record of a shard below an offset is
//!   handled: stored by the sink, or refused by it and reported with [`Progress::Refused`]
//!   first. It never reports a record it has not stored; retriable failures are retried
//!   (with backoff) for as long as it takes, while the shard keeps the records in its log.
//! - Deliveries may repeat after a restart or an outage (the shard replays from its last
//!   checkpoint); a sink makes that harmless by (device, seq) or by its own cursor.
//! - Shards reach the egress thread only through bounded rings; a full ring makes the
//!   shard keep records in memory, then read them back from its log, never drop them.

pub mod influx;
pub mod sink;

pub use sink::{Delivery, Progress, SinkId, SinkInput};
