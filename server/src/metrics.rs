//! Prometheus metrics, per shard, and the HTTP endpoint that serves them with `/healthz`
//! and `/readyz`.
//!
//! A shard only ever increments its own [`ShardMetrics`] with relaxed atomic adds on
//! memory no other core writes, so counting costs the message path next to nothing; the
//! HTTP thread reads them when scraped. Metric names are stable and documented in
//! docs/OPERATIONS.md.

use ingestd_shards::core::Reason;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    #[must_use]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    #[must_use]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Histogram bucket upper bounds in microseconds: 50 µs to 5 s.
pub const LATENCY_BUCKETS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 100_000, 128_000,
    256_000, 512_000, 1_000_000, 5_000_000,
];

/// A latency histogram with fixed buckets (Prometheus cumulative form when rendered).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    overflow: AtomicU64,
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe_us(&self, us: u64) {
        match LATENCY_BUCKETS_US.iter().position(|&bound| us <= bound) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    #[must_use]
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS_US.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let seconds = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{seconds}\"}} {cumulative}"
            );
        }
        cumulative += self.overflow.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count());
    }
}

/// One counter per refusal reason, indexed by `Reason::index`: the shard core's one enum
/// names them, so metrics and dead letters can never disagree on a name.
const REASON_COUNT: usize = Reason::ALL.len();

/// Every dead-letter reason code, in counter order.
pub fn reject_reasons() -> impl Iterator<Item = &'static str> {
    Reason::ALL.iter().map(|reason| reason.name())
}

/// Everything one shard counts.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    pub connections_handed_off_out: Counter,
    pub connections_handed_off_in: Counter,
    pub connect_refused: Counter,
    pub auth_throttled: Counter,
    pub messages_accepted: Counter,
    pub messages_rejected: [Counter; REASON_COUNT],
    pub qos0_dropped: Counter,
    pub verify_batches: Counter,
    pub verify_signatures: Counter,
    pub log_commits: Counter,
    pub log_commit_bytes: Counter,
    pub log_fsync_latency: Histogram,
    /// From a QoS 1/2 PUBLISH's arrival on its shard to its acknowledgement being queued:
    /// the server's share of the device's publish -> ack latency.
    pub ack_latency: Histogram,
    pub log_pending_bytes: Gauge,
    pub handoff_ring_occupancy: Gauge,
    pub backpressure_pauses: Counter,
    /// PUBACK, PUBREC and PUBCOMP of PUBLISHes the server never sent (ignored).
    pub unsolicited_acks: Counter,
    /// Fraud scoring: readings scored, alerts raised, readings quarantined, and how often
    /// each detector fired (by `Detector::index`).
    pub fraud_scored: Counter,
    pub fraud_alerts: Counter,
    pub fraud_quarantined: Counter,
    pub fraud_fired: [Counter; ingestd_shards::fraud::DETECTOR_COUNT],
    /// Peers summaries dropped because the ring to another shard was full.
    pub fraud_peer_summaries_dropped: Counter,
    pub tls_handshake_failures: Counter,
    /// Durable records the egress ring had no room for (their sinks read them back from
    /// the log).
    pub egress_ring_full: Counter,
    /// 1 while the shard's log cannot commit for lack of space (it reads and acknowledges
    /// nothing until space returns).
    pub log_disk_full: Gauge,
    /// Free bytes on the log's disk, as last measured (at a disk-full condition, then
    /// every second until it clears).
    pub log_disk_free_bytes: Gauge,
}

/// Everything one sink counts (label `sink`).
#[derive(Debug, Default)]
pub struct SinkMetrics {
    /// Batches written successfully.
    pub batches: Counter,
    /// Records stored by the sink.
    pub records: Counter,
    /// Bytes sent (after compression, where the sink compresses).
    pub bytes: Counter,
    /// Records the sink refused for good (each becomes a dead letter).
    pub refused: Counter,
    /// Attempts retried after a retriable failure.
    pub retries: Counter,
    /// Failed attempts (each retried later).
    pub failures: Counter,
    /// 1 while the sink is reachable, 0 while it is not.
    pub up: Gauge,
    /// One write's latency, from send to the sink's answer.
    pub latency: Histogram,
    /// Per record: from the server receiving the message to the sink confirming it stored
    /// it (queryable there). Clocks: the server's wall clock at both ends.
    pub visible: Histogram,
    /// Per shard: records in the durable log this sink has not confirmed yet.
    pub backlog: Vec<Gauge>,
}

