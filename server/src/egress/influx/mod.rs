//! The InfluxDB sink: every reading becomes points, written in batches over HTTP.
//!
//! Points. Each reading of a record (`ReadingMeta::readings`, name -> value) is one point:
//! the measurement is the reading's name (the metric family, `co2_ppm`), the tags are
//! `device`, `project`, `region` and `sensor_type` (a tag whose value is empty is left
//! out), the fields are `value` (float) and `seq` (integer), and for a scored reading its
//! fraud verdict: `fraud_score` (float), `fraud_detectors` (string, the detectors that
//! fired, comma-separated, when any did) and `quarantined` (boolean, only when true). Dead
//! letters and records this version cannot decode write nothing, but the progress reports
//! cover them like any other.
//!
//! Timestamps. A point's time is the device's timestamp in ns with the sequence number in
//! the sub-millisecond digits: `ts_ms * 1_000_000 + seq % 1_000_000`. InfluxDB keeps one
//! point per (measurement, tag set, time), so two readings of one device in the same
//! millisecond (two sequence numbers) never overwrite each other, and a replayed record
//! lands on exactly the points it wrote before, with the same values: writes are
//! idempotent by (device, seq), which makes the shards' replays harmless. (Limit: if a
//! device's registry tags change between a write and its replay, the replay is a second
//! series.)
//!
//! Delivery. Records are gathered into a batch that is written when it holds
//! `batch_points_max` points or `batch_bytes_max` bytes of line protocol, or when its
//! first record is `flush_interval_ms` old. Up to `writes_in_flight` batches are written
//! at the same time; meanwhile the next one fills up to those same limits, and past them
//! this task stops reading its channel, so back-pressure reaches the shards through the
//! bounded channel (memory: `writes_in_flight` + 1 batches). `Progress::Through` for a
//! batch's shards is reported once the whole batch is stored or refused and every older
//! batch has been reported, whichever write finishes first.
//!
//! Answers. 2xx: stored. 400, 413 and 422: some points are bad; the batch is split in
//! halves and each half written again (writes are idempotent) down to single records, and
//! a single record still refused gets `Progress::Refused` (`influxdb_refused`, with
//! InfluxDB's error text); the other points of a refused record may be stored. 404 (no
//! such database or bucket) and 401/403 (the token) are configuration problems: logged
//! naming the key, retried. Connection errors, timeouts, 408, 429, 5xx and any other
//! status: retried with exponential backoff and jitter for as long as it takes. Nothing is
//! ever dropped, and nothing is reported before InfluxDB has answered for it.
//!
//! - [`config`]: the `[influxdb]` section.
//! - [`encoding`]: a reading as line protocol (pure).
//! - [`service`]: the endpoint, statuses, and the writer with its refusal search.
//! - [`sink`]: batching, writes in flight, reports through the shared driver.

pub mod config;
pub mod encoding;
pub mod service;
pub mod sink;

pub use config::InfluxConfig;
pub use encoding::{point_time_ns, push_lines, Unrepresentable};
pub use service::{classify, error_text, Endpoint, StatusClass, REFUSED_DETAIL_CHARS_MAX};
pub use sink::{run, Batch, BatchLimits, Bisect, Entry};

/// The `Progress::Refused` reason for a record InfluxDB will never take.
pub const REFUSED_REASON: &str = "influxdb_refused";
