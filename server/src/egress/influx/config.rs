//! The `[influxdb]` section: where to write (v1 or v2 API), batching and retries.
//! Unknown keys are refused.

use crate::config::{invalid, ConfigError};
use serde::Deserialize;

/// The InfluxDB sink; off while `url` is empty.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InfluxConfig {
    /// Base URL, e.g. `http://127.0.0.1:8086`; empty disables InfluxDB.
    pub url: String,
    /// `v1` (`/write?db=`) or `v2` (`/api/v2/write?org=&bucket=`).
    pub api: String,
    /// v1 database.
    pub database: String,
    /// v2 organisation, bucket and token.
    pub org: String,
    pub bucket: String,
    pub token: String,
    /// A batch is written when it holds this many points or bytes, or is this old.
    pub batch_points_max: usize,
    pub batch_bytes_max: usize,
    pub flush_interval_ms: u64,
    /// Batches written at the same time; they are reported in order all the same.
    pub writes_in_flight: usize,
    pub gzip: bool,
    pub timeout_ms: u64,
    pub retry_backoff_ms: u64,
    #[serde(alias = "retry_backoff_max_ms")]
    pub retry_backoff_ms_max: u64,
}

impl Default for InfluxConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            api: "v1".to_string(),
            database: "ingestd".to_string(),
            org: String::new(),
            bucket: String::new(),
            token: String::new(),
            batch_points_max: 5_000,
            batch_bytes_max: 1 << 20,
            flush_interval_ms: 20,
            writes_in_flight: 2,
            gzip: true,
            timeout_ms: 10_000,
            retry_backoff_ms: 100,
            retry_backoff_ms_max: 5_000,
        }
    }
}

impl InfluxConfig {
    /// Checks the section (when the sink is on); an error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let influx = self;
        if !influx.url.is_empty() {
            if !(influx.url.starts_with("http://") || influx.url.starts_with("https://")) {
                return Err(invalid(
                    "influxdb.url",
                    format!("{:?} must start with http:// or https://", influx.url),
                ));
            }
            match influx.api.as_str() {
                "v1" if influx.database.is_empty() => {
                    return Err(invalid(
                        "influxdb.database",
                        "is required with api = \"v1\"",
                    ))
                }
                "v1" => {}
                "v2" => {
                    for (key, value) in [
                        ("influxdb.org", &influx.org),
                        ("influxdb.bucket", &influx.bucket),
                    ] {
                        if value.is_empty() {
                            return Err(invalid(key, "is required with api = \"v2\""));
                        }
                    }
                }
                other => {
                    return Err(invalid(
                        "influxdb.api",
                        format!("{other:?} is not \"v1\" or \"v2\""),
                    ))
                }
            }
            // The sink's own endpoint builder: what it accepts, the sink can use.
            if let Err((key, problem)) = crate::egress::influx::Endpoint::new(influx) {
                return Err(invalid(key, problem));
            }
            if influx.timeout_ms == 0 {
                return Err(invalid("influxdb.timeout_ms", "must be at least 1"));
            }
            if influx.batch_points_max == 0 {
                return Err(invalid("influxdb.batch_points_max", "must be at least 1"));
            }
            if influx.batch_bytes_max < 1024 {
                return Err(invalid(
                    "influxdb.batch_bytes_max",
                    format!("{} is below 1024", influx.batch_bytes_max),
                ));
            }
            if influx.flush_interval_ms == 0 {
                return Err(invalid("influxdb.flush_interval_ms", "must be at least 1"));
            }
            if !(1..=16).contains(&influx.writes_in_flight) {
                return Err(invalid(
                    "influxdb.writes_in_flight",
                    format!("{} is not in 1..=16", influx.writes_in_flight),
                ));
            }
            if influx.retry_backoff_ms == 0 || influx.retry_backoff_ms > influx.retry_backoff_ms_max
            {
                return Err(invalid(
                    "influxdb.retry_backoff_ms",
                    format!(
                        "{} must be 1..=influxdb.retry_backoff_ms_max ({})",
                        influx.retry_backoff_ms, influx.retry_backoff_ms_max
                    ),
                ));
            }
        }
        Ok(())
    }
}
