//! `run`: connects to Kafka, Redis and Cassandra, starts every task, and on shutdown lets them
//! finish their in-flight work, commit and flush before returning.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::Producer;
use tokio_util::sync::CancellationToken;

use crate::config::{
    BruinSettings, HawkeyeSettings, KafkaSettings, RefreshSettings, ServeSettings, StoreSettings,
};
use crate::kafka;
use crate::observe::{http, Metrics};
use crate::stores::{CassandraStore, RedisStore};

/// Everything `run` needs, validated.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub kafka: KafkaSettings,
    pub stores: StoreSettings,
    pub hawkeye: HawkeyeSettings,
    pub bruin: BruinSettings,
    pub refresh: RefreshSettings,
    pub serve: ServeSettings,
    pub http_addr: SocketAddr,
}

/// How long shutdown waits for the producer to deliver what it still holds.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(settings: RunSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new()?);
    let producer = kafka::producer(&settings.kafka)?;
    kafka::wait_for_brokers(&producer).await?;
    let topics = &settings.kafka.topics;
    kafka::ensure_topics(
        &settings.kafka,
        &[
            &topics.profile_updates,
            &topics.profile_dlq,
            &topics.refresh,
            &topics.get,
            &topics.reply,
            &topics.notifications,
        ],
    )
    .await?;
    let redis = RedisStore::connect(&settings.stores)
        .await
        .context("cannot reach Redis (REDIS_URL)")?;
    let cassandra = CassandraStore::connect(&settings.stores)
        .await
        .context("cannot set up Cassandra (CASSANDRA_NODES)")?;
    tracing::info!(keyspace = cassandra.keyspace(), "stores ready");

    let (_, http_task) = http::serve(
        settings.http_addr,
        metrics.clone(),
        vec![
            Box::new(kafka::BrokerCheck(producer.clone())),
            Box::new(redis.clone()),
            Box::new(cassandra.clone()),
        ],
        shutdown.clone(),
    )
    .await?;
    tracing::info!("service running");

    shutdown.cancelled().await;
    http_task.await.context("HTTP server task")?;
    if let Err(e) = producer.flush(FLUSH_TIMEOUT) {
        tracing::warn!(error = %e, "producer did not deliver everything before shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}
