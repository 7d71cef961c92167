//! A reader polling the live cache and its meta while a refresh replaces the cache with a
//! changed fleet sees the old cache or the new one, each with its own generation, never a mix.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hawkeye_customer_cache::cache::keys::CacheKeys;
use hawkeye_customer_cache::stores::redis::RedisConnection;
use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::sim::SimConfig;
use hawkeye_devtools::testkit::cache_fixture::redis_connection;
use hawkeye_devtools::testkit::refresh::{
    entry_set, monitorable, refresh_env, start_sim, Notifications,
};
use hawkeye_devtools::testkit::service::binary;

const RUN: Duration = Duration::from_secs(120);

/// One consistent read of the live hash (as a set of entries) and the meta generation.
async fn observe(
    redis: &mut RedisConnection,
    keys: &CacheKeys,
) -> (Option<String>, BTreeSet<String>) {
    let (live, generation): (Vec<(String, String)>, Option<String>) = redis::pipe()
        .atomic()
        .hgetall(keys.live())
        .hget(keys.meta(), "generation")
        .query_async(redis)
        .await
        .expect("MULTI HGETALL HGET");
    let entries = live
        .into_iter()
        .map(|(_, text)| {
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap()
                .to_string()
        })
        .collect();
    (generation, entries)
}

#[tokio::test]
async fn readers_see_the_old_or_the_new_cache_never_a_mix() {
    let old_sim = start_sim(SimConfig {
        seed: 4301,
        devices: 300,
        ..SimConfig::default()
    })
    .await;
    let env = refresh_env(&old_sim);
    let keys = CacheKeys::new(&env["ENVIRONMENT_NAME"]);
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    Notifications::subscribe(&env)
        .wait_for(&mut service, "refresh_succeeded", RUN, |_| true)
        .await;
    assert!(service.terminate().await.unwrap().success());
    let mut redis = redis_connection().await;
    let (old_generation, old_set) = observe(&mut redis, &keys).await;
    assert_eq!(old_set, entry_set(&old_sim.expected_cache(&monitorable())));

    // The same environment, now facing a different fleet with slow Bruin answers.
    let new_sim = start_sim(SimConfig {
        seed: 4302,
        devices: 300,
        latency_ms: 5,
        ..SimConfig::default()
    })
    .await;
    let new_set = entry_set(&new_sim.expected_cache(&monitorable()));
    assert!(old_set.is_disjoint(&new_set));
    // Its own topics, the same customer cache.
    let mut new_env = refresh_env(&new_sim);
    new_env.insert("ENVIRONMENT_NAME".into(), env["ENVIRONMENT_NAME"].clone());

    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn({
        let (stop, keys, mut redis) = (stop.clone(), keys.clone(), redis.clone());
        async move {
            let mut seen = Vec::new();
            loop {
                // One more read after the stop, so the last state (after the publish) is
                // always seen, however the reader and the test were scheduled.
                let stopping = stop.load(Ordering::SeqCst);
                let observation = observe(&mut redis, &keys).await;
                if seen.last() != Some(&observation) {
                    seen.push(observation);
                }
                if stopping {
                    break seen;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let mut service = ServiceProcess::start(binary(), new_env.clone()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    Notifications::subscribe(&new_env)
        .wait_for(&mut service, "refresh_succeeded", RUN, |_| true)
        .await;
    stop.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();

    let new_generation = observe(&mut redis, &keys).await.0;
    assert_ne!(new_generation, old_generation);
    let states: Vec<&str> = seen
        .iter()
        .map(|(generation, entries)| {
            if *generation == old_generation && *entries == old_set {
                "old"
            } else if *generation == new_generation && *entries == new_set {
                "new"
            } else {
                panic!(
                    "a reader saw generation {generation:?} with {} entries: neither the old \
                     ({} entries) nor the new ({} entries) cache",
                    entries.len(),
                    old_set.len(),
                    new_set.len()
                )
            }
        })
        .collect();
    assert_eq!(states, ["old", "new"]);
    assert!(service.terminate().await.unwrap().success());
}
