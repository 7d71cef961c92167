//! `run`: connects to Kafka, Redis and Cassandra, starts every task, and on shutdown lets them
//! finish their in-flight work, commit and flush before returning.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::{FutureProducer, Producer};
use tokio_util::sync::CancellationToken;

use crate::apis::{BruinClient, HawkeyeClient};
use crate::cache::keys::CacheKeys;
use crate::cache::refresh::Refresher;
use crate::cache::serve::GetServer;
use crate::cache::snapshot::LastContactPusher;
use crate::cache::trigger;
use crate::config::{
    BruinSettings, HawkeyeSettings, KafkaSettings, RefreshSettings, ServeSettings, StoreSettings,
};
use crate::kafka;
use crate::kafka::consumer::AtLeastOnceConsumer;
use crate::kafka::dead_letters::KafkaDeadLetters;
use crate::kafka::notifications::Notifier;
use crate::observe::{http, Metrics};
use crate::profile::pipeline::{PipelineSettings, ProfilePipeline};
use crate::stores::{CassandraStore, ProfileStores, RedisStore};

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
    let all_topics: Vec<&str> = topics
        .profile_updates
        .iter()
        .chain([
            &topics.profile_dlq,
            &topics.refresh,
            &topics.get,
            &topics.reply,
            &topics.notifications,
        ])
        .map(String::as_str)
        .collect();
    kafka::ensure_topics(&settings.kafka, &all_topics).await?;
    let redis = RedisStore::connect(&settings.stores)
        .await
        .context("cannot reach Redis (REDIS_URL)")?;
    let cassandra = CassandraStore::connect(&settings.stores)
        .await
        .with_context(|| {
            format!(
                "cannot set up Cassandra ({})",
                cassandra_settings(&settings.stores)
            )
        })?;
    tracing::info!(keyspace = cassandra.keyspace(), "stores ready");
    let profiles = ProfileStores::new(redis.clone(), cassandra.clone(), metrics.clone())
        .await
        .context("cannot prepare the device profile writes")?;
    let refresh_task = trigger::start(
        refresher(&settings, &producer, &redis, &profiles, &metrics)?,
        &settings.kafka,
        settings.refresh.interval,
        shutdown.clone(),
    )?;
    let get_server = GetServer::new(
        &settings.kafka,
        settings.serve.clone(),
        producer.clone(),
        &redis,
        CacheKeys::new(&settings.stores.environment_name),
        metrics.clone(),
    )?;
    let get_task = tokio::spawn(Arc::new(get_server).run(shutdown.clone()));
    let profile_task = tokio::spawn(
        profile_pipeline(&settings, &producer, &profiles, &redis, &metrics)?.run(shutdown.clone()),
    );

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
    refresh_task.await.context("refresh task")?;
    // Before the flush below: every reply of the requests in flight is then delivered.
    get_task.await.context("cache request task")?;
    // Also before the flush: its dead letters are then delivered and its offsets committed.
    profile_task.await.context("device profile task")?;
    if let Err(e) = producer.flush(FLUSH_TIMEOUT) {
        tracing::warn!(error = %e, "producer did not deliver everything before shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The device profile push, consuming in the service's group.
/// The settings a Cassandra start-up error names: the contact points, and the credential and
/// TLS settings when they are in use.
fn cassandra_settings(stores: &StoreSettings) -> String {
    let mut names = vec!["CASSANDRA_NODES"];
    if stores.cassandra_credentials.is_some() {
        names.extend(["CASSANDRA_USERNAME", "CASSANDRA_PASSWORD"]);
    }
    if let Some(tls) = &stores.cassandra_tls {
        names.push("CASSANDRA_TLS");
        if tls.ca_file.is_some() {
            names.push("CASSANDRA_TLS_CA_FILE");
        }
    }
    names.join(", ")
}

fn profile_pipeline(
    settings: &RunSettings,
    producer: &FutureProducer,
    profiles: &ProfileStores,
    redis: &RedisStore,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<ProfilePipeline> {
    let topics = &settings.kafka.topics;
    Ok(ProfilePipeline {
        consumer: AtLeastOnceConsumer::subscribe(&settings.kafka, &topics.profile_updates)?,
        stores: profiles.clone(),
        dead_letters: Arc::new(KafkaDeadLetters::new(producer.clone(), &topics.profile_dlq)),
        metrics: metrics.clone(),
        settings: PipelineSettings::default(),
        cache: LastContactPusher::new(redis, CacheKeys::new(&settings.stores.environment_name)),
    })
}

/// The customer cache refresh with its API clients, sharing the service's producer, Redis
/// connection, profile stores and metrics.
fn refresher(
    settings: &RunSettings,
    producer: &FutureProducer,
    redis: &RedisStore,
    profiles: &ProfileStores,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Refresher> {
    Ok(Refresher {
        hawkeye: HawkeyeClient::new(&settings.hawkeye, metrics.clone())
            .context("cannot set up the Hawkeye client")?,
        bruin: BruinClient::new(&settings.bruin, metrics.clone())
            .context("cannot set up the Bruin client")?,
        profiles: profiles.clone(),
        redis: redis.connection(),
        keys: CacheKeys::new(&settings.stores.environment_name),
        settings: settings.refresh.clone(),
        metrics: metrics.clone(),
        notifier: Notifier::new(
            producer.clone(),
            &settings.kafka.topics.notifications,
            &settings.stores.environment_name,
        ),
        cache: LastContactPusher::new(redis, CacheKeys::new(&settings.stores.environment_name)),
    })
}
