//! The Kafka sink: an idempotent rdkafka producer with `acks=all`.
//!
//! - Validated readings go to `kafka.telemetry_topic`, dead letters to
//!   `kafka.dead_letter_topic`, keyed by device id, so one device's records stay in one
//!   partition and in order. The value is the record's metadata as a JSON object plus
//!   `envelope`: the device's signed envelope in hex, so a consumer can verify the
//!   signature itself. Headers `device`, `seq` (when known), `node`, `shard` and
//!   `log_offset` let consumers deduplicate by (device, seq) without parsing the value.
//! - Delivery is confirmed per record; the sink reports a shard's progress only up to
//!   its first unconfirmed record, so the acknowledgements the shards gate on Kafka never
//!   run ahead of it.
//! - `message.timeout.ms` bounds one attempt chain inside librdkafka; a record that fails
//!   with a retriable error is sent again by this sink, a record Kafka refuses for good
//!   (too large, invalid) is reported as refused (the shard writes a dead letter), and a
//!   fatal producer error (idempotence state lost) replaces the producer and sends every
//!   unconfirmed record again, in order. Consumers deduplicate by (device, seq).

use super::sink::Decoded;
use super::{Delivery, Progress, SinkId, SinkInput};
use crate::config::KafkaConfig;
use crate::log::RecordKind;
use futures_lite::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records in flight to Kafka at most; beyond this the sink stops taking deliveries and
/// back-pressure reaches the feeder (which then reads from the log).
const IN_FLIGHT_MAX: usize = 200_000;

/// The producer settings ingestd insists on, then the operator's extra properties.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", config.linger_ms.to_string())
        .set("batch.size", config.batch_bytes_max.to_string())
        .set("message.timeout.ms", config.message_timeout_ms.to_string())
        .set("compression.type", &config.compression)
        .set("queue.buffering.max.messages", IN_FLIGHT_MAX.to_string())
        .set("queue.buffering.max.kbytes", "1048576")
        .set("socket.keepalive.enable", "true")
        .set("reconnect.backoff.max.ms", "1000")
        .set("log_level", "3");
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

/// Checks the topics before the server starts. When Kafka answers, missing topics are
/// created (`kafka.create_topics`) or the start is refused; when it does not answer
/// within a few seconds the server starts anyway (records wait in the log) and the sink
/// creates the topics when Kafka comes.
pub async fn prepare(config: &KafkaConfig) -> Result<(), super::EgressError> {
    match ensure_topics(config, Duration::from_secs(5)).await {
        Ok(created) => {
            if !created.is_empty() {
                tracing::info!(topics = ?created, "created missing Kafka topics");
            }
            Ok(())
        }
        Err(TopicError::Unreachable(message)) => {
            tracing::warn!(brokers = %config.brokers, %message, "Kafka does not answer; starting anyway, records wait in the durable log until it does");
            Ok(())
        }
        Err(TopicError::Refused(message)) => Err(super::EgressError::Kafka(message)),
    }
}

#[derive(Debug)]
enum TopicError {
    Unreachable(String),
    Refused(String),
}

