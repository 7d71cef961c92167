//! The service on a Redis Cluster (`REDIS_URL` = the stack's three seed nodes, detected as a
//! cluster): the push is order-independent for ids holding braces too, with each device's
//! versions hash in its slot; the refresh publishes atomically under its lock, `get` answers
//! from it and a newer `last_contact` is pushed into it; `SCAN` finds keys on every master.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use hawkeye_customer_cache::cache::keys::CacheKeys;
use hawkeye_customer_cache::cache::publish::{self, Generation, PublishError, RefreshLock};
use hawkeye_customer_cache::stores::redis::versions_key;
use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::sim::SimConfig;
use hawkeye_devtools::testkit::profiles::{cassandra_row, eventually, produce_json, producer};
use hawkeye_devtools::testkit::refresh::{
    entry_set, live_entry_set, monitorable, refresh_env, start_sim, start_with_notifications,
};
use hawkeye_devtools::testkit::request_reply::{run_get, serials_after};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use hawkeye_devtools::testkit::{cassandra_session, redis_cluster, redis_cluster_url, unique};
use redis::cluster_routing::Slot;
use redis::AsyncCommands;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(90);
const BASE: i64 = 1_700_000_000_000;

fn on_cluster(mut env: HashMap<String, String>) -> HashMap<String, String> {
    env.insert("REDIS_URL".into(), redis_cluster_url());
    env
}

/// Version `k` of a device: city and state of that version; the earliest first access comes
/// with version 2, the latest last contact with version 1.
fn event(device: &str, k: i64) -> Value {
    json!({
        "device_id": device,
        "api_last_updated_on": BASE + k * 1000,
        "city": format!("city {k}"),
        "first_access": BASE - [30, 50, 10][(k - 1) as usize] * 1000,
        "last_contact": format!("2024-01-0{}T00:00:00Z", [9, 3, 5][(k - 1) as usize]),
    })
}

#[tokio::test]
async fn the_push_on_a_redis_cluster_is_order_independent_for_any_device_id() {
    let mut redis = redis_cluster().await;
    let mut service = ServiceProcess::start(binary(), on_cluster(isolated_env())).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let prefix = env["REDIS_DEVICE_KEY_PREFIX"].clone();
    let run = unique("c");
    let mut devices: Vec<String> = (0..24).map(|n| format!("{run}-{n}")).collect();
    for awkward in ["{a}b", "a}b", "}{", "{}", "x{}y}", "{", "{{z}}"] {
        devices.push(format!("{run}{awkward}"));
    }
    let producer = producer();
    // The newest version first, the others after it: they must not roll it back. Then a
    // marker (the oldest version, a field no other event has) shows the device got this far.
    for device in &devices {
        for k in [3, 1, 2] {
            produce_json(&producer, &env, &event(device, k)).await;
        }
        let marker =
            json!({"device_id": device, "api_last_updated_on": 1, "producer_id": "marker"});
        produce_json(&producer, &env, &marker).await;
    }

    let session = cassandra_session().await;
    for device in &devices {
        let key = format!("{prefix}{device}");
        let hash: HashMap<String, String> = eventually(WAIT, "the marker in Redis", || {
            let mut redis = redis.clone();
            let key = key.clone();
            async move {
                let hash: HashMap<String, String> = redis.hgetall(&key).await.expect("HGETALL");
                hash.contains_key("producer_id").then_some(hash)
            }
        })
        .await;
        assert_eq!(hash["city"], "city 3", "{device:?}: {hash:?}");
        assert_eq!(
            hash["firstaccess"],
            (BASE - 50_000).to_string(),
            "{device:?}"
        );
        assert_eq!(hash["last_contact"], "2024-01-09T00:00:00Z", "{device:?}");
        let versions: HashMap<String, String> =
            redis.hgetall(versions_key(&key)).await.expect("HGETALL");
        assert_eq!(versions["city"], (BASE + 3000).to_string(), "{device:?}");
        assert_eq!(Slot::for_key(versions_key(&key)), Slot::for_key(&key));

        let row = eventually(WAIT, "the marker in Cassandra", || {
            let (session, env) = (&session, &env);
            async move {
                let row = cassandra_row(session, env, device).await?;
                (row["producer_id"] == "marker").then_some(row)
            }
        })
        .await;
        assert_eq!(row["city"], "city 3", "{device:?}: {row:?}");
    }

    // The device hashes are spread over the masters; SCAN lists them from every one.
    let pattern = format!("{}*", prefix.replace('*', "\\*"));
    let found: BTreeSet<String> = redis
        .scan_keys(&pattern, 1000)
        .await
        .expect("SCAN")
        .into_iter()
        .filter(|key| key.starts_with(&prefix))
        .collect();
    let expected: BTreeSet<String> = devices.iter().map(|d| format!("{prefix}{d}")).collect();
    assert_eq!(found, expected);

    let status = service.terminate().await.unwrap();
    assert!(status.success(), "{}", service.log.join("\n"));
}