impl SinkMetrics {
    #[must_use]
    pub fn new(shards: usize) -> Self {
        Self {
            backlog: (0..shards).map(|_| Gauge::default()).collect(),
            ..Self::default()
        }
    }
}

/// Readiness and liveness shared between the shards and the HTTP thread.
#[derive(Debug, Default)]
pub struct Health {
    /// Every shard has opened its log and bound its listeners.
    pub ready: AtomicBool,
    /// Set when draining for shutdown: /readyz turns 503 so balancers move away first.
    pub draining: AtomicBool,
    /// A shard's log failed an fsync; the node must not be sent traffic.
    pub failed: AtomicBool,
    /// Shards whose log disk is full: /readyz is 503 while any is.
    pub disk_full_shards: std::sync::atomic::AtomicUsize,
}

/// A metric's name, help text and how to read it off its source (a shard, a sink).
type Scalar<T> = (&'static str, &'static str, fn(&T) -> u64);
type Metric = Scalar<ShardMetrics>;

/// All shards' metrics, rendered together.
pub struct Registry {
    pub shards: Vec<Arc<ShardMetrics>>,
    pub health: Arc<Health>,
    /// The configured sinks, by name.
    pub sinks: Vec<(&'static str, Arc<SinkMetrics>)>,
}

impl Registry {
    #[must_use]
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards).map(|_| Arc::default()).collect(),
            health: Arc::default(),
            sinks: Vec::new(),
        }
    }

    /// The Prometheus text exposition of every metric.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Counters end in `_total`; the rest are gauges.
        let scalars: [Metric; 20] = [
            (
                "ingestd_connections_accepted_total",
                "TCP connections accepted",
                |m| m.connections_accepted.get(),
            ),
            (
                "ingestd_connections_handed_off_out_total",
                "connections passed to their home shard",
                |m| m.connections_handed_off_out.get(),
            ),
            (
                "ingestd_connections_handed_off_in_total",
                "connections received from another shard",
                |m| m.connections_handed_off_in.get(),
            ),
            ("ingestd_connect_refused_total", "CONNECTs refused", |m| {
                m.connect_refused.get()
            }),
            (
                "ingestd_auth_throttled_total",
                "refusals delayed for repeated failures",
                |m| m.auth_throttled.get(),
            ),
            (
                "ingestd_messages_accepted_total",
                "readings made durable",
                |m| m.messages_accepted.get(),
            ),
            (
                "ingestd_qos0_dropped_total",
                "QoS 0 messages dropped under overload",
                |m| m.qos0_dropped.get(),
            ),
            (
                "ingestd_verify_batches_total",
                "signature verification batches",
                |m| m.verify_batches.get(),
            ),
            (
                "ingestd_verify_signatures_total",
                "signatures verified",
                |m| m.verify_signatures.get(),
            ),
            (
                "ingestd_log_commits_total",
                "durable log group commits",
                |m| m.log_commits.get(),
            ),
            (
                "ingestd_log_commit_bytes_total",
                "bytes committed to the durable log",
                |m| m.log_commit_bytes.get(),
            ),
            (
                "ingestd_backpressure_pauses_total",
                "times a shard stopped reading sockets",
                |m| m.backpressure_pauses.get(),
            ),
            (
                "ingestd_unsolicited_acks_total",
                "PUBACK, PUBREC and PUBCOMP of PUBLISHes the server never sent (ignored)",
                |m| m.unsolicited_acks.get(),
            ),
            (
                "ingestd_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out",
                |m| m.tls_handshake_failures.get(),
            ),
            (
                "ingestd_egress_ring_full_total",
                "durable records the egress ring had no room for (sinks read them from the log)",
                |m| m.egress_ring_full.get(),
            ),
            ("ingestd_connections_open", "open device connections", |m| {
                m.connections_open.get()
            }),
            (
                "ingestd_log_pending_bytes",
                "bytes waiting for the next group commit",
                |m| m.log_pending_bytes.get(),
            ),
            (
                "ingestd_handoff_ring_occupancy",
                "connections waiting in the shard's handoff rings",
                |m| m.handoff_ring_occupancy.get(),
            ),
            (
                "ingestd_log_disk_full",
                "1 while the shard's log has no space to commit (it reads and acknowledges nothing)",
                |m| m.log_disk_full.get(),
            ),
            (
                "ingestd_log_disk_free_bytes",
                "free bytes on the log's disk when last measured (at and during a disk-full condition)",
                |m| m.log_disk_free_bytes.get(),
            ),
        ];
        let shards: Vec<(String, &ShardMetrics)> = self
            .shards
            .iter()
            .enumerate()
            .map(|(shard, m)| (format!("shard=\"{shard}\""), m.as_ref()))
            .collect();
        render_scalars(&mut out, &scalars, &shards);
        let name = "ingestd_messages_rejected_total";
        let _ = writeln!(
            out,
            "# HELP {name} messages refused, by reason\n# TYPE {name} counter"
        );
        for (shard, metrics) in self.shards.iter().enumerate() {
            for (reason, counter) in reject_reasons().zip(&metrics.messages_rejected) {
                let count = counter.get();
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "{name}{{shard=\"{shard}\",reason=\"{reason}\"}} {count}"
                    );
                }
            }
        }
        let name = "ingestd_ack_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} PUBLISH arrival to acknowledgement (after durability)\n# TYPE {name} histogram"
        );
        for (shard, metrics) in self.shards.iter().enumerate() {
            metrics
                .ack_latency
                .render(&mut out, name, &format!("shard=\"{shard}\""));
        }
        let name = "ingestd_log_fsync_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} durable log fsync latency\n# TYPE {name} histogram"
        );
        for (shard, metrics) in self.shards.iter().enumerate() {
            metrics
                .log_fsync_latency
                .render(&mut out, name, &format!("shard=\"{shard}\""));
        }
        self.render_fraud(&mut out);
        self.render_sinks(&mut out);
        out
    }

    fn render_fraud(&self, out: &mut String) {
        let counters: [Metric; 4] = [
            (
                "ingestd_fraud_peer_summaries_dropped_total",
                "peers summaries dropped on a full ring to another shard",
                |m| m.fraud_peer_summaries_dropped.get(),
            ),
            (
                "ingestd_fraud_scored_total",
                "readings scored for fraud",
                |m| m.fraud_scored.get(),
            ),
            (
                "ingestd_fraud_alerts_total",
                "readings scored at or above fraud.alert_score_min",
                |m| m.fraud_alerts.get(),
            ),
            (
                "ingestd_fraud_quarantined_total",
                "readings scored at or above fraud.quarantine_score_min",
                |m| m.fraud_quarantined.get(),
            ),
        ];
        for (name, help, get) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (shard, metrics) in self.shards.iter().enumerate() {
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", get(metrics));
            }
        }
        let name = "ingestd_fraud_detector_fired_total";
        let _ = writeln!(
            out,
            "# HELP {name} readings on which a fraud detector fired, by detector\n# TYPE {name} counter"
        );
        for (shard, metrics) in self.shards.iter().enumerate() {
            for (detector, counter) in ingestd_shards::fraud::Detector::ALL
                .iter()
                .zip(&metrics.fraud_fired)
            {
                let _ = writeln!(
                    out,
                    "{name}{{shard=\"{shard}\",detector=\"{}\"}} {}",
                    detector.name(),
                    counter.get()
                );
            }
        }
    }

    fn render_sinks(&self, out: &mut String) {
        if self.sinks.is_empty() {
            return;
        }
        let scalars: [Scalar<SinkMetrics>; 7] = [
            ("ingestd_sink_batches_total", "batches written", |m| {
                m.batches.get()
            }),
            ("ingestd_sink_records_total", "records stored", |m| {
                m.records.get()
            }),
            ("ingestd_sink_bytes_total", "bytes sent", |m| m.bytes.get()),
            (
                "ingestd_sink_refused_total",
                "records refused for good (dead-lettered)",
                |m| m.refused.get(),
            ),
            ("ingestd_sink_retries_total", "attempts retried", |m| {
                m.retries.get()
            }),
            ("ingestd_sink_failures_total", "failed attempts", |m| {
                m.failures.get()
            }),
            ("ingestd_sink_up", "1 while the sink is reachable", |m| {
                m.up.get()
            }),
        ];
        let sinks: Vec<(String, &SinkMetrics)> = self
            .sinks
            .iter()
            .map(|(sink, m)| (format!("sink=\"{sink}\""), m.as_ref()))
            .collect();
        render_scalars(out, &scalars, &sinks);
        let name = "ingestd_sink_backlog_records";
        let _ = writeln!(
            out,
            "# HELP {name} records in the durable log the sink has not confirmed\n# TYPE {name} gauge"
        );
        for (sink, metrics) in &self.sinks {
            for (shard, gauge) in metrics.backlog.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{sink=\"{sink}\",shard=\"{shard}\"}} {}",
                    gauge.get()
                );
            }
        }
        let name = "ingestd_sink_write_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} one write to the sink\n# TYPE {name} histogram"
        );
        for (sink, metrics) in &self.sinks {
            metrics
                .latency
                .render(out, name, &format!("sink=\"{sink}\""));
        }
        let name = "ingestd_sink_visible_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} from the server receiving a message to the sink confirming it\n# TYPE {name} histogram"
        );
        for (sink, metrics) in &self.sinks {
            metrics
                .visible
                .render(out, name, &format!("sink=\"{sink}\""));
        }
    }
}

