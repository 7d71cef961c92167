//! What the integration tests (`tests/it`) and the fault suite (`tests/faults`) share: the
//! stack's endpoints, unique names, the service binary as they run it, and the helpers of the
//! profile push, the cache requests and the refresh. The helpers panic on failure, as tests do.

pub mod cache_fixture;
pub mod profiles;
pub mod refresh;
pub mod request_reply;
pub mod service;

use crate::service::Stack;

/// Endpoints of the local stack, from the environment `scripts/stack env` prints.
pub fn stack() -> Stack {
    let read = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: integration tests need the local stack; run scripts/test, \
                 or `scripts/stack up && eval \"$(scripts/stack env)\"` before cargo test"
            )
        })
    };
    Stack {
        kafka_brokers: read("KAFKA_BROKERS"),
        redis_url: read("REDIS_URL"),
        cassandra_nodes: read("CASSANDRA_NODES"),
    }
}

/// Seed URLs of the stack's Redis Cluster (`STACK_REDIS_CLUSTER=on`, which `scripts/test`
/// sets), as `scripts/stack env` prints them.
pub fn redis_cluster_url() -> String {
    std::env::var("REDIS_CLUSTER_URL").unwrap_or_else(|_| {
        panic!(
            "REDIS_CLUSTER_URL is not set: the Redis Cluster tests need the stack's Redis Cluster; \
             run scripts/test, or `STACK_REDIS_CLUSTER=on scripts/stack up && eval \"$(scripts/stack env)\"` \
             before cargo test"
        )
    })
}

/// A name no other test (or earlier run) uses: topics, groups, key prefixes, keyspaces.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

pub async fn cassandra_session() -> scylla::client::session::Session {
    let nodes: Vec<String> = stack()
        .cassandra_nodes
        .split(',')
        .map(str::to_string)
        .collect();
    scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&nodes)
        .build()
        .await
        .expect("cannot connect to the stack's Cassandra")
}

pub async fn redis_cluster() -> hawkeye_customer_cache::stores::redis::RedisConnection {
    let redis =
        hawkeye_customer_cache::stores::redis::RedisConnection::connect(&redis_cluster_url())
            .await
            .expect("cannot connect to the stack's Redis Cluster");
    assert!(
        redis.is_cluster(),
        "REDIS_CLUSTER_URL is not a Redis Cluster"
    );
    redis
}
