//! The `[postgres]` section, shared by the statistics sink and the registry
//! ([`crate::pg`]): the connection, batching, timeouts and retries. Unknown keys are
//! refused.

use crate::config::{invalid, ConfigError};
use serde::Deserialize;

/// The PostgreSQL sink and registry; off while `url` is empty.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Connection string (`host=... port=... user=... dbname=...` or `postgres://...`);
    /// empty disables PostgreSQL.
    pub url: String,
    /// The device registry comes from PostgreSQL (the registry file is then ignored), and
    /// changes reach the shards through LISTEN/NOTIFY.
    pub registry: bool,
    /// Statistics updates are batched for at most this long.
    pub flush_interval_ms: u64,
    pub batch_records_max: usize,
    pub retry_backoff_ms: u64,
    #[serde(alias = "retry_backoff_max_ms")]
    pub retry_backoff_ms_max: u64,
    /// A connection attempt (TCP and the start-up exchange) gives up after this long and
    /// is retried with backoff.
    pub connect_timeout_ms: u64,
    /// One batch's transaction gives up after this long; the batch is retried on a new
    /// connection (harmless if it did commit: the sink's cursor skips what it applied).
    pub write_timeout_ms: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            registry: true,
            flush_interval_ms: 100,
            batch_records_max: 10_000,
            retry_backoff_ms: 100,
            retry_backoff_ms_max: 5_000,
            connect_timeout_ms: 5_000,
            write_timeout_ms: 30_000,
        }
    }
}

impl PostgresConfig {
    /// Checks the section (when the sink is on); an error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let postgres = self;
        if !postgres.url.is_empty() {
            if postgres.flush_interval_ms == 0 {
                return Err(invalid("postgres.flush_interval_ms", "must be at least 1"));
            }
            if postgres.batch_records_max == 0 {
                return Err(invalid("postgres.batch_records_max", "must be at least 1"));
            }
            if postgres.connect_timeout_ms == 0 {
                return Err(invalid("postgres.connect_timeout_ms", "must be at least 1"));
            }
            if postgres.write_timeout_ms == 0 {
                return Err(invalid("postgres.write_timeout_ms", "must be at least 1"));
            }
            if postgres.retry_backoff_ms == 0
                || postgres.retry_backoff_ms > postgres.retry_backoff_ms_max
            {
                return Err(invalid(
                    "postgres.retry_backoff_ms",
                    format!(
                        "{} must be 1..=postgres.retry_backoff_ms_max ({})",
                        postgres.retry_backoff_ms, postgres.retry_backoff_ms_max
                    ),
                ));
            }
        }
        Ok(())
    }
}
