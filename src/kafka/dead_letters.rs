//! Dead letters: records the service cannot process, sent to a dead-letter topic with their
//! original key and bytes and headers that say why and where from. A letter the producer or
//! the broker refuses for its size is sent again without the value, with headers saying so:
//! a record the source topic took must never block the stream because the dead-letter topic
//! allows less (`message.max.bytes`).

use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;

use super::ServiceProducer;

/// Header names of a dead letter (`schemas/device_profile_dlq_headers.md`).
pub const HEADER_REASON: &str = "error.reason";
pub const HEADER_SOURCE_TOPIC: &str = "source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "source.offset";
/// `true` on a letter sent without the original value because it was too large.
pub const HEADER_VALUE_TRUNCATED: &str = "error.value.truncated";
/// The original value's size in bytes, on a truncated letter.
pub const HEADER_VALUE_BYTES: &str = "error.value.bytes";

/// How long a dead letter may wait in the producer's queue before the send fails.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where rejected records go. `send` completes once the letter is durably delivered.
pub trait DeadLetters: Send + Sync {
    fn send<'a>(
        &'a self,
        record: &'a OwnedMessage,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), KafkaError>>;
}

/// Dead letters on a Kafka topic, through the shared producer.
#[derive(Clone)]
pub struct KafkaDeadLetters {
    producer: ServiceProducer,
    topic: String,
}

impl KafkaDeadLetters {
    pub fn new(producer: ServiceProducer, topic: impl Into<String>) -> Self {
        KafkaDeadLetters {
            producer,
            topic: topic.into(),
        }
    }
}

impl DeadLetters for KafkaDeadLetters {
    fn send<'a>(
        &'a self,
        record: &'a OwnedMessage,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), KafkaError>> {
        Box::pin(async move {
            match self.deliver(record, reason, Value::Whole).await {
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                    let bytes = record.payload().map_or(0, <[u8]>::len);
                    tracing::warn!(
                        topic = record.topic(),
                        partition = record.partition(),
                        offset = record.offset(),
                        bytes,
                        "dead letter refused for its size; sent again without the value"
                    );
                    self.deliver(record, reason, Value::Dropped { bytes }).await
                }
                delivered => delivered,
            }
        })
    }
}

/// What a letter carries of the original value.
#[derive(Clone, Copy)]
enum Value {
    Whole,
    Dropped { bytes: usize },
}

impl KafkaDeadLetters {
    async fn deliver(
        &self,
        record: &OwnedMessage,
        reason: &str,
        value: Value,
    ) -> Result<(), KafkaError> {
        let partition = record.partition().to_string();
        let offset = record.offset().to_string();
        let mut headers = OwnedHeaders::new()
            .insert(header(HEADER_REASON, reason))
            .insert(header(HEADER_SOURCE_TOPIC, record.topic()))
            .insert(header(HEADER_SOURCE_PARTITION, &partition))
            .insert(header(HEADER_SOURCE_OFFSET, &offset));
        let mut letter: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic);
        if let Some(key) = record.key() {
            letter = letter.key(key);
        }
        match value {
            Value::Whole => {
                if let Some(payload) = record.payload() {
                    letter = letter.payload(payload);
                }
            }
            Value::Dropped { bytes } => {
                headers = headers
                    .insert(header(HEADER_VALUE_TRUNCATED, "true"))
                    .insert(header(HEADER_VALUE_BYTES, &bytes.to_string()));
            }
        }
        self.producer
            .send(letter.headers(headers), QUEUE_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(error, _)| error)
    }
}

/// Whether a failed send may succeed if tried again (brokers away, queue full, timeouts) rather
/// than being refused for what the letter is or where it goes. Size refusals never reach the
/// caller: the letter is sent again without its value.
pub fn is_transient(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    let permanent = matches!(
        error.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | InvalidMessage
                | InvalidMessageSize
                | InvalidRecord
                | InvalidTopic
                | TopicAuthorizationFailed
                | ClusterAuthorizationFailed
                | PolicyViolation
                | InvalidArgument
        )
    );
    !permanent
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_for_what_the_letter_is_are_permanent_outages_transient() {
        let production = KafkaError::MessageProduction;
        assert!(!is_transient(&production(
            RDKafkaErrorCode::TopicAuthorizationFailed
        )));
        assert!(!is_transient(&production(RDKafkaErrorCode::InvalidRecord)));
        assert!(is_transient(&production(RDKafkaErrorCode::MessageTimedOut)));
        assert!(is_transient(&production(RDKafkaErrorCode::QueueFull)));
        assert!(is_transient(&production(
            RDKafkaErrorCode::NotEnoughReplicas
        )));
        assert!(is_transient(&KafkaError::Canceled));
    }
}
