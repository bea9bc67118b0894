//! Talking to Kafka outside the record path: the producer's settings, the topics checked
//! (and created) at start, and which producer errors are permanent.

use super::KafkaConfig;
use crate::egress::{EgressError, SinkError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use std::sync::Arc;
use std::time::Duration;

/// Records in flight to Kafka at most; beyond this the sink stops taking deliveries and
/// back-pressure reaches the feeder (which then reads from the log).
pub(super) const IN_FLIGHT_MAX: usize = 200_000;

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
pub async fn prepare(config: &KafkaConfig) -> Result<(), EgressError> {
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
        Err(TopicError::Refused(message)) => Err(EgressError::Kafka(message)),
    }
}

#[derive(Debug)]
pub(super) enum TopicError {
    Unreachable(String),
    Refused(String),
}

/// The four topics, created when missing. Returns the ones it created.
pub(super) async fn ensure_topics(
    config: &KafkaConfig,
    timeout: Duration,
) -> Result<Vec<String>, TopicError> {
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

/// A producer with ingestd's settings, retried until librdkafka accepts the config.
pub(super) async fn create_producer(config: &KafkaConfig) -> FutureProducer {
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

/// Errors no retry can fix: the record itself is unacceptable to Kafka.
pub(super) fn permanent(error: &KafkaError) -> bool {
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

/// A delivery failure as the shared driver sees it.
pub(super) fn classify(error: &KafkaError) -> SinkError {
    if permanent(error) {
        SinkError::Permanent(error.to_string())
    } else {
        SinkError::Retriable(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