fn generation(devices: usize) -> Generation {
    Generation {
        id: uuid::Uuid::new_v4().to_string(),
        refreshed_at: "2024-05-01T10:00:00.000Z".into(),
        devices,
    }
}

#[tokio::test]
async fn the_lock_and_the_atomic_publish_hold_on_a_redis_cluster() {
    let mut redis = redis_cluster().await;
    let keys = CacheKeys::new(&unique("cluster_publish"));
    let _: () = redis.hset(keys.live(), "OLD", "{}").await.unwrap();
    let lock = RefreshLock::try_acquire(redis.clone(), &keys)
        .await
        .unwrap()
        .expect("the lock is free");
    assert!(RefreshLock::try_acquire(redis.clone(), &keys)
        .await
        .unwrap()
        .is_none());
    assert!(lock.renew().await.unwrap());

    let entries: Vec<(String, String)> = (0..1500)
        .map(|n| {
            (
                format!("S{n:05}"),
                format!(r#"{{"serial_number":"S{n:05}"}}"#),
            )
        })
        .collect();
    let staging = keys.staging("run1");
    publish::write_staging(redis.clone(), &staging, &entries)
        .await
        .unwrap();
    // One short: the script refuses and the live hash stays as it was.
    let error = publish::publish(&lock, &keys, &staging, &generation(entries.len() + 1))
        .await
        .unwrap_err();
    assert!(matches!(error, PublishError::StagingIncomplete), "{error}");
    let old: Vec<String> = redis.hkeys(keys.live()).await.unwrap();
    assert_eq!(old, ["OLD"]);

    publish::publish(&lock, &keys, &staging, &generation(entries.len()))
        .await
        .unwrap();
    let live: HashMap<String, String> = redis.hgetall(keys.live()).await.unwrap();
    assert_eq!(live.len(), entries.len());
    assert!(!live.contains_key("OLD"));
    let meta: HashMap<String, String> = redis.hgetall(keys.meta()).await.unwrap();
    assert_eq!(meta["devices"], entries.len().to_string());
    let staging_left: bool = redis.exists(&staging).await.unwrap();
    assert!(!staging_left);

    lock.release().await.unwrap();
    let held: bool = redis.exists(keys.lock()).await.unwrap();
    assert!(!held);
    let _: () = redis.del(keys.live()).await.unwrap();
    let _: () = redis.del(keys.meta()).await.unwrap();
}

#[tokio::test]
async fn refresh_get_and_last_contact_pushes_work_on_a_redis_cluster() {
    let sim = start_sim(SimConfig {
        seed: 4113,
        devices: 120,
        page_limit: 50,
        ..SimConfig::default()
    })
    .await;
    let env = on_cluster(refresh_env(&sim));
    let (mut service, mut notifications) = start_with_notifications(&env).await;
    let succeeded = notifications
        .wait_for(&mut service, "refresh_succeeded", WAIT, |_| true)
        .await;
    let expected = sim.expected_cache(&monitorable());
    assert!(expected.len() > 20, "the fleet keeps devices");
    assert_eq!(succeeded["devices"], expected.len());

    let mut redis = redis_cluster().await;
    let keys = CacheKeys::new(&env["ENVIRONMENT_NAME"]);
    assert_eq!(
        live_entry_set(&mut redis, &keys).await,
        entry_set(&expected)
    );
    let mut served = serials_after(&env, &[]).await;
    served.sort();
    let mut serials: Vec<String> = expected
        .iter()
        .map(|entry| entry["serial_number"].as_str().unwrap().to_string())
        .collect();
    serials.sort();
    assert_eq!(served, serials);

    // A newer last contact of a cached device reaches the cache and the next get.
    let serial = &serials[0];
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let event = json!({"device_id": serial, "api_last_updated_on": BASE, "last_contact": now});
    produce_json(&producer(), &env, &event).await;
    let filter = chrono::Utc::now() - chrono::Duration::minutes(1);
    let filter = filter.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let reply = eventually(WAIT, "the pushed last contact in a get", || {
        let (env, filter) = (&env, &filter);
        async move {
            let run = run_get(env, &["--last-contact-filter", filter]).await;
            (run.reply["status"] == 200).then_some(run.reply)
        }
    })
    .await;
    let pushed = reply["body"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["serial_number"] == serial.as_str());
    assert_eq!(
        pushed.map(|entry| &entry["last_contact"]),
        Some(&json!(now)),
        "{reply}"
    );

    let status = service.terminate().await.unwrap();
    assert!(status.success(), "{}", service.log.join("\n"));
}
