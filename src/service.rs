//! `run`: connects to Kafka, Redis and Cassandra, starts every task, and on shutdown lets them
//! finish their in-flight work, commit and flush before returning.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use rdkafka::producer::Producer;
use tokio_util::sync::CancellationToken;

use crate::apis::{BruinClient, HawkeyeClient};
use crate::cache::keys::CacheKeys;
use crate::cache::last_contact::LastContactPusher;
use crate::cache::refresh::Refresher;
use crate::cache::serve::GetServer;
use crate::cache::trigger::RefreshTask;
use crate::config::{RunSettings, StoreSettings};
use crate::kafka;
use crate::kafka::dead_letters::KafkaDeadLetters;
use crate::kafka::ingress::{Ingress, Role};
use crate::kafka::notifications::Notifier;
use crate::kafka::ServiceProducer;
use crate::observe::{http, Metrics};
use crate::profile::ProfileUpdate;
use crate::push::pipeline::{PipelineSettings, ProfilePipeline};
use crate::push::LastContactSink;
use crate::stores::{CassandraStore, ProfileStores, RedisStore, StoreError};
use crate::supervisor::Supervisor;

/// How long shutdown waits for the producer to deliver what it still holds.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(settings: RunSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new()?);
    let producer = kafka::reporting_producer(&settings.kafka, metrics.clone())?;
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
    // One line naming what to check, and the error once: as a chain, its text would repeat
    // once per layer that wraps the driver's error.
    let redis = RedisStore::connect(&settings.stores)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", crate::stores::redis::connect_failure(&e)))?;
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
    let cache_keys = CacheKeys::new(&settings.stores.environment_name);
    // The one place the two jobs meet: the push tells the cache of newer last contacts.
    let last_contacts = Arc::new(LastContactPusher::new(&redis, cache_keys.clone()));

    let refresh = RefreshTask::new(
        refresher(&settings, &producer, &redis, &profiles, &metrics)?,
        &settings.kafka,
        settings.refresh.interval,
    )
    .await?;
    let get_server = GetServer::new(
        &settings.kafka,
        settings.serve.clone(),
        producer.clone(),
        &redis,
        cache_keys,
        metrics.clone(),
    )
    .await?;
    let push = ProfilePipeline {
        consumer: Box::new(
            Ingress::subscribe(
                &settings.kafka,
                Role::Profiles,
                &topics.profile_updates,
                metrics.clone(),
            )
            .await?,
        ),
        stores: Arc::new(profiles.clone()),
        dead_letters: Arc::new(KafkaDeadLetters::new(producer.clone(), &topics.profile_dlq)),
        metrics: metrics.clone(),
        settings: PipelineSettings {
            max_future: settings.push.max_future,
            ..PipelineSettings::default()
        },
        last_contacts,
    };
    let (_, http_server) = http::serve(
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

    let mut tasks = Supervisor::new(shutdown.clone());
    tasks.spawn("http", http_server);
    tasks.spawn("refresh", refresh.run(shutdown.clone()));
    tasks.spawn("cache requests", Arc::new(get_server).run(shutdown.clone()));
    tasks.spawn("device profile push", push.run(shutdown.clone()));
    tracing::info!("service running");
    let outcome = tasks.wait().await;
    // After every task drained: the replies, dead letters and notifications they sent are
    // then all delivered before the process ends.
    if let Err(e) = producer.flush(FLUSH_TIMEOUT) {
        tracing::warn!(error = %e, "producer did not deliver everything before shutdown");
    }
    tracing::info!("stopped");
    outcome
}

/// The settings a Cassandra start-up error names: the contact points, and the credential and
/// TLS settings when they are in use.
fn cassandra_settings(stores: &StoreSettings) -> String {
    let mut names = vec!["CASSANDRA_NODES"];
    if stores.cassandra_local_dc.is_some() {
        names.push("CASSANDRA_LOCAL_DC");
    }
    if stores.cassandra_credentials.login().is_some() {
        names.extend(["CASSANDRA_USERNAME", "CASSANDRA_PASSWORD"]);
    }
    if stores.cassandra_tls.enabled {
        names.push("CASSANDRA_TLS");
        if stores.cassandra_tls.ca_file.is_some() {
            names.push("CASSANDRA_TLS_CA_FILE");
        }
    }
    names.join(", ")
}

/// The customer cache refresh with its API clients, sharing the service's producer, Redis
/// connection, profile stores and metrics.
fn refresher(
    settings: &RunSettings,
    producer: &ServiceProducer,
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

/// The customer cache takes the push's stored `last_contact`s: wired here, so that neither job
/// imports the other.
impl LastContactSink for LastContactPusher {
    fn push<'a>(&'a self, updates: &'a [ProfileUpdate]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(LastContactPusher::push(self, updates))
    }
}