/// The four topics, created when missing. Returns the ones it created.
async fn ensure_topics(config: &KafkaConfig, timeout: Duration) -> Result<Vec<String>, TopicError> {
    let wanted = [
        config.telemetry_topic.clone(),
        config.dead_letter_topic.clone(),
        config.fraud_topic.clone(),
        config.oracle_topic.clone(),
    ];
    let admin: AdminClient<DefaultClientContext> =
        client_config_admin(config).create().map_err(|error| {
            TopicError::Refused(format!("kafka.brokers {:?}: {error}", config.brokers))
        })?;
    let admin = Arc::new(admin);
    let existing = {
        let admin = Arc::clone(&admin);
        tokio::task::spawn_blocking(move || {
            admin.inner().fetch_metadata(None, timeout).map(|metadata| {
                metadata
                    .topics()
                    .iter()
                    .filter(|topic| topic.error().is_none())
                    .map(|topic| topic.name().to_string())
                    .collect::<Vec<_>>()
            })
        })
        .await
        .map_err(|error| TopicError::Unreachable(error.to_string()))?
        .map_err(|error| TopicError::Unreachable(error.to_string()))?
    };
    let missing: Vec<&String> = wanted.iter().filter(|t| !existing.contains(t)).collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    if !config.create_topics {
        return Err(TopicError::Refused(format!(
            "Kafka topics {missing:?} do not exist and kafka.create_topics is false: create them (partitions by device key) or set kafka.create_topics = true"
        )));
    }
    let new: Vec<NewTopic> = missing
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                config.partitions,
                TopicReplication::Fixed(config.replication_factor),
            )
        })
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new().operation_timeout(Some(timeout)))
        .await
        .map_err(|error| TopicError::Unreachable(error.to_string()))?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(TopicError::Refused(format!(
                    "creating Kafka topic {name:?} failed: {code} (check kafka.partitions and kafka.replication_factor)"
                )))
            }
        }
    }
    Ok(created)
}

fn client_config_admin(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("log_level", "3");
    client
}

/// One record on its way to Kafka.
struct InFlight {
    delivery: Arc<Delivery>,
    confirmed: bool,
    /// Sent and not yet answered (a record waiting for a resend is not).
    sent: bool,
}

/// Per shard: the records sent and not yet confirmed, in offset order (deliveries of a
/// shard arrive contiguously), so progress is the offset of the first unconfirmed one.
#[derive(Default)]
struct ShardQueue {
    records: VecDeque<InFlight>,
    reported: u64,
}

impl ShardQueue {
    fn slot(&mut self, offset: u64) -> Option<&mut InFlight> {
        let first = self.records.front()?.delivery.offset;
        let index = usize::try_from(offset.checked_sub(first)?).ok()?;
        self.records.get_mut(index)
    }

    /// Pops the confirmed prefix; returns the new progress end if it moved.
    fn advance(&mut self) -> Option<u64> {
        let mut end = None;
        while self.records.front().is_some_and(|r| r.confirmed) {
            if let Some(record) = self.records.pop_front() {
                end = Some(record.delivery.offset + 1);
            }
        }
        match end {
            Some(end) if end > self.reported => {
                self.reported = end;
                Some(end)
            }
            _ => None,
        }
    }
}

type Outcome = (usize, u64, Instant, u64, Result<(), KafkaError>);

