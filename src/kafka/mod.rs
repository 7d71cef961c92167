//! The Kafka edges of the service: client configuration, the shared producer, topic set-up,
//! the one consumer ingress, dead letters, notifications and request/reply headers.

pub mod access;
pub mod client_log;
pub mod dead_letters;
pub mod ingress;
pub mod notifications;
pub mod offsets;
pub mod request_reply;
pub mod statistics;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};

use self::client_log::ClientLog;
use self::statistics::ClientMetrics;
use crate::config::KafkaSettings;
use crate::observe::http::ReadinessCheck;
use crate::observe::Metrics;

/// The producer every task of the service shares.
pub type ServiceProducer = FutureProducer<ClientMetrics>;

/// How long start-up waits for the brokers to answer before giving up.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How often start-up looks whether the brokers refused this client while it waits for them.
const REFUSAL_POLL: Duration = Duration::from_secs(1);

/// The librdkafka settings every client of the service shares: brokers plus `KAFKA_CONFIG`.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    for (key, value) in &settings.extra {
        config.set(key, value.expose());
    }
    config
}

/// A client creation error with the offending setting's value masked: `KAFKA_CONFIG` values
/// may be secrets (`sasl.password`, `ssl.key.password`), and librdkafka's message repeats them.
pub fn redact_config_error(error: KafkaError) -> KafkaError {
    match error {
        KafkaError::ClientConfig(code, description, key, value) => {
            let description = if value.is_empty() {
                description
            } else {
                description.replace(&value, "***")
            };
            KafkaError::ClientConfig(code, description, key, "***".to_string())
        }
        other => other,
    }
}

/// The producer for dead letters, replies and notifications: idempotent, acknowledged by all
/// in-sync replicas, compressed (replies can be large). The operator's tools use it as it is;
/// the service's shared one is [`reporting_producer`].
pub fn producer(settings: &KafkaSettings) -> anyhow::Result<ServiceProducer> {
    build_producer(settings, None)
}

/// [`producer`], its librdkafka statistics (the queue depth) reported to `metrics`: the
/// service's long-running producer.
pub fn reporting_producer(
    settings: &KafkaSettings,
    metrics: Arc<Metrics>,
) -> anyhow::Result<ServiceProducer> {
    build_producer(settings, Some(metrics))
}

fn build_producer(
    settings: &KafkaSettings,
    metrics: Option<Arc<Metrics>>,
) -> anyhow::Result<ServiceProducer> {
    let mut config = client_config(settings);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("message.max.bytes", "10000000");
    let context = ClientMetrics::producer(&mut config, metrics);
    let producer = config
        .create_with_context(context)
        .map_err(redact_config_error)
        .map_err(|e| anyhow::anyhow!("cannot create Kafka producer (check KAFKA_CONFIG): {e}"))?;
    Ok(producer)
}

/// Waits until the brokers answer a metadata request.
pub async fn check_brokers(producer: &ServiceProducer, timeout: Duration) -> Result<(), String> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, timeout)
            .map(|_| client_log::brokers_reached())
            .map_err(|e| format!("brokers do not answer: {e}"))
    })
    .await
    .map_err(|e| format!("metadata task failed: {e}"))?
}

/// Creates the topics that are missing, with the brokers' default partitions and replication.
/// Existing topics are left as they are, and only missing ones are asked for: a client whose
/// topics were created beforehand needs no right to create topics. A topic the client may not
/// even see, or may not create, stops start-up with the grant to add.
pub async fn ensure_topics(settings: &KafkaSettings, names: &[&str]) -> anyhow::Result<()> {
    let missing = missing_topics(settings, names).await?;
    if missing.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<ClientLog> = client_config(settings)
        .create_with_context(ClientLog)
        .map_err(redact_config_error)
        .map_err(|e| anyhow::anyhow!("cannot create Kafka admin client: {e}"))?;
    let topics: Vec<NewTopic> = missing
        .iter()
        .map(|name| NewTopic::new(name, -1, TopicReplication::Fixed(-1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create topics: {e}"))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => match access::missing_grant(code, "CREATE", &format!("topic {name}")) {
                Some(grant) => anyhow::bail!("cannot create topic {name}, which does not exist: {grant}, or create it beforehand"),
                None => anyhow::bail!("cannot create topic {name}: {code}"),
            },
        }
    }
    Ok(())
}

/// Which of `names` the brokers do not have. The metadata is read by a consumer-type client,
/// which never has the brokers create a topic by asking for it.
async fn missing_topics(settings: &KafkaSettings, names: &[&str]) -> anyhow::Result<Vec<String>> {
    let consumer: BaseConsumer<ClientLog> = client_config(settings)
        .set("allow.auto.create.topics", "false")
        .create_with_context(ClientLog)
        .map_err(redact_config_error)
        .map_err(|e| anyhow::anyhow!("cannot create Kafka client: {e}"))?;
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut missing = Vec::new();
        for name in names {
            let metadata = consumer
                .fetch_metadata(Some(&name), METADATA_TIMEOUT)
                .map_err(|e| anyhow::anyhow!("cannot read the metadata of topic {name}: {e}"))?;
            let error = metadata.topics().first().and_then(|topic| topic.error());
            match error.map(RDKafkaErrorCode::from) {
                None => {}
                Some(
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
                ) => missing.push(name),
                Some(code) => {
                    match access::missing_grant(code, "DESCRIBE", &format!("topic {name}")) {
                        Some(grant) => anyhow::bail!("{grant}"),
                        None => anyhow::bail!("cannot read the metadata of topic {name}: {code}"),
                    }
                }
            }
        }
        Ok(missing)
    })
    .await?
}

/// `/ready` check of the brokers, through the shared producer's connections.
pub struct BrokerCheck(pub ServiceProducer);

impl ReadinessCheck for BrokerCheck {
    fn name(&self) -> &'static str {
        "kafka"
    }
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(check_brokers(&self.0, Duration::from_secs(2)))
    }
}

/// Start-up check with the longer timeout. A login or TLS handshake the brokers refuse ends it
/// at once, with the settings to fix.
pub async fn wait_for_brokers(producer: &ServiceProducer) -> anyhow::Result<()> {
    let deadline = Instant::now() + METADATA_TIMEOUT;
    loop {
        let answered = check_brokers(producer, REFUSAL_POLL).await;
        if let Some(refused) = access::refused_connection() {
            anyhow::bail!("{refused}");
        }
        match answered {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                anyhow::bail!("cannot reach Kafka (KAFKA_BROKERS): {e}")
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::BaseProducer;

    #[test]
    fn config_errors_do_not_show_the_value() {
        let error = ClientConfig::new()
            .set("no.such.property", "s3cret-value")
            .create::<BaseProducer>()
            .err()
            .map(redact_config_error)
            .expect("an unknown property is refused");
        let text = error.to_string();
        assert!(text.contains("no.such.property"), "{text}");
        assert!(!text.contains("s3cret-value"), "{text}");
    }
}
