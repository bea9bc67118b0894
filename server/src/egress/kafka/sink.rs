//! The sink's loop: every delivery is one producer record (and, for a flagged reading, an
//! alert record beside it), answered on its own; the shared [`Tracker`] turns the answers,
//! in whatever order they come, into contiguous progress and refusals. A delivery counts
//! as stored once Kafka acknowledged its record and its alert: a part Kafka acknowledged
//! is not sent again, a part that failed retriably is (in order, before new records), a
//! part refused for good refuses the delivery (a dead letter). A fatal producer error
//! replaces the producer and sends every unacknowledged part again.

use super::encoding::{encode, encode_alert, Message};
use super::service::{classify, create_producer, ensure_topics, permanent, IN_FLIGHT_MAX};
use super::KafkaConfig;
use crate::egress::driver::{now_ms, Completion};
use crate::egress::{Delivery, Reporter, SinkError, SinkId, SinkInput, Tracker};
use futures_lite::StreamExt;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Deliveries taken from the queue in one go.
const RECEIVE_BATCH_RECORDS_MAX: usize = 4096;

/// One delivery on its way to Kafka.
struct InFlight {
    delivery: Arc<Delivery>,
    /// Sent and not yet answered (a delivery waiting for a resend is not).
    sent: bool,
    /// The parts Kafka acknowledged so far ([`Part::bit`]): a resend skips them.
    acked: u8,
}

/// The Kafka records one delivery makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The reading or dead letter, on its topic.
    Record,
    /// A flagged reading's alert, on `kafka.fraud_topic`.
    Alert,
}

impl Part {
    fn bit(self) -> u8 {
        match self {
            Part::Record => 1,
            Part::Alert => 2,
        }
    }
}

/// A producer's answer for one delivery: shard, offset, when it was sent, when the server
/// received the message, and the result of each part sent in this attempt.
type Outcome = (usize, u64, Instant, u64, PartResults);

/// Each part's result in one attempt; `None` for a part not sent in it.
type PartResults = [(Part, Option<Result<(), KafkaError>>); 2];

