//! Talking to InfluxDB: the write endpoint, what a status means, and the writer that
//! stores or refuses a batch (the refusal search), retrying through the shared driver.

use super::sink::{Batch, Bisect};
use super::InfluxConfig;
use crate::egress::{Backoff, Reporter, Retry, SinkError};
use crate::metrics::SinkMetrics;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Characters of InfluxDB's error text kept in a refusal's detail.
pub const REFUSED_DETAIL_CHARS_MAX: usize = crate::egress::driver::REFUSED_DETAIL_CHARS_MAX;
/// Bytes of a response body read; the rest is left unread (error texts are short).
const RESPONSE_BYTES_MAX: usize = 4096;
/// Bodies at least this large are compressed on tokio's blocking pool rather than on the
/// runtime's workers (gzip of 1 MiB takes milliseconds).
const GZIP_INLINE_BYTES_MAX: usize = 64 * 1024;

/// The HTTP client; building it fails only if the TLS roots cannot be set up, and then it
/// is tried again rather than giving up on the records.
pub(super) async fn build_client(
    config: &InfluxConfig,
    backoff: Backoff,
    metrics: &SinkMetrics,
) -> reqwest::Client {
    let builder = || {
        reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms))
            .tcp_nodelay(true)
    };
    let mut retry = Retry::unmetered(backoff);
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
                        retry.failed(None).await;
                    }
                }
            }
        }
    }
}

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
pub(super) struct Writer {
    pub(super) client: reqwest::Client,
    pub(super) endpoint: Endpoint,
    pub(super) gzip: bool,
    pub(super) backoff: Backoff,
    /// Refusals, and the sink's metrics.
    pub(super) reporter: Reporter,
}

impl Writer {
    /// Stores or refuses every entry of the batch, and gives the batch back for its
    /// `Through` reports.
    pub(super) async fn write(self: Arc<Self>, batch: Batch) -> Batch {
        let metrics = self.reporter.metrics();
        let mut search = Bisect::new(batch.entries().len());
        while let Some(run) = search.next_run() {
            match self.write_until_answered(batch.lines(run.clone())).await {
                Ok(()) => {
                    metrics.records.add(run.len() as u64);
                    let now_ms = crate::egress::driver::now_ms();
                    for entry in &batch.entries()[run.clone()] {
                        metrics
                            .visible
                            .observe_us(now_ms.saturating_sub(entry.received_ms) * 1000);
                    }
                }
                Err(error) => {
                    if let Some(index) = search.refused(run) {
                        let entry = &batch.entries()[index];
                        self.reporter
                            .refused(entry.shard, entry.offset, error.detail())
                            .await;
                    }
                }
            }
        }
        if batch.points() > 0 {
            metrics.batches.inc();
        }
        batch
    }

    /// Writes `lines` until InfluxDB stores them (`Ok`) or refuses them
    /// ([`SinkError::Permanent`]); retriable failures are retried, never returned.
    async fn write_until_answered(&self, lines: &[u8]) -> Result<(), SinkError> {
        let body = self.encode(lines).await;
        let mut retry = Retry::new(self.backoff, Arc::clone(self.reporter.metrics()));
        loop {
            match self.attempt(body.clone()).await {
                Ok(answer) => {
                    let failures = retry.succeeded();
                    if failures > 0 {
                        tracing::info!(failures, "influxdb writes get through again");
                    }
                    return match answer {
                        Answer::Stored => Ok(()),
                        Answer::Refused(text) => Err(SinkError::Permanent(text)),
                    };
                }
                Err(failure) => {
                    failure.emit(&self.endpoint, retry.failures());
                    retry.failed(failure.retry_after()).await;
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
        self.reporter
            .metrics()
            .latency
            .observe_us(u64::try_from(sent_at.elapsed().as_micros()).unwrap_or(u64::MAX));
        self.reporter.metrics().bytes.add(wire_bytes);
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
