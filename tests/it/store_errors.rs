//! Store errors keep the driver's kind against the real stack: a Redis key of the wrong type
//! is a permanent failure of the write, a store that refuses connections a transient one.

use std::sync::Arc;

use hawkeye_customer_cache::bench::store_settings;
use hawkeye_customer_cache::observe::Metrics;
use hawkeye_customer_cache::profile::ProfileUpdate;
use hawkeye_customer_cache::stores::{CassandraStore, ProfileStores, RedisStore};
use redis::AsyncCommands;

use crate::common::service::isolated_env;
use crate::common::{free_port, unique};

#[tokio::test]
async fn a_device_key_holding_a_string_is_a_permanent_redis_failure() {
    let settings = store_settings(&isolated_env()).unwrap();
    let redis = RedisStore::connect(&settings).await.unwrap();
    let cassandra = CassandraStore::connect(&settings).await.unwrap();
    let metrics = Arc::new(Metrics::new().unwrap());
    let stores = ProfileStores::new(redis.clone(), cassandra, metrics)
        .await
        .unwrap();
    let device = unique("wrongtype");
    let key = redis.device_key(&device);
    let mut connection = redis.connection();
    let () = connection.set(&key, "not a hash").await.unwrap();

    let update = ProfileUpdate {
        device_id: device,
        version: 1_650_000_000_000,
        client_id: Some(9994),
        ..ProfileUpdate::default()
    };
    let error = stores.upsert(&[update]).await.unwrap_err();
    let text = error.to_string();
    assert!(text.starts_with("redis: "), "{text}");
    assert!(text.contains("WRONGTYPE"), "{text}");
    assert!(!error.is_transient(), "{text}");
    let () = connection.del(&key).await.unwrap();
}

#[tokio::test]
async fn a_store_refusing_connections_is_a_transient_failure() {
    let closed = format!("127.0.0.1:{}", free_port());
    let mut env = isolated_env();
    env.insert("REDIS_URL".into(), format!("redis://{closed}/0"));
    env.insert("CASSANDRA_NODES".into(), closed);
    let settings = store_settings(&env).unwrap();

    let Err(error) = RedisStore::connect(&settings).await else {
        panic!("connected to Redis on a closed port");
    };
    let text = error.to_string();
    assert!(text.starts_with("redis: "), "{text}");
    assert!(error.is_transient(), "{text}");

    let Err(error) = CassandraStore::connect(&settings).await else {
        panic!("connected to Cassandra on a closed port");
    };
    let text = error.to_string();
    assert!(text.starts_with("cassandra: cannot connect: "), "{text}");
    assert!(error.is_transient(), "{text}");
}
