//! The sink's loop: every delivery is one producer record, answered on its own; the shared
//! [`Tracker`] turns the answers, in whatever order they come, into contiguous progress
//! and refusals. Retriable failures are sent again (in order, before new records); a fatal
//! producer error replaces the producer and sends everything unconfirmed again.

use super::encoding::encode;
use super::service::{classify, create_producer, ensure_topics, permanent, IN_FLIGHT_MAX};
use super::KafkaConfig;
use crate::egress::driver::{now_ms, Completion};
use crate::egress::{Delivery, Reporter, SinkError, SinkId, SinkInput, Tracker};
use futures_lite::StreamExt;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Deliveries taken from the queue in one go.
const RECEIVE_BATCH_RECORDS_MAX: usize = 4096;

/// One record on its way to Kafka.
struct InFlight {
    delivery: Arc<Delivery>,
    /// Sent and not yet answered (a record waiting for a resend is not).
    sent: bool,
}

/// A producer's answer for one record: shard, offset, when it was sent, when the server
/// received the message, and the result.
type Outcome = (usize, u64, Instant, u64, Result<(), KafkaError>);

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
            match send(&producer, &config, &delivery) {
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
                            let record = InFlight { delivery: Arc::clone(&delivery), sent: false };
                            if !tracker.accept(shard, offset, record) {
                                // Not contiguous (cannot happen with the feeder): a replay
                                // of a record still held, which is answered already.
                                tracing::warn!(shard, offset, "Kafka sink got a non-contiguous delivery");
                                continue;
                            }
                            match send(&producer, &config, &delivery) {
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
    (shard, offset, sent_at, received_ms, result): Outcome,
) {
    let Some(record) = tracker.waiting_mut(shard, offset) else {
        return;
    };
    record.sent = false;
    let bytes = record.delivery.payload.len() as u64;
    let answer = result.map_err(|error| classify(&error));
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
    /// Answered without sending: `Ok` when there is nothing to send for this record (an
    /// undecodable record stays in the log only), a permanent error when it is refused.
    Answered(Result<(), SinkError>),
}

fn send(
    producer: &FutureProducer,
    config: &KafkaConfig,
    delivery: &Arc<Delivery>,
) -> SendResult<impl std::future::Future<Output = Outcome>> {
    let Some(message) = encode(config, delivery) else {
        return SendResult::Answered(Ok(()));
    };
    let record = FutureRecord::to(message.topic)
        .key(message.key)
        .payload(&message.value)
        .headers(message.headers);
    let shard = delivery.shard;
    let offset = delivery.offset;
    let received_ms = message.received_ms;
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
        Err((error, _)) if permanent(&error) => {
            SendResult::Answered(Err(SinkError::Permanent(error.to_string())))
        }
        Err((error, _)) => {
            tracing::debug!(%error, "Kafka send failed locally; retrying");
            SendResult::Full
        }
    }
}

type PendingFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;

type Pending = futures_util::stream::FuturesUnordered<PendingFuture>;