/// The sink task.
pub async fn run(config: KafkaConfig, mut input: SinkInput) {
    let mut producer = create_producer(&config).await;
    let mut topics_ready = false;
    let mut tracker: Tracker<InFlight> = Tracker::new(input.shards);
    let reporter = Reporter::new(
        SinkId::Kafka,
        input.progress.clone(),
        Arc::clone(&input.metrics),
        input.shards,
    );
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
            for (shard, offset, record) in tracker.waiting() {
                record.sent = false;
                resend.push_back((shard, offset));
            }
        }
        // Resends first, in order, so a device's records keep their order.
        while let Some(&(shard, offset)) = resend.front() {
            let Some(record) = tracker.waiting_mut(shard, offset) else {
                resend.pop_front();
                continue;
            };
            if record.sent {
                resend.pop_front();
                continue;
            }
            let delivery = Arc::clone(&record.delivery);
            match send(&producer, &config, &delivery, record.acked) {
                SendResult::Sent(future) => {
                    metrics.retries.inc();
                    record.sent = true;
                    in_flight += 1;
                    pending.push(Box::pin(future));
                    resend.pop_front();
                }
                SendResult::Full => break,
                SendResult::Answered(answer) => {
                    tracker.complete(shard, offset, answer);
                    resend.pop_front();
                }
            }
        }
        reporter.send(tracker.advance()).await;
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
                        while batch.len() < RECEIVE_BATCH_RECORDS_MAX {
                            match input.rx.try_recv() {
                                Ok(delivery) => batch.push(delivery),
                                Err(_) => break,
                            }
                        }
                        metrics.batches.inc();
                        for delivery in batch {
                            let (shard, offset) = (delivery.shard, delivery.offset);
                            let record = InFlight { delivery: Arc::clone(&delivery), sent: false, acked: 0 };
                            if !tracker.accept(shard, offset, record) {
                                // Not contiguous (cannot happen with the feeder): a replay
                                // of a record still held, which is answered already.
                                tracing::warn!(shard, offset, "Kafka sink got a non-contiguous delivery");
                                continue;
                            }
                            match send(&producer, &config, &delivery, 0) {
                                SendResult::Sent(future) => {
                                    if let Some(record) = tracker.waiting_mut(shard, offset) {
                                        record.sent = true;
                                    }
                                    in_flight += 1;
                                    pending.push(Box::pin(future));
                                }
                                SendResult::Full => resend.push_back((shard, offset)),
                                SendResult::Answered(answer) => {
                                    tracker.complete(shard, offset, answer);
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
                    on_outcome(&mut tracker, &mut resend, &input, outcome);
                    // Take every answer that is already in.
                    while let Some(Some(outcome)) = futures_lite::future::poll_once(pending.next()).await {
                        in_flight -= 1;
                        on_outcome(&mut tracker, &mut resend, &input, outcome);
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
    tracker: &mut Tracker<InFlight>,
    resend: &mut VecDeque<(usize, u64)>,
    input: &SinkInput,
    (shard, offset, sent_at, received_ms, results): Outcome,
) {
    let Some(record) = tracker.waiting_mut(shard, offset) else {
        return;
    };
    record.sent = false;
    let bytes = record.delivery.payload.len() as u64;
    // Stored once every part is acknowledged; a part refused for good refuses the
    // delivery (whatever the other part did), a part that failed retriably sends the
    // delivery's unacknowledged parts again.
    let mut answer = Ok(());
    for (part, result) in results {
        match result {
            None => {}
            Some(Ok(())) => record.acked |= part.bit(),
            Some(Err(error)) => {
                let error = match (classify(&error), part) {
                    (error, Part::Record) => error,
                    (SinkError::Permanent(text), Part::Alert) => {
                        SinkError::Permanent(format!("fraud alert: {text}"))
                    }
                    (SinkError::Retriable(text), Part::Alert) => {
                        SinkError::Retriable(format!("fraud alert: {text}"))
                    }
                };
                if !matches!(answer, Err(SinkError::Permanent(_))) {
                    answer = Err(error);
                }
            }
        }
    }
    match &answer {
        Ok(()) => {
            input.metrics.records.inc();
            input.metrics.bytes.add(bytes);
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
        Err(SinkError::Permanent(_)) => {}
        Err(error @ SinkError::Retriable(_)) => {
            input.metrics.failures.inc();
            tracing::debug!(shard, offset, %error, "Kafka delivery failed; sending again");
            if input.metrics.failures.get().is_power_of_two() {
                tracing::warn!(shard, offset, %error, failures = input.metrics.failures.get(), "Kafka delivery failed; sending again");
            }
        }
    }
    if tracker.complete(shard, offset, answer) == Completion::Retry {
        resend.push_back((shard, offset));
    }
}

enum SendResult<F> {
    Sent(F),
    /// librdkafka's queue is full: try again after some answers.
    Full,
    /// Answered without sending: `Ok` when there is nothing to send for this delivery (an
    /// undecodable record stays in the log only), a permanent error when it is refused.
    Answered(Result<(), SinkError>),
}

/// Sends the parts of `delivery` not in `acked` ([`Part::bit`]): its record, and its alert
/// when it is a flagged reading.
fn send(
    producer: &FutureProducer,
    config: &KafkaConfig,
    delivery: &Arc<Delivery>,
    acked: u8,
) -> SendResult<impl std::future::Future<Output = Outcome>> {
    let unacked = |part: Part| acked & part.bit() == 0;
    let record = encode(config, delivery).filter(|_| unacked(Part::Record));
    let alert = encode_alert(config, delivery).filter(|_| unacked(Part::Alert));
    let Some(received_ms) = record.as_ref().or(alert.as_ref()).map(|m| m.received_ms) else {
        return SendResult::Answered(Ok(()));
    };
    // Per part, in `Part` order: Kafka's answer to come, or the local error of a part that
    // could not be queued after the other one was.
    let mut futures: [Option<DeliveryFuture>; 2] = [None, None];
    let mut early: [Option<KafkaError>; 2] = [None, None];
    for (index, (part, message)) in [(Part::Record, record), (Part::Alert, alert)]
        .into_iter()
        .enumerate()
    {
        let Some(message) = message else {
            continue;
        };
        match produce(producer, message) {
            Ok(future) => futures[index] = Some(future),
            Err(error) if futures.iter().any(Option::is_some) => {
                // The record is on its way: this part's failure is its answer (a full
                // queue is retriable: the part goes again with the next attempt).
                early[index] = Some(error);
            }
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                return SendResult::Full
            }
            Err(error) if permanent(&error) => {
                let text = match part {
                    Part::Record => error.to_string(),
                    Part::Alert => format!("fraud alert: {error}"),
                };
                return SendResult::Answered(Err(SinkError::Permanent(text)));
            }
            Err(error) => {
                tracing::debug!(%error, "Kafka send failed locally; retrying");
                return SendResult::Full;
            }
        }
    }
    let shard = delivery.shard;
    let offset = delivery.offset;
    let sent_at = Instant::now();
    let [record_future, alert_future] = futures;
    let [record_early, alert_early] = early;
    SendResult::Sent(async move {
        // Both parts are already queued in the producer: waiting for one after the other
        // takes as long as the slower.
        let record = answer(record_future, record_early).await;
        let alert = answer(alert_future, alert_early).await;
        (
            shard,
            offset,
            sent_at,
            received_ms,
            [(Part::Record, record), (Part::Alert, alert)],
        )
    })
}

/// Queues one Kafka record in the producer.
fn produce(producer: &FutureProducer, message: Message<'_>) -> Result<DeliveryFuture, KafkaError> {
    let record = FutureRecord::to(message.topic)
        .key(message.key)
        .payload(&message.value)
        .headers(message.headers);
    producer.send_result(record).map_err(|(error, _)| error)
}

/// A part's result: Kafka's answer for a part that was sent, the local error for one that
/// could not be, `None` for a part not sent in this attempt.
async fn answer(
    future: Option<DeliveryFuture>,
    early: Option<KafkaError>,
) -> Option<Result<(), KafkaError>> {
    if let Some(error) = early {
        return Some(Err(error));
    }
    Some(match future?.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(error),
        Err(_) => Err(KafkaError::Canceled),
    })
}

type PendingFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;

type Pending = futures_util::stream::FuturesUnordered<PendingFuture>;
