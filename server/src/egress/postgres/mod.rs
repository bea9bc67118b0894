//! The PostgreSQL statistics sink: per-device counters (readings, dead letters, readings
//! flagged and quarantined by the fraud scorer), last seen and last sequence, the
//! dead-letter index, and one `alerts` row per flagged reading (docs/DELIVERY.md).
//!
//! It counts every log record exactly once although deliveries repeat after restarts and
//! outages: each batch moves its shard's cursor (`sink_cursors`) in the same transaction
//! as the rows it covers, and records below the cursor are skipped. Alert rows are written
//! in that same transaction, keyed by (device_id, seq) with ON CONFLICT DO NOTHING, so a
//! reading delivered again (another node, a lost cursor) keeps one row. It reports
//! progress only for what is committed. A batch PostgreSQL refuses for its content is applied again
//! in halves (savepoints) until the refused records are found; each is recorded in
//! `sink_refusals` and reported as refused (`postgres_refused`).
//!
//! - [`config`]: the `[postgres]` section (shared with the registry).
//! - [`encoding`]: a batch as per-device deltas, dead-letter rows and alert rows (pure).
//! - [`service`]: the statements and one batch's transaction.
//! - [`sink`]: the loop (batching, retries through the shared driver, reports).
//!
//! Connections, migrations and the device registry are in [`crate::pg`].

pub mod config;
mod encoding;
mod service;
mod sink;

pub use config::PostgresConfig;
pub use sink::run;

/// The registry watcher the server starts on the egress runtime (it lives in
/// [`crate::pg::registry`]; named here too for the serve side's existing path).
pub use crate::pg::registry::watch_registry;

/// The reason code of a record PostgreSQL refused for good.
pub const REFUSED_REASON: &str = "postgres_refused";
