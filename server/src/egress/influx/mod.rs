//! The InfluxDB sink: every reading becomes points, written in batches over HTTP.
//!
//! Points. Each reading of a record (`ReadingMeta::readings`, name -> value) is one point:
//! the measurement is the reading's name (the metric family, `co2_ppm`), the tags are
//! `device`, `project`, `region` and `sensor_type` (a tag whose value is empty is left
//! out), the fields are `value` (float) and `seq` (integer). Dead letters and records this
//! version cannot decode write nothing, but the progress reports cover them like any other.
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

use crate::config::InfluxConfig;
use crate::egress::sink::{Decoded, Delivery, Progress, SinkId, SinkInput};
use crate::metrics::SinkMetrics;
use crate::record::ReadingMeta;
use bytes::Bytes;
use influxdb_line_protocol::LineProtocolBuilder;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The `Progress::Refused` reason for a record InfluxDB will never take.
pub const REFUSED_REASON: &str = "influxdb_refused";
/// Characters of InfluxDB's error text kept in a refusal's detail.
pub const REFUSED_DETAIL_CHARS_MAX: usize = 500;
/// Bytes of a response body read; the rest is left unread (error texts are short).
const RESPONSE_BYTES_MAX: usize = 4096;
/// Bodies at least this large are compressed on tokio's blocking pool rather than on the
/// runtime's workers (gzip of 1 MiB takes milliseconds).
const GZIP_INLINE_BYTES_MAX: usize = 64 * 1024;

/// Runs the sink until `input.rx` is closed and every record received has been stored or
/// refused, and reported.
///
/// A write that cannot get through is retried for as long as it takes, so while InfluxDB
/// is away this does not return; dropping the future stops it (records not yet reported
/// stay in the shards' logs and come again).
///
/// # Panics
///
/// If `config` did not pass `Config::validate` (the URL or token is unusable), or
/// `input.shards` is 0: both are bugs of the caller.
pub async fn run(config: InfluxConfig, input: SinkInput) {
    let SinkInput {
        mut rx,
        progress,
        metrics,
        shards,
    } = input;
    assert!(shards > 0, "the influxdb sink needs at least one shard");
    let endpoint = match Endpoint::new(&config) {
        Ok(endpoint) => endpoint,
        Err((key, problem)) => panic!("influxdb sink started with an invalid `{key}`: {problem}"),
    };
    let backoff = Backoff {
        base_ms: config.retry_backoff_ms,
        max_ms: config.retry_backoff_max_ms,
    };
    let client = build_client(&config, &backoff, &metrics).await;
    let limits = BatchLimits::new(&config);
    let writer = Arc::new(Writer {
        client,
        endpoint,
        gzip: config.gzip,
        backoff,
        metrics,
        progress: progress.clone(),
    });
    tracing::info!(url = %writer.endpoint.url, gzip = writer.gzip, "influxdb sink started");

    // Per shard, the highest `end` reported so far: a replay's batch never moves it back.
    let mut reported = vec![0_u64; shards];
    let mut open = Batch::new(shards);
    // Writes in flight, oldest first. Several may be under way (InfluxDB handles them in
    // parallel), but a batch is reported only once every older one is: progress stays
    // contiguous whichever write finishes first.
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let writes_max = config.writes_in_flight.max(1);
    let mut receiving = true;
    loop {
        let room = in_flight.len() < writes_max;
        if room && (open.is_due(Instant::now(), &limits) || !receiving) {
            if !open.is_empty() {
                let batch = std::mem::replace(&mut open, Batch::new(shards));
                in_flight.push_back(InFlight(tokio::spawn(Arc::clone(&writer).write(batch))));
                continue;
            } else if !receiving && in_flight.is_empty() {
                tracing::info!("influxdb sink stopped: input closed and everything reported");
                return;
            }
        }
        let accepting = receiving && !open.is_full(&limits);
        let due_at = open.due_at(&limits);
        tokio::select! {
            biased;
            joined = wait(in_flight.front_mut()), if !in_flight.is_empty() => {
                in_flight.pop_front();
                match joined {
                    Ok(batch) => report_through(&batch, &mut reported, &progress),
                    Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                    // Cancelled: the runtime is shutting down.
                    Err(_) => return,
                }
            }
            () = sleep_until(due_at), if room && due_at.is_some() => {}
            delivery = rx.recv(), if accepting => match delivery {
                Some(delivery) => {
                    if let Err(why) = open.push(&delivery, Instant::now()) {
                        writer.refuse(delivery.shard, delivery.offset, why.to_string());
                    }
                }
                None => receiving = false,
            },
        }
    }
}

