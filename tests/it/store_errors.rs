//! Store errors keep the driver's kind against the real stack: a Redis key of the wrong type
//! is a permanent failure of the write, a store that refuses connections a transient one.

use std::sync::Arc;

use hawkeye_customer_cache::config::StoreSettings;
use hawkeye_customer_cache::observe::Metrics;
use hawkeye_customer_cache::profile::ProfileUpdate;
use hawkeye_customer_cache::stores::{CassandraStore, ProfileStores, RedisStore};
use hawkeye_devtools::service::free_port;
use hawkeye_devtools::service::isolated_stores;
use hawkeye_devtools::testkit::{stack, unique};
use redis::AsyncCommands;

/// Store settings of the stack with this test's own Redis prefixes.
fn settings() -> StoreSettings {
    StoreSettings {
        cassandra_keyspace: "hcc_test".into(),
        ..isolated_stores(&stack(), &unique("t"))
    }
}

#[tokio::test]
async fn a_device_key_holding_a_string_is_refused_for_good_and_left_alone() {
    let settings = settings();
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
    // Devices before and after it in the same write (one script call holds several devices).
    let (before, after) = (unique("before"), unique("after"));
    let update = |device_id: &str| ProfileUpdate {
        device_id: device_id.to_string(),
        version: 1_650_000_000_000,
        client_id: Some(9994),
        ..ProfileUpdate::default()
    };

    let outcomes = stores
        .upsert(&[update(&before), update(&device), update(&after)])
        .await
        .expect("no transient failure");
    let Err(error) = &outcomes[1] else {
        panic!("the update of a string key was accepted: {outcomes:?}");
    };
    let text = error.to_string();
    assert!(text.starts_with("redis: "), "{text}");
    assert!(text.contains("WRONGTYPE"), "{text}");
    assert!(!error.is_transient(), "{text}");
    let kept: String = connection.get(&key).await.unwrap();
    assert_eq!(kept, "not a hash", "the foreign key is left as it was");
    for (outcome, neighbour) in [(&outcomes[0], &before), (&outcomes[2], &after)] {
        assert!(outcome.is_ok(), "{neighbour}: {outcome:?}");
        let client_id: Option<String> = connection
            .hget(redis.device_key(neighbour), "client_id")
            .await
            .unwrap();
        assert_eq!(client_id.as_deref(), Some("9994"), "{neighbour} written");
    }
    let () = connection.del(&key).await.unwrap();
}

#[tokio::test]
async fn a_store_refusing_connections_is_a_transient_failure() {
    let closed = format!("127.0.0.1:{}", free_port());
    let settings = StoreSettings::new(format!("redis://{closed}/0"), vec![closed.clone()]);

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