/// A producer with ingestd's settings, retried until librdkafka accepts the config.
async fn create_producer(config: &KafkaConfig) -> FutureProducer {
    loop {
        match client_config(config).create::<FutureProducer>() {
            Ok(producer) => return producer,
            Err(error) => {
                tracing::error!(%error, "creating the Kafka producer failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The sink task.
pub async fn run(config: KafkaConfig, mut input: SinkInput) {
    let mut producer = create_producer(&config).await;
    let mut topics_ready = false;
    let mut queues: Vec<ShardQueue> = (0..input.shards).map(|_| ShardQueue::default()).collect();
    let mut pending = Pending::new();
    let mut in_flight = 0usize;
    let mut resend: VecDeque<(usize, u64)> = VecDeque::new();
    let mut input_open = true;
    let mut last_answer = Instant::now();
    let metrics = Arc::clone(&input.metrics);
    metrics.up.set(0);
    loop {
        if !topics_ready {
            match ensure_topics(&config, Duration::from_secs(5)).await {
                Ok(_) => topics_ready = true,
                Err(error) => {
                    tracing::warn!(?error, "Kafka topics not ready; retrying");
                    metrics.failures.inc();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        if let Some((code, reason)) = producer.client().fatal_error() {
            // Idempotence state lost (say, the broker forgot this producer): start a new
            // producer and send everything unconfirmed again, in order.
            tracing::error!(?code, %reason, "Kafka producer failed fatally; replacing it and resending what was not confirmed");
            metrics.failures.inc();
            drop(pending);
            pending = Pending::new();
            in_flight = 0;
            resend.clear();
            producer = create_producer(&config).await;
            for (shard, queue) in queues.iter_mut().enumerate() {
                for record in queue.records.iter_mut().filter(|r| !r.confirmed) {
                    record.sent = false;
                    resend.push_back((shard, record.delivery.offset));
                }
            }
        }
        // Resends first, in order, so a device's records keep their order.
        while let Some(&(shard, offset)) = resend.front() {
            let Some(record) = queues[shard].slot(offset) else {
                resend.pop_front();
                continue;
            };
            if record.confirmed || record.sent {
                resend.pop_front();
                continue;
            }
            let delivery = Arc::clone(&record.delivery);
            match send(&producer, &config, &delivery) {
                SendResult::Sent(future) => {
                    metrics.retries.inc();
                    record.sent = true;
                    in_flight += 1;
                    pending.push(Box::pin(future));
                    resend.pop_front();
                }
                SendResult::Skip => {
                    record.confirmed = true;
                    resend.pop_front();
                }
                SendResult::Full => break,
                SendResult::Refused(reason) => {
                    refuse(&input, shard, offset, &reason);
                    record.confirmed = true;
                    resend.pop_front();
                }
            }
        }
        for (shard, queue) in queues.iter_mut().enumerate() {
            if let Some(end) = queue.advance() {
                let _ = input.progress.send(Progress::Through {
                    sink: SinkId::Kafka,
                    shard,
                    end,
                });
            }
        }
        if !input_open && in_flight == 0 && resend.is_empty() {
            let _ = producer.flush(Duration::from_secs(5));
            return;
        }
        if in_flight > 0
            && last_answer.elapsed() > Duration::from_millis(config.unreachable_after_ms)
        {
            metrics.up.set(0);
        }
        let can_take = input_open && in_flight + resend.len() < IN_FLIGHT_MAX && resend.is_empty();
        tokio::select! {
            received = input.rx.recv(), if can_take => {
                match received {
                    Some(delivery) => {
                        let mut batch = vec![delivery];
                        while batch.len() < 4096 {
                            match input.rx.try_recv() {
                                Ok(delivery) => batch.push(delivery),
                                Err(_) => break,
                            }
                        }
                        metrics.batches.inc();
                        for delivery in batch {
                            let shard = delivery.shard;
                            let offset = delivery.offset;
                            let Some(queue) = queues.get_mut(shard) else { continue };
                            if queue.records.back().is_some_and(|r| r.delivery.offset + 1 != offset) {
                                // Not contiguous (cannot happen with the feeder): start over
                                // from here once what is queued is confirmed.
                                tracing::warn!(shard, offset, "Kafka sink got a non-contiguous delivery");
                            }
                            queue.records.push_back(InFlight { delivery: Arc::clone(&delivery), confirmed: false, sent: false });
                            match send(&producer, &config, &delivery) {
                                SendResult::Sent(future) => {
                                    if let Some(record) = queue.records.back_mut() { record.sent = true; }
                                    in_flight += 1;
                                    pending.push(Box::pin(future));
                                }
                                SendResult::Skip => {
                                    if let Some(record) = queue.records.back_mut() { record.confirmed = true; }
                                }
                                SendResult::Full => resend.push_back((shard, offset)),
                                SendResult::Refused(reason) => {
                                    refuse(&input, shard, offset, &reason);
                                    if let Some(record) = queue.records.back_mut() { record.confirmed = true; }
                                }
                            }
                        }
                    }
                    None => input_open = false,
                }
            }
            outcome = pending.next(), if in_flight > 0 => {
                if let Some(outcome) = outcome {
                    in_flight -= 1;
                    last_answer = Instant::now();
                    on_outcome(&mut queues, &mut resend, &input, outcome);
                    // Take every answer that is already in.
                    while let Some(Some(outcome)) = futures_lite::future::poll_once(pending.next()).await {
                        in_flight -= 1;
                        on_outcome(&mut queues, &mut resend, &input, outcome);
                    }
                }
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if !resend.is_empty() {
                    // The local queue was full or records failed: back off a little.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

fn on_outcome(
    queues: &mut [ShardQueue],
    resend: &mut VecDeque<(usize, u64)>,
    input: &SinkInput,
    (shard, offset, sent_at, received_ms, result): Outcome,
) {
    let Some(record) = queues.get_mut(shard).and_then(|q| q.slot(offset)) else {
        return;
    };
    record.sent = false;
    match result {
        Ok(()) => {
            record.confirmed = true;
            input.metrics.records.inc();
            input
                .metrics
                .bytes
                .add(record.delivery.payload.len() as u64);
            input.metrics.up.set(1);
            input
                .metrics
                .latency
                .observe_us(sent_at.elapsed().as_micros() as u64);
            input
                .metrics
                .visible
                .observe_us(now_ms().saturating_sub(received_ms) * 1000);
        }
        Err(error) if permanent(&error) => {
            refuse(input, shard, offset, &error.to_string());
            record.confirmed = true;
        }
        Err(error) => {
            input.metrics.failures.inc();
            tracing::debug!(shard, offset, %error, "Kafka delivery failed; sending again");
            if input.metrics.failures.get().is_power_of_two() {
                tracing::warn!(shard, offset, %error, failures = input.metrics.failures.get(), "Kafka delivery failed; sending again");
            }
            resend.push_back((shard, offset));
        }
    }
}

fn refuse(input: &SinkInput, shard: usize, offset: u64, reason: &str) {
    input.metrics.refused.inc();
    let _ = input.progress.send(Progress::Refused {
        sink: SinkId::Kafka,
        shard,
        offset,
        reason: "kafka_refused".to_string(),
        detail: reason.chars().take(500).collect(),
    });
}

/// Errors no retry can fix: the record itself is unacceptable to Kafka.
fn permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

enum SendResult<F> {
    Sent(F),
    /// Nothing to send for this record (an undecodable record stays in the log only).
    Skip,
    /// librdkafka's queue is full: try again after some answers.
    Full,
    Refused(String),
}

/// The value Kafka consumers read: the record's metadata object with `envelope` (the
/// signed envelope in hex) added, spliced without re-serialising the metadata.
#[must_use]
pub fn value_bytes(meta: &[u8], raw: &[u8]) -> Option<Vec<u8>> {
    let body = meta.strip_suffix(b"}")?;
    if !body.starts_with(b"{") {
        return None;
    }
    let mut value = Vec::with_capacity(meta.len() + 16 + 2 * raw.len());
    value.extend_from_slice(body);
    if body.len() > 1 {
        value.push(b',');
    }
    value.extend_from_slice(b"\"envelope\":\"");
    ingestd_codec::envelope::hex::encode_into(raw, &mut value);
    value.extend_from_slice(b"\"}");
    Some(value)
}

fn send(
    producer: &FutureProducer,
    config: &KafkaConfig,
    delivery: &Arc<Delivery>,
) -> SendResult<impl std::future::Future<Output = Outcome>> {
    let topic = match delivery.kind {
        RecordKind::Reading => config.telemetry_topic.as_str(),
        RecordKind::DeadLetter => config.dead_letter_topic.as_str(),
    };
    // The metadata every sink shares; benchmark mode's unverified payloads and records
    // this version cannot read are `Other` and stay in the log.
    let (device, seq, received_ms, node) = match delivery.decoded() {
        Decoded::Reading(meta) => (&meta.device, Some(meta.seq), meta.received_ms, &meta.node),
        Decoded::DeadLetter(meta) => (&meta.device, meta.seq, meta.received_ms, &meta.node),
        Decoded::Other => return SendResult::Skip,
    };
    let Some((meta, raw)) = crate::record::split(&delivery.payload) else {
        return SendResult::Skip;
    };
    let Some(value) = value_bytes(meta, raw) else {
        return SendResult::Skip;
    };
    let seq_text = seq.map(|s| s.to_string());
    let shard_text = delivery.shard.to_string();
    let offset_text = delivery.offset.to_string();
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: "device",
            value: Some(device.as_str()),
        })
        .insert(Header {
            key: "node",
            value: Some(node.as_str()),
        })
        .insert(Header {
            key: "shard",
            value: Some(shard_text.as_str()),
        })
        .insert(Header {
            key: "log_offset",
            value: Some(offset_text.as_str()),
        });
    if let Some(seq) = &seq_text {
        headers = headers.insert(Header {
            key: "seq",
            value: Some(seq.as_str()),
        });
    }
    let record = FutureRecord::to(topic)
        .key(device.as_str())
        .payload(&value)
        .headers(headers);
    let shard = delivery.shard;
    let offset = delivery.offset;
    let sent_at = Instant::now();
    match producer.send_result(record) {
        Ok(future) => SendResult::Sent(async move {
            let result = match future.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(error),
                Err(_) => Err(KafkaError::Canceled),
            };
            (shard, offset, sent_at, received_ms, result)
        }),
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => SendResult::Full,
        Err((error, _)) if permanent(&error) => SendResult::Refused(error.to_string()),
        Err((error, _)) => {
            tracing::debug!(%error, "Kafka send failed locally; retrying");
            SendResult::Full
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

type PendingFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;

type Pending = futures_util::stream::FuturesUnordered<PendingFuture>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::RecordKind;

    fn delivery(offset: u64) -> Arc<Delivery> {
        Arc::new(Delivery::new(0, offset, RecordKind::Reading, Vec::new()))
    }

    #[test]
    fn progress_stops_at_the_first_unconfirmed_record() {
        let mut queue = ShardQueue::default();
        for offset in 10..15 {
            queue.records.push_back(InFlight {
                delivery: delivery(offset),
                confirmed: false,
                sent: true,
            });
        }
        queue.slot(11).unwrap().confirmed = true;
        queue.slot(12).unwrap().confirmed = true;
        assert_eq!(queue.advance(), None, "10 is not confirmed yet");
        queue.slot(10).unwrap().confirmed = true;
        assert_eq!(queue.advance(), Some(13));
        assert_eq!(queue.records.len(), 2);
        assert!(queue.slot(12).is_none(), "popped");
        queue.slot(14).unwrap().confirmed = true;
        assert_eq!(queue.advance(), None);
        queue.slot(13).unwrap().confirmed = true;
        assert_eq!(queue.advance(), Some(15));
        assert!(queue.records.is_empty());
    }

    #[test]
    fn the_value_carries_the_metadata_and_the_envelope() {
        let meta = br#"{"device":"d-1","seq":7,"readings":{"co2_ppm":415.5}}"#;
        let value: serde_json::Value =
            serde_json::from_slice(&value_bytes(meta, &[0xab, 0x01]).unwrap()).unwrap();
        assert_eq!(value["device"], "d-1");
        assert_eq!(value["seq"], 7);
        assert_eq!(value["readings"]["co2_ppm"], 415.5);
        assert_eq!(value["envelope"], "ab01");
        let empty: serde_json::Value =
            serde_json::from_slice(&value_bytes(b"{}", &[1]).unwrap()).unwrap();
        assert_eq!(empty["envelope"], "01");
        assert!(value_bytes(b"[1]", &[1]).is_none(), "not an object");
    }

    #[test]
    fn the_producer_is_idempotent_with_acks_all_whatever_the_extras() {
        let mut config = KafkaConfig {
            brokers: "127.0.0.1:9092".to_string(),
            ..KafkaConfig::default()
        };
        config
            .properties
            .insert("statistics.interval.ms".to_string(), "0".to_string());
        let client = client_config(&config);
        assert_eq!(client.get("enable.idempotence"), Some("true"));
        assert_eq!(client.get("acks"), Some("all"));
        assert_eq!(client.get("statistics.interval.ms"), Some("0"));
    }
}