/// A write in flight; aborted if the sink's task is dropped, so no write outlives it.
struct InFlight(JoinHandle<Batch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn wait(in_flight: Option<&mut InFlight>) -> Result<Batch, tokio::task::JoinError> {
    match in_flight {
        Some(InFlight(handle)) => handle.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reports `Through` for every shard the batch reached further than reported before.
fn report_through(batch: &Batch, reported: &mut [u64], progress: &UnboundedSender<Progress>) {
    for (shard, end) in batch.ends.iter().enumerate() {
        let Some(end) = *end else { continue };
        if end > reported[shard] {
            reported[shard] = end;
            // A closed progress channel means the egress side is gone; nobody is left to tell.
            let _ = progress.send(Progress::Through {
                sink: SinkId::Influx,
                shard,
                end,
            });
        }
    }
}

/// The HTTP client; building it fails only if the TLS roots cannot be set up, and then it
/// is tried again rather than giving up on the records.
async fn build_client(
    config: &InfluxConfig,
    backoff: &Backoff,
    metrics: &SinkMetrics,
) -> reqwest::Client {
    let builder = || {
        reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms))
            .tcp_nodelay(true)
    };
    let mut failures = 0_u32;
    loop {
        match builder().build() {
            Ok(client) => return client,
            Err(error) => {
                // The system's root store is unreadable: the bundled roots still work.
                tracing::warn!(error = %chain(&error), "influxdb: system TLS roots unusable; using the bundled ones only");
                match builder().tls_built_in_native_certs(false).build() {
                    Ok(client) => return client,
                    Err(error) => {
                        metrics.up.set(0);
                        tracing::error!(error = %chain(&error), "influxdb: cannot set up the HTTP client; retrying");
                        tokio::time::sleep(backoff.delay(failures, rand::random(), None)).await;
                        failures = failures.saturating_add(1);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Points

/// Why a record cannot be written as line protocol at all; it is refused without sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unrepresentable {
    #[error("{what} {value:?} contains a line break, which line protocol cannot carry")]
    LineBreak { what: &'static str, value: String },
    #[error("measurement {0:?} starts with '#', which line protocol reads as a comment")]
    Comment(String),
    #[error("timestamp {ts_ms} ms is beyond the nanosecond range of InfluxDB")]
    Timestamp { ts_ms: u64 },
    #[error("seq {0} does not fit InfluxDB's signed 64-bit integer field")]
    Seq(u64),
}

/// A point's time: the device's timestamp in ns, with the sequence number in the
/// sub-millisecond digits (module docs say why). `None` past InfluxDB's range (year 2262).
#[must_use]
pub fn point_time_ns(ts_ms: u64, seq: u64) -> Option<i64> {
    // seq % 1_000_000 < 1_000_000: the cast is lossless.
    i64::try_from(ts_ms)
        .ok()?
        .checked_mul(1_000_000)?
        .checked_add((seq % 1_000_000) as i64)
}

/// Appends one line per reading of `meta` to `out` and returns how many. On an error
/// nothing is appended.
///
/// The fields are `value` and `seq`. There is no fraud score in the record yet; when
/// `ReadingMeta` gains one it is one more `.field("fraud_score", ...)` in the chain below.
pub fn push_lines(meta: &ReadingMeta, out: &mut Vec<u8>) -> Result<usize, Unrepresentable> {
    let time_ns = point_time_ns(meta.ts_ms, meta.seq)
        .ok_or(Unrepresentable::Timestamp { ts_ms: meta.ts_ms })?;
    let seq = i64::try_from(meta.seq).map_err(|_| Unrepresentable::Seq(meta.seq))?;
    // Sorted by key: InfluxDB sorts a point's tags, and sorted input spares it the work.
    let tags = [
        ("device", meta.device.as_str()),
        ("project", meta.project.as_str()),
        ("region", meta.region.as_str()),
        ("sensor_type", meta.sensor_type.as_str()),
    ];
    // Checked before anything is written, so a refused record leaves no half line behind.
    // The builder escapes commas, spaces, `=` and backslashes, but no line protocol escape
    // exists for a line break, and a leading `#` would silently turn a line into a comment.
    for (what, value) in tags {
        check_line_break(what, value)?;
    }
    for name in meta.readings.keys() {
        check_line_break("measurement", name)?;
        if name.starts_with('#') {
            return Err(Unrepresentable::Comment(name.clone()));
        }
    }
    let plain = tags.iter().all(|(_, value)| !needs_escape(value));
    let mut numbers = itoa::Buffer::new();
    for (name, &value) in &meta.readings {
        if plain && !needs_escape(name) {
            // Nothing to escape: the series key is the strings as they are, exactly what
            // the builder below would write, without its formatting machinery (which
            // cost more than everything else the sink does per record).
            out.extend_from_slice(name.as_bytes());
            for (key, value) in tags {
                if !value.is_empty() {
                    out.push(b',');
                    out.extend_from_slice(key.as_bytes());
                    out.push(b'=');
                    out.extend_from_slice(value.as_bytes());
                }
            }
        } else {
            // The line protocol crate escapes the measurement and the tags; the builder
            // leaves them in `out` when it is dropped before the fields.
            let mut line = LineProtocolBuilder::new_with(&mut *out).measurement(name);
            for (key, value) in tags {
                if !value.is_empty() {
                    line = line.tag(key, value);
                }
            }
        }
        // The fields and the timestamp are numbers: nothing in them needs escaping.
        out.extend_from_slice(b" value=");
        write_f32(out, value);
        out.extend_from_slice(b",seq=");
        out.extend_from_slice(numbers.format(seq).as_bytes());
        out.extend_from_slice(b"i ");
        out.extend_from_slice(numbers.format(time_ns).as_bytes());
        out.push(b'\n');
    }
    Ok(meta.readings.len())
}

/// Whether a measurement, tag key or tag value may need a backslash in line protocol. An
/// `=` in a measurement (which line protocol leaves as it is) also takes the builder path;
/// that is only slower, never different.
fn needs_escape(value: &str) -> bool {
    value
        .bytes()
        .any(|b| matches!(b, b' ' | b',' | b'=' | b'\\'))
}

/// An `f32` with its shortest round-trip digits (`21.7`, not the f64 widening's
/// `21.700000762939453`). Digits without a suffix are a float in line protocol.
fn write_f32(out: &mut Vec<u8>, value: f32) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{value}");
}

fn check_line_break(what: &'static str, value: &str) -> Result<(), Unrepresentable> {
    if value.contains(['\n', '\r']) {
        return Err(Unrepresentable::LineBreak {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Batches

/// What closes a batch, from `InfluxConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub points_max: usize,
    pub bytes_max: usize,
    /// A batch is due this long after its first record arrived.
    pub age_max: Duration,
}

impl BatchLimits {
    #[must_use]
    pub fn new(config: &InfluxConfig) -> Self {
        Self {
            points_max: config.batch_points_max,
            bytes_max: config.batch_bytes_max,
            age_max: Duration::from_millis(config.flush_interval_ms),
        }
    }
}

/// One record's lines in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub shard: usize,
    pub offset: u64,
    /// Its lines: a slice of the batch's body.
    pub lines: Range<usize>,
    /// When the server received the message (ms since the Unix epoch), for the
    /// receipt -> queryable latency.
    pub received_ms: u64,
}

/// Records gathered for one write.
///
/// A record is added whole, so a batch may pass `points_max` or `bytes_max` by one
/// record's lines (a few readings).
#[derive(Debug)]
pub struct Batch {
    /// Line protocol of every entry, back to back: a run of entries is one slice of it.
    body: Vec<u8>,
    /// The records that have points, in arrival order: the unit of the refusal search.
    entries: Vec<Entry>,
    points: usize,
    /// Per shard, one past the highest offset delivered into this batch, records without
    /// points included: what `Progress::Through` reports once the batch is handled.
    ends: Vec<Option<u64>>,
    /// When the first record arrived; `None` while empty.
    opened_at: Option<Instant>,
}

impl Batch {
    #[must_use]
    pub fn new(shards: usize) -> Self {
        Self {
            body: Vec::new(),
            entries: Vec::new(),
            points: 0,
            ends: vec![None; shards],
            opened_at: None,
        }
    }

    /// Adds a delivery: its points if it is a reading, its offset in any case (a refused
    /// record is handled too once its refusal is reported, which the caller does).
    ///
    /// # Panics
    ///
    /// If the delivery's shard is outside the sink's shard count (a bug of the egress side).
    pub fn push(&mut self, delivery: &Delivery, now: Instant) -> Result<(), Unrepresentable> {
        assert!(
            delivery.shard < self.ends.len(),
            "delivery from shard {} but the sink has {} shards",
            delivery.shard,
            self.ends.len()
        );
        self.opened_at.get_or_insert(now);
        let end = delivery.offset.saturating_add(1);
        let slot = &mut self.ends[delivery.shard];
        *slot = Some(slot.map_or(end, |known| known.max(end)));
        if let Decoded::Reading(meta) = delivery.decoded() {
            let start = self.body.len();
            let points = push_lines(meta, &mut self.body)?;
            if points > 0 {
                self.points += points;
                self.entries.push(Entry {
                    shard: delivery.shard,
                    offset: delivery.offset,
                    lines: start..self.body.len(),
                    received_ms: meta.received_ms,
                });
            }
        }
        Ok(())
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.opened_at.is_none()
    }

    /// At its point or byte limit: no more records are taken into it.
    #[must_use]
    pub fn is_full(&self, limits: &BatchLimits) -> bool {
        self.points >= limits.points_max || self.body.len() >= limits.bytes_max
    }

    /// When it is due by age; `None` while empty.
    #[must_use]
    pub fn due_at(&self, limits: &BatchLimits) -> Option<Instant> {
        self.opened_at.map(|at| at + limits.age_max)
    }

    /// Full, or old enough: it should be written as soon as a write slot is free.
    #[must_use]
    pub fn is_due(&self, now: Instant, limits: &BatchLimits) -> bool {
        !self.is_empty()
            && (self.is_full(limits) || self.due_at(limits).is_some_and(|at| now >= at))
    }

    #[must_use]
    pub fn points(&self) -> usize {
        self.points
    }

    #[must_use]
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    #[must_use]
    pub fn ends(&self) -> &[Option<u64>] {
        &self.ends
    }

    /// The lines of entries `range`, one contiguous slice.
    #[must_use]
    pub fn lines(&self, range: Range<usize>) -> &[u8] {
        let entries = &self.entries[range];
        match (entries.first(), entries.last()) {
            (Some(first), Some(last)) => &self.body[first.lines.start..last.lines.end],
            _ => &[],
        }
    }
}

// ---------------------------------------------------------------------------------------
// The refusal search

/// Finds the records InfluxDB refuses in a batch: a refused run of entries is split in
/// halves, each written again (writes are idempotent), down to single entries, which are
/// refused. Runs come out in entry order; the stack holds at most log2(n) + 1 runs.
#[derive(Debug)]
pub struct Bisect {
    /// Runs still to write, the next one last.
    todo: Vec<Range<usize>>,
}

impl Bisect {
    /// A search over entries `0..entries`, starting with all of them in one write.
    #[must_use]
    pub fn new(entries: usize) -> Self {
        // An empty search has nothing to write.
        let todo = (entries > 0).then_some(0..entries).into_iter().collect();
        Self { todo }
    }

    /// The next run of entries to write.
    pub fn next_run(&mut self) -> Option<Range<usize>> {
        self.todo.pop()
    }

    /// `run` was refused: the entry to refuse if it is a single one, else `None` and its
    /// halves come next, first half first.
    pub fn refused(&mut self, run: Range<usize>) -> Option<usize> {
        assert!(!run.is_empty(), "an empty run was written");
        if run.len() == 1 {
            return Some(run.start);
        }
        let middle = run.start + run.len() / 2;
        self.todo.push(middle..run.end);
        self.todo.push(run.start..middle);
        None
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

/// Where writes go and how they authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `{url}/write?db=..&precision=ns` (v1) or
    /// `{url}/api/v2/write?org=..&bucket=..&precision=ns` (v2).
    pub url: reqwest::Url,
    /// `Token {token}`: always with v2; with v1 when a token is set (InfluxDB 1.8 reads
    /// `username:password` there, 2.x and 3.x's v1 API a token).
    pub authorization: Option<String>,
    /// The keys to check when InfluxDB answers 404.
    pub not_found_keys: &'static str,
}

impl Endpoint {
    /// The write endpoint for `config`, or the key that makes it impossible and why.
    pub fn new(config: &InfluxConfig) -> Result<Self, (&'static str, String)> {
        let base = reqwest::Url::parse(&config.url).map_err(|error| {
            (
                "influxdb.url",
                format!("{:?} is not a URL: {error}", config.url),
            )
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err((
                "influxdb.url",
                format!("{:?} must be http:// or https:// with a host", config.url),
            ));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err((
                "influxdb.url",
                format!("{:?} must not have a query or fragment", config.url),
            ));
        }
        if !config.token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err((
                "influxdb.token",
                "must be printable ASCII without spaces".to_string(),
            ));
        }
        let root = config.url.trim_end_matches('/');
        let (path, params, not_found_keys): (_, Vec<(&str, &str)>, _) = match config.api.as_str() {
            "v1" => (
                "write",
                vec![("db", &config.database), ("precision", "ns")],
                "influxdb.database",
            ),
            "v2" => (
                "api/v2/write",
                vec![
                    ("org", &config.org),
                    ("bucket", &config.bucket),
                    ("precision", "ns"),
                ],
                "influxdb.org and influxdb.bucket",
            ),
            other => return Err(("influxdb.api", format!("{other:?} is not \"v1\" or \"v2\""))),
        };
        let mut url = reqwest::Url::parse(&format!("{root}/{path}"))
            .map_err(|error| ("influxdb.url", format!("{:?}: {error}", config.url)))?;
        url.query_pairs_mut().extend_pairs(params);
        let authorization = (config.api == "v2" || !config.token.is_empty())
            .then(|| format!("Token {}", config.token));
        Ok(Self {
            url,
            authorization,
            not_found_keys,
        })
    }
}

/// What an HTTP status means for the records sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Stored,
    /// Some points are bad (or too large): never sent again as they are.
    Refused,
    /// No such database or bucket: a configuration problem, retried.
    NotFound,
    /// The token is missing or wrong: a configuration problem, retried.
    Unauthorized,
    /// Overloaded, failing or unexpected: retried.
    Retriable,
}

#[must_use]
pub fn classify(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Stored,
        400 | 413 | 422 => StatusClass::Refused,
        404 => StatusClass::NotFound,
        401 | 403 => StatusClass::Unauthorized,
        _ => StatusClass::Retriable,
    }
}

/// InfluxDB's error text from a response body: the `error` (v1) or `message` (v2) member
/// of its JSON, else the body itself, else the status; at most
/// [`REFUSED_DETAIL_CHARS_MAX`] characters.
#[must_use]
pub fn error_text(status: u16, body: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|json| {
            ["error", "message"]
                .iter()
                .find_map(|key| json.get(key)?.as_str().map(str::to_string))
        });
    let text = from_json.unwrap_or_else(|| body.trim().to_string());
    let text = if text.is_empty() {
        format!("HTTP {status}")
    } else {
        text
    };
    text.chars().take(REFUSED_DETAIL_CHARS_MAX).collect()
}

/// Exponential backoff between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    /// The wait after `failures` failures in a row before this one (0 for the first):
    /// `base_ms` doubled per failure up to `max_ms`, less up to half of it by `jitter`
    /// (0..1, so many nodes do not retry in step), and at least `retry_after` (InfluxDB's
    /// `Retry-After`) up to `max_ms`.
    #[must_use]
    pub fn delay(&self, failures: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let full_ms = self
            .base_ms
            .saturating_mul(1_u64 << failures.min(32))
            .min(self.max_ms);
        let cut_ms = (full_ms as f64 * 0.5 * jitter.clamp(0.0, 1.0)) as u64;
        let delay = Duration::from_millis(full_ms - cut_ms);
        match retry_after {
            Some(after) => delay.max(after.min(Duration::from_millis(self.max_ms))),
            None => delay,
        }
    }
}

/// InfluxDB's final word on a run of records.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Stored,
    Refused(String),
}

/// A failed attempt (retried).
#[derive(Debug)]
enum Failure {
    Unreachable(reqwest::Error),
    NotFound(String),
    Unauthorized {
        status: u16,
        text: String,
    },
    Status {
        status: u16,
        text: String,
        retry_after: Option<Duration>,
    },
}

impl Failure {
    /// Logs it: the first of a run of failures and then each power-of-two count, so an
    /// outage is visible without a line per attempt (`up` and the counters show the rest).
    fn emit(&self, endpoint: &Endpoint, failures: u32) {
        let in_a_row = failures + 1;
        if !in_a_row.is_power_of_two() {
            return;
        }
        match self {
            Failure::Unreachable(error) => tracing::warn!(
                url = %endpoint.url, in_a_row, error = %chain(error),
                "influxdb unreachable; records wait and are retried"
            ),
            Failure::NotFound(text) => tracing::error!(
                url = %endpoint.url, in_a_row, error = %text,
                "influxdb answered 404: check {} (records wait and are retried)",
                endpoint.not_found_keys
            ),
            Failure::Unauthorized { status, text } => tracing::error!(
                url = %endpoint.url, in_a_row, status, error = %text,
                "influxdb refused the credentials: check influxdb.token (records wait and are retried)"
            ),
            Failure::Status { status, text, .. } => tracing::warn!(
                url = %endpoint.url, in_a_row, status, error = %text,
                "influxdb write failed; records wait and are retried"
            ),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// An error with its sources, `a: b: c` (reqwest's own text hides the cause).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Writes batches; shared by the sink's task and the writes in flight.
struct Writer {
    client: reqwest::Client,
    endpoint: Endpoint,
    gzip: bool,
    backoff: Backoff,
    metrics: Arc<SinkMetrics>,
    progress: UnboundedSender<Progress>,
}

impl Writer {
    /// Stores or refuses every entry of the batch, and gives the batch back for its
    /// `Through` reports.
    async fn write(self: Arc<Self>, batch: Batch) -> Batch {
        let mut search = Bisect::new(batch.entries.len());
        while let Some(run) = search.next_run() {
            match self.write_until_answered(batch.lines(run.clone())).await {
                Answer::Stored => {
                    self.metrics.records.add(run.len() as u64);
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    for entry in &batch.entries[run.clone()] {
                        self.metrics
                            .visible
                            .observe_us(now_ms.saturating_sub(entry.received_ms) * 1000);
                    }
                }
                Answer::Refused(text) => {
                    if let Some(index) = search.refused(run) {
                        let entry = &batch.entries[index];
                        self.refuse(entry.shard, entry.offset, text);
                    }
                }
            }
        }
        if batch.points > 0 {
            self.metrics.batches.inc();
        }
        batch
    }

    /// Refuses a record for good; the shard turns it into a dead letter.
    fn refuse(&self, shard: usize, offset: u64, detail: String) {
        self.metrics.refused.inc();
        tracing::debug!(shard, offset, %detail, "influxdb refused a record");
        let _ = self.progress.send(Progress::Refused {
            sink: SinkId::Influx,
            shard,
            offset,
            reason: REFUSED_REASON.to_string(),
            detail,
        });
    }

    /// Writes `lines` until InfluxDB stores or refuses them.
    async fn write_until_answered(&self, lines: &[u8]) -> Answer {
        let body = self.encode(lines).await;
        let mut failures = 0_u32;
        loop {
            match self.attempt(body.clone()).await {
                Ok(answer) => {
                    self.metrics.up.set(1);
                    if failures > 0 {
                        tracing::info!(failures, "influxdb writes get through again");
                    }
                    return answer;
                }
                Err(failure) => {
                    self.metrics.failures.inc();
                    self.metrics.up.set(0);
                    failure.emit(&self.endpoint, failures);
                    let delay = self
                        .backoff
                        .delay(failures, rand::random(), failure.retry_after());
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(delay).await;
                    self.metrics.retries.inc();
                }
            }
        }
    }

    /// The request body: the lines, gzipped when configured.
    async fn encode(&self, lines: &[u8]) -> Bytes {
        if !self.gzip {
            return Bytes::copy_from_slice(lines);
        }
        if lines.len() < GZIP_INLINE_BYTES_MAX {
            return Bytes::from(gzip(lines));
        }
        let owned = lines.to_vec();
        match tokio::task::spawn_blocking(move || gzip(&owned)).await {
            Ok(compressed) => Bytes::from(compressed),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Cancelled: the runtime is shutting down and this task goes with it.
            Err(_) => std::future::pending().await,
        }
    }

    /// One HTTP write.
    async fn attempt(&self, body: Bytes) -> Result<Answer, Failure> {
        let wire_bytes = body.len() as u64;
        let mut request = self
            .client
            .post(self.endpoint.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body);
        if self.gzip {
            request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        if let Some(authorization) = &self.endpoint.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        let sent_at = std::time::Instant::now();
        let response = request.send().await.map_err(Failure::Unreachable)?;
        self.metrics
            .latency
            .observe_us(u64::try_from(sent_at.elapsed().as_micros()).unwrap_or(u64::MAX));
        self.metrics.bytes.add(wire_bytes);
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let class = classify(status);
        if class == StatusClass::Stored {
            // Read to the end so the connection is reused (a 204 has no body).
            let _ = read_text(response).await;
            return Ok(Answer::Stored);
        }
        let text = error_text(status, &read_text(response).await);
        match class {
            StatusClass::Stored => Ok(Answer::Stored),
            StatusClass::Refused => Ok(Answer::Refused(text)),
            StatusClass::NotFound => Err(Failure::NotFound(text)),
            StatusClass::Unauthorized => Err(Failure::Unauthorized { status, text }),
            StatusClass::Retriable => Err(Failure::Status {
                status,
                text,
                retry_after,
            }),
        }
    }
}

/// The body's first [`RESPONSE_BYTES_MAX`] bytes as text; a body cut short is read as far
/// as it came.
async fn read_text(mut response: reqwest::Response) -> String {
    let mut text = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = RESPONSE_BYTES_MAX - text.len();
        text.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if text.len() == RESPONSE_BYTES_MAX {
            break;
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// gzip at the fastest level: line protocol still shrinks several times, and the sink
/// spends little CPU next to the shards.
fn gzip(lines: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(lines.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(lines);
    encoder.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::log::RecordKind;
    use crate::record::{self, DeadLetterMeta};
    use std::collections::BTreeMap;

    fn meta(device: &str, seq: u64, ts_ms: u64, readings: &[(&str, f32)]) -> ReadingMeta {
        ReadingMeta {
            device: device.to_string(),
            seq,
            ts_ms,
            readings: readings
                .iter()
                .map(|(name, value)| ((*name).to_string(), *value))
                .collect::<BTreeMap<_, _>>(),
            topic: format!("devices/{device}/telemetry"),
            received_ms: ts_ms.saturating_add(3),
            node: "node-a".to_string(),
            shard: 0,
            qos: 1,
            region: "eu-west".to_string(),
            project: "forest-7".to_string(),
            location: "51.5,-0.1".to_string(),
            sensor_type: "ndir".to_string(),
        }
    }

    /// An `f32` through the builder, the way the sink wrote it before its fast path.
    struct Float32(f32);

    impl influxdb_line_protocol::builder::FieldValue for Float32 {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0)
        }
    }

    /// The lines of `meta` built entirely with the line protocol crate's builder.
    fn reference_lines(meta: &ReadingMeta) -> Vec<u8> {
        let mut out = Vec::new();
        let seq = i64::try_from(meta.seq).unwrap();
        let time_ns = point_time_ns(meta.ts_ms, meta.seq).unwrap();
        let tags = [
            ("device", meta.device.as_str()),
            ("project", meta.project.as_str()),
            ("region", meta.region.as_str()),
            ("sensor_type", meta.sensor_type.as_str()),
        ];
        for (name, &value) in &meta.readings {
            let mut line = LineProtocolBuilder::new_with(&mut out).measurement(name);
            for (key, value) in tags {
                if !value.is_empty() {
                    line = line.tag(key, value);
                }
            }
            line.field("value", Float32(value))
                .field("seq", seq)
                .timestamp(time_ns)
                .close_line();
        }
        out
    }

    /// Mostly plain names (the fast path), some with characters line protocol escapes.
    fn name(max: usize) -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Strategy as _;
        proptest::prop_oneof![
            3 => proptest::string::string_regex(&format!("[a-z0-9_.-]{{1,{max}}}")).unwrap(),
            1 => proptest::string::string_regex(&format!("[a-z ,=\\\\é]{{1,{max}}}")).unwrap(),
        ]
        .boxed()
    }

    proptest::proptest! {
        /// The fast path writes byte for byte what the crate's builder writes, for any
        /// names, tag values (escapes included) and numbers.
        #[test]
        fn lines_equal_the_builders(
            device in name(12),
            region in proptest::option::of(name(8)),
            project in proptest::option::of(name(8)),
            sensor in proptest::option::of(name(6)),
            names in proptest::collection::btree_map(name(10), proptest::num::f32::NORMAL | proptest::num::f32::ZERO | proptest::num::f32::SUBNORMAL, 1..4),
            seq in 0u64..i64::MAX as u64,
            ts_ms in 0u64..9_000_000_000_000,
        ) {
            let mut m = meta(&device, seq, ts_ms, &[]);
            m.region = region.unwrap_or_default();
            m.project = project.unwrap_or_default();
            m.sensor_type = sensor.unwrap_or_default();
            m.readings = names;
            let mut ours = Vec::new();
            push_lines(&m, &mut ours).unwrap();
            proptest::prop_assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(reference_lines(&m)).unwrap()
            );
        }
    }

    fn lines(meta: &ReadingMeta) -> String {
        let mut out = Vec::new();
        push_lines(meta, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn reading(shard: usize, offset: u64, meta: &ReadingMeta) -> Delivery {
        let mut payload = Vec::new();
        record::encode(meta, b"raw", &mut payload);
        Delivery::new(shard, offset, RecordKind::Reading, payload)
    }

    fn dead_letter(shard: usize, offset: u64) -> Delivery {
        let meta = DeadLetterMeta {
            reason: "bad_signature".into(),
            detail: "no".into(),
            device: "d".into(),
            topic: "t".into(),
            received_ms: 1,
            node: "n".into(),
            shard,
            qos: 1,
            peer: "p".into(),
            seq: None,
        };
        let mut payload = Vec::new();
        record::encode(&meta, b"raw", &mut payload);
        Delivery::new(shard, offset, RecordKind::DeadLetter, payload)
    }

    #[test]
    fn one_line_per_reading_with_its_name_as_measurement() {
        let m = meta(
            "co2-1",
            42,
            1_700_000_000_123,
            &[("temperature_c", 21.7), ("co2_ppm", 415.0)],
        );
        assert_eq!(
            lines(&m),
            "co2_ppm,device=co2-1,project=forest-7,region=eu-west,sensor_type=ndir \
             value=415,seq=42i 1700000000123000042\n\
             temperature_c,device=co2-1,project=forest-7,region=eu-west,sensor_type=ndir \
             value=21.7,seq=42i 1700000000123000042\n"
        );
    }

    #[test]
    fn tag_values_and_measurements_are_escaped() {
        let mut m = meta("dev 1", 1, 5, &[("odd name,x", -0.5)]);
        m.region = "north, east=1".to_string();
        m.project = r"back\slash".to_string();
        assert_eq!(
            lines(&m),
            "odd\\ name\\,x,device=dev\\ 1,project=back\\\\slash,region=north\\,\\ east\\=1,\
             sensor_type=ndir value=-0.5,seq=1i 5000001\n"
        );
    }

    #[test]
    fn empty_tags_are_left_out() {
        let mut m = meta("d", 7, 1, &[("co2_ppm", 1.25)]);
        m.region.clear();
        m.project.clear();
        m.sensor_type.clear();
        assert_eq!(lines(&m), "co2_ppm,device=d value=1.25,seq=7i 1000007\n");
    }

    #[test]
    fn the_timestamp_carries_the_sequence_below_the_millisecond() {
        assert_eq!(
            point_time_ns(1_700_000_000_000, 0),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(
            point_time_ns(1_700_000_000_000, 999_999),
            Some(1_700_000_000_000_999_999)
        );
        // Only the sub-millisecond digits: seq 1_000_007 lands where seq 7 would.
        assert_eq!(point_time_ns(10, 1_000_007), Some(10_000_007));
        // Two readings in one millisecond stay apart.
        assert_ne!(point_time_ns(10, 8), point_time_ns(10, 9));
        assert_eq!(point_time_ns(i64::MAX as u64 / 1_000_000 + 1, 0), None);
        assert_eq!(point_time_ns(u64::MAX, 0), None);
    }

    #[test]
    fn unrepresentable_records_write_nothing() {
        let mut out = b"kept\n".to_vec();
        let mut m = meta("d", 1, 1, &[("co2_ppm", 1.0)]);
        m.region = "a\nb value=1 1".to_string();
        assert!(matches!(
            push_lines(&m, &mut out),
            Err(Unrepresentable::LineBreak { what: "region", .. })
        ));
        let m = meta("d", 1, 1, &[("#co2", 1.0)]);
        assert_eq!(
            push_lines(&m, &mut out),
            Err(Unrepresentable::Comment("#co2".to_string()))
        );
        let m = meta("d", u64::MAX, 1, &[("co2", 1.0)]);
        assert_eq!(
            push_lines(&m, &mut out),
            Err(Unrepresentable::Seq(u64::MAX))
        );
        let m = meta("d", 1, u64::MAX, &[("co2", 1.0)]);
        assert!(matches!(
            push_lines(&m, &mut out),
            Err(Unrepresentable::Timestamp { .. })
        ));
        assert_eq!(out, b"kept\n");
    }

    #[test]
    fn lines_parse_back_with_the_same_values() {
        let mut m = meta("dev=1", 3, 99, &[("a b", 1e-7), ("c", -3.4e38)]);
        m.region = "x, y=z".to_string();
        let text = lines(&m);
        let parsed: Vec<_> = influxdb_line_protocol::parse_lines(&text)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].series.measurement.to_string(), "a b");
        let tags = parsed[0].series.tag_set.as_ref().unwrap();
        let region = tags.iter().find(|(k, _)| *k == "region").unwrap();
        assert_eq!(region.1.to_string(), "x, y=z");
        let device = tags.iter().find(|(k, _)| *k == "device").unwrap();
        assert_eq!(device.1.to_string(), "dev=1");
        for line in &parsed {
            let value = &line
                .field_set
                .iter()
                .find(|(k, _)| *k == "value")
                .unwrap()
                .1;
            let influxdb_line_protocol::FieldValue::F64(v) = value else {
                panic!("value is not a float: {value:?}")
            };
            assert!(*v as f32 == 1e-7 || *v as f32 == -3.4e38, "{v}");
            assert_eq!(line.timestamp, Some(99_000_003));
        }
    }

    fn limits() -> BatchLimits {
        BatchLimits {
            points_max: 5,
            bytes_max: 1024,
            age_max: Duration::from_millis(20),
        }
    }

    #[test]
    fn a_batch_is_due_when_full_or_old() {
        let limits = limits();
        let t0 = Instant::now();
        let mut batch = Batch::new(2);
        assert!(batch.is_empty());
        assert!(!batch.is_due(t0 + Duration::from_secs(60), &limits));
        assert_eq!(batch.due_at(&limits), None);

        let m = meta("d", 1, 1, &[("a", 1.0), ("b", 2.0)]);
        batch.push(&reading(0, 10, &m), t0).unwrap();
        assert_eq!(batch.points(), 2);
        assert!(!batch.is_full(&limits));
        assert!(!batch.is_due(t0 + Duration::from_millis(19), &limits));
        assert!(batch.is_due(t0 + Duration::from_millis(20), &limits));
        // A later record does not restart the clock.
        batch
            .push(&reading(0, 11, &m), t0 + Duration::from_millis(15))
            .unwrap();
        assert_eq!(batch.due_at(&limits), Some(t0 + Duration::from_millis(20)));
        // The third record reaches the point limit (passing it by one point).
        batch.push(&reading(1, 3, &m), t0).unwrap();
        assert_eq!(batch.points(), 6);
        assert!(batch.is_full(&limits));
        assert!(batch.is_due(t0, &limits));
    }

    #[test]
    fn a_batch_is_full_at_its_byte_limit() {
        let limits = BatchLimits {
            points_max: 1_000,
            bytes_max: 300,
            age_max: Duration::from_secs(1),
        };
        let t0 = Instant::now();
        let mut batch = Batch::new(1);
        let m = meta("d", 1, 1, &[("co2_ppm", 1.0)]);
        let mut offset = 0;
        while !batch.is_full(&limits) {
            batch.push(&reading(0, offset, &m), t0).unwrap();
            offset += 1;
        }
        assert!(batch.lines(0..batch.entries().len()).len() >= 300);
        assert!(batch.lines(0..batch.entries().len() - 1).len() < 300);
        assert!(batch.is_due(t0, &limits));
    }

    #[test]
    fn a_batch_covers_every_record_and_slices_lines_per_record() {
        let t0 = Instant::now();
        let mut batch = Batch::new(3);
        let a = meta("a", 1, 1, &[("co2_ppm", 1.0)]);
        let b = meta("b", 2, 1, &[("co2_ppm", 2.0), ("temperature_c", 3.0)]);
        batch.push(&reading(0, 5, &a), t0).unwrap();
        batch.push(&dead_letter(1, 8), t0).unwrap();
        batch.push(&reading(1, 9, &b), t0).unwrap();
        batch.push(&dead_letter(0, 6), t0).unwrap();
        let other = Delivery::new(0, 7, RecordKind::Reading, b"\x09opaque".to_vec());
        batch.push(&other, t0).unwrap();
        // A replay from a lower offset inside the same batch does not lower its end.
        batch.push(&reading(0, 2, &a), t0).unwrap();
        assert_eq!(batch.ends(), &[Some(8), Some(10), None]);
        assert_eq!(batch.entries().len(), 3);
        assert_eq!(batch.points(), 4);
        assert_eq!(batch.lines(0..1), lines(&a).as_bytes());
        assert_eq!(batch.lines(1..2), lines(&b).as_bytes());
        let both = format!("{}{}", lines(&b), lines(&a));
        assert_eq!(batch.lines(1..3), both.as_bytes());

        // An unrepresentable reading is still covered, and writes nothing.
        let mut bad = meta("c", 3, 1, &[("co2_ppm", 1.0)]);
        bad.device = "c\r".to_string();
        assert!(batch.push(&reading(2, 0, &bad), t0).is_err());
        assert_eq!(batch.ends()[2], Some(1));
        assert_eq!(batch.entries().len(), 3);
    }

    #[test]
    fn a_batch_of_dead_letters_is_due_by_age_only() {
        let limits = limits();
        let t0 = Instant::now();
        let mut batch = Batch::new(1);
        for offset in 0..100 {
            batch.push(&dead_letter(0, offset), t0).unwrap();
        }
        assert_eq!(batch.points(), 0);
        assert!(!batch.is_full(&limits));
        assert!(!batch.is_due(t0, &limits));
        assert!(batch.is_due(t0 + limits.age_max, &limits));
        assert_eq!(batch.lines(0..0), b"");
    }

    /// Drives the search with a fake writer that refuses a run holding any bad entry, as
    /// InfluxDB answers 400 for a body with any bad point. Returns the refused entries and
    /// the number of writes.
    fn search(entries: usize, write: impl Fn(Range<usize>) -> bool) -> (Vec<usize>, usize) {
        let mut bisect = Bisect::new(entries);
        let mut refused = Vec::new();
        let mut stored = Vec::new();
        let mut writes = 0;
        while let Some(run) = bisect.next_run() {
            writes += 1;
            assert!(bisect.todo.len() <= 1 + entries.max(1).ilog2() as usize);
            if write(run.clone()) {
                stored.push(run);
            } else if let Some(index) = bisect.refused(run) {
                refused.push(index);
            }
        }
        // Stored runs and refused entries cover every entry once, in order.
        let mut covered: Vec<usize> = stored
            .into_iter()
            .flatten()
            .chain(refused.clone())
            .collect();
        covered.sort_unstable();
        assert_eq!(covered, (0..entries).collect::<Vec<_>>());
        (refused, writes)
    }

    #[test]
    fn bisect_finds_exactly_the_refused_records() {
        assert_eq!(search(0, |_| unreachable!()), (vec![], 0));
        assert_eq!(search(1000, |_| true), (vec![], 1));
        assert_eq!(search(1, |_| false), (vec![0], 1));

        let (refused, writes) = search(1000, |run| !run.contains(&617));
        assert_eq!(refused, vec![617]);
        // Two writes per level of halving, plus the first.
        assert!(writes <= 1 + 2 * 10, "{writes} writes");

        let bad = [0, 1, 500, 998, 999];
        let (refused, _) = search(1000, |run| !bad.iter().any(|b| run.contains(b)));
        assert_eq!(refused, bad);

        let (refused, writes) = search(7, |_| false);
        assert_eq!(refused, (0..7).collect::<Vec<_>>());
        assert_eq!(writes, 13);
    }

    #[test]
    fn bisect_writes_runs_in_order() {
        let mut bisect = Bisect::new(8);
        let run = bisect.next_run().unwrap();
        assert_eq!(run, 0..8);
        assert_eq!(bisect.refused(run), None);
        assert_eq!(bisect.next_run(), Some(0..4));
        assert_eq!(bisect.next_run(), Some(4..8));
        assert_eq!(bisect.next_run(), None);
    }

    fn config(api: &str) -> InfluxConfig {
        InfluxConfig {
            url: "http://influx.example:8086/".to_string(),
            api: api.to_string(),
            database: "tele metry&x".to_string(),
            org: "acme corp".to_string(),
            bucket: "iot/raw".to_string(),
            token: "s3cr=t".to_string(),
            ..InfluxConfig::default()
        }
    }

    #[test]
    fn v2_writes_to_the_org_and_bucket_with_a_token() {
        let endpoint = Endpoint::new(&config("v2")).unwrap();
        assert_eq!(
            endpoint.url.as_str(),
            "http://influx.example:8086/api/v2/write?org=acme+corp&bucket=iot%2Fraw&precision=ns"
        );
        assert_eq!(endpoint.authorization.as_deref(), Some("Token s3cr=t"));
        assert_eq!(endpoint.not_found_keys, "influxdb.org and influxdb.bucket");
    }

    #[test]
    fn v1_writes_to_the_database() {
        let mut config = config("v1");
        config.token.clear();
        let endpoint = Endpoint::new(&config).unwrap();
        assert_eq!(
            endpoint.url.as_str(),
            "http://influx.example:8086/write?db=tele+metry%26x&precision=ns"
        );
        assert_eq!(endpoint.authorization, None);
        assert_eq!(endpoint.not_found_keys, "influxdb.database");

        // A base path (behind a proxy) is kept; a token is sent when set.
        config.url = "https://proxy.example/influx".to_string();
        config.token = "user:pass".to_string();
        let endpoint = Endpoint::new(&config).unwrap();
        assert_eq!(
            endpoint.url.as_str(),
            "https://proxy.example/influx/write?db=tele+metry%26x&precision=ns"
        );
        assert_eq!(endpoint.authorization.as_deref(), Some("Token user:pass"));
    }

    #[test]
    fn unusable_endpoints_name_the_key() {
        for (url, token) in [
            ("not a url", ""),
            ("ftp://h/", ""),
            ("http://h:8086/?db=x", ""),
            ("http://h:8086", "with space"),
            ("http://h:8086", "line\nbreak"),
        ] {
            let config = InfluxConfig {
                url: url.to_string(),
                token: token.to_string(),
                ..InfluxConfig::default()
            };
            let (key, _) = Endpoint::new(&config).unwrap_err();
            let expected = if token.is_empty() {
                "influxdb.url"
            } else {
                "influxdb.token"
            };
            assert_eq!(key, expected, "{url} {token:?}");
        }
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify(204), StatusClass::Stored);
        assert_eq!(classify(200), StatusClass::Stored);
        assert_eq!(classify(400), StatusClass::Refused);
        assert_eq!(classify(413), StatusClass::Refused);
        assert_eq!(classify(422), StatusClass::Refused);
        assert_eq!(classify(404), StatusClass::NotFound);
        assert_eq!(classify(401), StatusClass::Unauthorized);
        assert_eq!(classify(403), StatusClass::Unauthorized);
        for status in [408, 429, 500, 502, 503, 504, 418, 307] {
            assert_eq!(classify(status), StatusClass::Retriable, "{status}");
        }
    }

    #[test]
    fn error_text_is_influx_message_truncated() {
        assert_eq!(
            error_text(400, r#"{"error":"partial write: field type conflict"}"#),
            "partial write: field type conflict"
        );
        assert_eq!(
            error_text(400, r#"{"code":"invalid","message":"unable to parse"}"#),
            "unable to parse"
        );
        assert_eq!(error_text(502, " bad gateway\n"), "bad gateway");
        assert_eq!(error_text(400, ""), "HTTP 400");
        let long = format!(r#"{{"error":"{}"}}"#, "é".repeat(800));
        assert_eq!(
            error_text(400, &long).chars().count(),
            REFUSED_DETAIL_CHARS_MAX
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let backoff = Backoff {
            base_ms: 100,
            max_ms: 5_000,
        };
        let ms = |failures, jitter| backoff.delay(failures, jitter, None).as_millis();
        assert_eq!(ms(0, 0.0), 100);
        assert_eq!(ms(1, 0.0), 200);
        assert_eq!(ms(5, 0.0), 3_200);
        assert_eq!(ms(6, 0.0), 5_000);
        assert_eq!(ms(u32::MAX, 0.0), 5_000);
        assert_eq!(ms(0, 1.0), 50);
        assert_eq!(ms(6, 0.5), 3_750);
        assert_eq!(ms(6, 7.0), 2_500);
        // Retry-After is honoured up to the cap.
        let after = |secs| {
            backoff
                .delay(0, 0.0, Some(Duration::from_secs(secs)))
                .as_millis()
        };
        assert_eq!(after(2), 2_000);
        assert_eq!(after(60), 5_000);
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let lines = b"co2_ppm,device=a value=1,seq=1i 1000001\n".repeat(100);
        let compressed = gzip(&lines);
        assert!(compressed.len() < lines.len() / 10);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, lines);
    }
}
