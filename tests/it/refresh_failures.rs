//! A refresh that cannot get every probe, or cannot check too many devices in Bruin, fails
//! with `refresh_failed` and leaves the previous cache exactly as it was; below the error
//! ratio a refresh succeeds without the devices that could not be checked.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use hawkeye_customer_cache::cache::keys::CacheKeys;
use hawkeye_customer_cache::stores::redis::RedisConnection;
use hawkeye_devtools::sim::SimConfig;
use hawkeye_devtools::testkit::cache_fixture::{entry, CacheFixture};
use hawkeye_devtools::testkit::refresh::{
    entry_set, live_entry_set, monitorable, refresh_env, start_sim, start_with_notifications,
    trigger_refresh,
};
use redis::AsyncCommands;
use serde_json::Value;

const RUN: Duration = Duration::from_secs(180);

/// The live hash and meta exactly as stored.
async fn snapshot(
    redis: &mut RedisConnection,
    keys: &CacheKeys,
) -> (HashMap<String, String>, HashMap<String, String>) {
    let live: HashMap<String, String> = redis.hgetall(keys.live()).await.unwrap();
    let meta: HashMap<String, String> = redis.hgetall(keys.meta()).await.unwrap();
    (live, meta)
}

/// A service whose environment already holds a cache from an earlier refresh.
async fn with_previous_cache(
    env: &HashMap<String, String>,
) -> (
    CacheFixture,
    (HashMap<String, String>, HashMap<String, String>),
) {
    let cache = CacheFixture::new(env).await;
    cache
        .publish(&[
            entry("OLD1", "2020-11-05T13:57:07Z"),
            entry("OLD2", "2021-01-01T00:00:00Z"),
        ])
        .await;
    let mut redis = cache.redis.clone();
    let before = snapshot(&mut redis, &cache.keys).await;
    assert_eq!(before.0.len(), 2);
    (cache, before)
}

#[tokio::test]
async fn a_page_that_always_fails_fails_the_refresh_and_keeps_the_cache() {
    let sim = start_sim(SimConfig {
        seed: 4201,
        devices: 120,
        page_limit: 30,
        ..SimConfig::default()
    })
    .await;
    sim.fail_probe_page(Some(2));
    let mut env = refresh_env(&sim);
    env.insert("HAWKEYE_MAX_ATTEMPTS".into(), "2".into());
    let (cache, before) = with_previous_cache(&env).await;
    let (mut service, mut notifications) = start_with_notifications(&env).await;

    let failed = notifications
        .wait_for(&mut service, "refresh_failed", RUN, |_| true)
        .await;
    assert_eq!(failed["attempts"], 2, "{failed}");
    assert!(
        failed["reason"].as_str().unwrap().contains("probes"),
        "{failed}"
    );
    let mut redis = cache.redis.clone();
    assert_eq!(snapshot(&mut redis, &cache.keys).await, before);
    assert!(
        sim.stats().inventory_calls == 0,
        "no device is checked from a partial list"
    );

    // Once the page heals, the next trigger replaces the cache.
    sim.fail_probe_page(None);
    let request_id = trigger_refresh(&env).await;
    notifications
        .wait_for(&mut service, "refresh_succeeded", RUN, |n| {
            n["request_id"] == request_id.as_str()
        })
        .await;
    let expected = sim.expected_cache(&monitorable());
    assert_eq!(
        live_entry_set(&mut redis, &cache.keys).await,
        entry_set(&expected)
    );
    cache.remove().await;
}

#[tokio::test]
async fn hawkeye_down_fails_after_the_configured_attempts_and_keeps_the_cache() {
    let sim = start_sim(SimConfig {
        seed: 4202,
        devices: 50,
        ..SimConfig::default()
    })
    .await;
    sim.set_hawkeye_down(true);
    let mut env = refresh_env(&sim);
    env.insert("HAWKEYE_MAX_ATTEMPTS".into(), "3".into());
    let (cache, before) = with_previous_cache(&env).await;
    let (mut service, mut notifications) = start_with_notifications(&env).await;

    let failed = notifications
        .wait_for(&mut service, "refresh_failed", RUN, |_| true)
        .await;
    assert_eq!(failed["attempts"], 3, "{failed}");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("after 3 attempts"),
        "{failed}"
    );
    assert_eq!(failed["environment"], env["ENVIRONMENT_NAME"].as_str());
    let mut redis = cache.redis.clone();
    assert_eq!(snapshot(&mut redis, &cache.keys).await, before);
    assert!(notifications.of("refresh_succeeded").is_empty());
    let metrics = service.metrics().await.unwrap();
    assert!(
        metrics.contains(r#"hawkeye_customer_cache_refresh_runs_total{outcome="failed"} 1"#),
        "{metrics}"
    );
    cache.remove().await;
}

/// A fleet where `share` of the contacted devices fail in Bruin, a maximum error ratio of
/// 10 %, a previous cache; returns what the start-up refresh notified and the cache after it.
struct BruinErrorRun {
    notification: Value,
    failing: BTreeSet<String>,
    expected: Vec<Value>,
    before: (HashMap<String, String>, HashMap<String, String>),
    after: (HashMap<String, String>, HashMap<String, String>),
}

async fn refresh_with_bruin_errors(seed: u64, share: f64) -> BruinErrorRun {
    let sim = start_sim(SimConfig {
        seed,
        devices: 200,
        ..SimConfig::default()
    })
    .await;
    let failing: BTreeSet<String> = sim.fail_bruin_serials(share).into_iter().collect();
    let mut env = refresh_env(&sim);
    env.insert("BRUIN_MAX_ERROR_RATIO".into(), "0.1".into());
    let (cache, before) = with_previous_cache(&env).await;
    let (mut service, mut notifications) = start_with_notifications(&env).await;
    let notification = notifications.wait_for_run(&mut service, RUN).await;
    let mut redis = cache.redis.clone();
    let after = snapshot(&mut redis, &cache.keys).await;
    cache.remove().await;
    BruinErrorRun {
        notification,
        failing,
        expected: sim.expected_cache(&monitorable()),
        before,
        after,
    }
}

#[tokio::test]
async fn bruin_errors_above_the_ratio_fail_the_refresh_and_keep_the_cache() {
    let run = refresh_with_bruin_errors(4203, 0.2).await;
    assert_eq!(
        run.notification["event"], "refresh_failed",
        "{}",
        run.notification
    );
    let reason = run.notification["reason"].as_str().unwrap();
    assert!(reason.contains("could not be checked in Bruin"), "{reason}");
    assert_eq!(run.notification["attempts"], 1);
    assert_eq!(run.after, run.before);
}

#[tokio::test]
async fn bruin_errors_below_the_ratio_leave_out_only_the_failed_devices() {
    let run = refresh_with_bruin_errors(4204, 0.05).await;
    assert_eq!(
        run.notification["event"], "refresh_succeeded",
        "{}",
        run.notification
    );
    let kept: Vec<&Value> = run
        .expected
        .iter()
        .filter(|entry| {
            !run.failing
                .contains(entry["serial_number"].as_str().unwrap())
        })
        .collect();
    assert!(
        kept.len() < run.expected.len(),
        "some failing device would have been kept"
    );
    let stored: BTreeSet<String> = run
        .after
        .0
        .values()
        .map(|text| serde_json::from_str::<Value>(text).unwrap().to_string())
        .collect();
    assert_eq!(stored, entry_set(kept));
    assert_eq!(run.notification["devices"], stored.len());
}