/// Renders counters (names ending in `_total`) and gauges, one series per labelled source.
fn render_scalars<T>(out: &mut String, scalars: &[Scalar<T>], sources: &[(String, &T)]) {
    for (name, help, get) in scalars {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, metrics) in sources {
            let _ = writeln!(out, "{name}{{{labels}}} {}", get(metrics));
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on a plain thread until the process ends.
/// Deliberately off the shards: a scrape must never take a core's time from devices.
pub fn serve_http(
    listener: TcpListener,
    registry: Arc<Registry>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ingestd-http".to_string())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = answer(stream, &registry);
            }
        })
}

fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    // One request line of at most 8 KiB; headers and body are not needed.
    let mut request_line = String::new();
    BufReader::new(&stream)
        .take(8 * 1024)
        .read_line(&mut request_line)?;
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let health = &registry.health;
    let (status, body) = match path {
        "/metrics" => ("200 OK", registry.render()),
        "/healthz" if health.failed.load(Ordering::Relaxed) => (
            "503 Service Unavailable",
            "failed: a durable log refused an fsync\n".to_string(),
        ),
        "/healthz" => ("200 OK", "ok\n".to_string()),
        "/readyz" if health.draining.load(Ordering::Relaxed) => {
            ("503 Service Unavailable", "draining\n".to_string())
        }
        "/readyz" if health.disk_full_shards.load(Ordering::Relaxed) > 0 => {
            ("503 Service Unavailable", "disk full\n".to_string())
        }
        "/readyz" if health.failed.load(Ordering::Relaxed) => {
            ("503 Service Unavailable", "failed\n".to_string())
        }
        "/readyz" if health.ready.load(Ordering::Relaxed) => ("200 OK", "ready\n".to_string()),
        "/readyz" => ("503 Service Unavailable", "starting\n".to_string()),
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let content_type = if path == "/metrics" {
        "text/plain; version=0.0.4"
    } else {
        "text/plain"
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_counter_under_its_name() {
        // The shard core indexes the counters by `Reason::index`, without strings.
        let names: Vec<_> = reject_reasons().collect();
        assert_eq!(names.len(), REASON_COUNT);
        for reason in Reason::ALL {
            assert_eq!(names[reason.index()], reason.name());
        }
        for name in [
            "bad_signature",
            "stale_sequence",
            "topic_not_allowed",
            "other",
        ] {
            assert!(names.contains(&name), "{name}");
        }
    }

    #[test]
    fn render_is_prometheus_text() {
        let registry = Registry::new(2);
        registry.shards[1].messages_accepted.add(7);
        registry.shards[0].messages_rejected[Reason::BadSignature.index()].inc();
        registry.shards[0].log_fsync_latency.observe_us(300);
        let text = registry.render();
        assert!(text.contains("ingestd_messages_accepted_total{shard=\"1\"} 7"));
        assert!(text
            .contains("ingestd_messages_rejected_total{shard=\"0\",reason=\"bad_signature\"} 1"));
        assert!(text.contains("ingestd_log_fsync_seconds_bucket{shard=\"0\",le=\"0.0005\"} 1"));
        assert!(text.contains("ingestd_log_fsync_seconds_bucket{shard=\"0\",le=\"0.00025\"} 0"));
        assert!(text.contains("# TYPE ingestd_connections_open gauge"));
    }
}
