//! Dead letters: records the service cannot process, sent to a dead-letter topic with their
//! original key and bytes and headers that say why and where from.

use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;

use super::ServiceProducer;

/// Header names of a dead letter (`schemas/device_profile_dlq_headers.md`).
pub const HEADER_REASON: &str = "error.reason";
pub const HEADER_SOURCE_TOPIC: &str = "source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "source.offset";

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
            let partition = record.partition().to_string();
            let offset = record.offset().to_string();
            let headers = OwnedHeaders::new()
                .insert(header(HEADER_REASON, reason))
                .insert(header(HEADER_SOURCE_TOPIC, record.topic()))
                .insert(header(HEADER_SOURCE_PARTITION, &partition))
                .insert(header(HEADER_SOURCE_OFFSET, &offset));
            let mut letter: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(key) = record.key() {
                letter = letter.key(key);
            }
            if let Some(payload) = record.payload() {
                letter = letter.payload(payload);
            }
            self.producer
                .send(letter, QUEUE_TIMEOUT)
                .await
                .map(|_| ())
                .map_err(|(error, _)| error)
        })
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
