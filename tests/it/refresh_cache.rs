//! A refresh against the simulator builds exactly the cache the rules of `CONTRACT.md` §4 give
//! for the seeded fleet, upserts every kept device into both profile stores, and tells
//! operators about it (`refresh_succeeded`, `multiple_inventories`); the `refresh` command
//! triggers another run whose notification echoes its request_id.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use hawkeye_customer_cache::cache::keys::CacheKeys;
use hawkeye_devtools::sim::SimConfig;
use hawkeye_devtools::testkit::cache_fixture::redis_connection;
use hawkeye_devtools::testkit::cassandra_session;
use hawkeye_devtools::testkit::refresh::{
    entry_set, live_entry_set, monitorable, refresh_env, start_sim, start_with_notifications,
    trigger_refresh,
};
use redis::AsyncCommands;
use serde_json::Value;

const RUN: Duration = Duration::from_secs(120);

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[tokio::test]
async fn a_refresh_builds_the_expected_cache_and_device_profiles() {
    let sim = start_sim(SimConfig {
        seed: 4101,
        devices: 300,
        page_limit: 40,
        multiple_inventories_ratio: 0.05,
        ..SimConfig::default()
    })
    .await;
    let env = refresh_env(&sim);
    let (mut service, mut notifications) = start_with_notifications(&env).await;

    let succeeded = notifications
        .wait_for(&mut service, "refresh_succeeded", RUN, |_| true)
        .await;
    let expected = sim.expected_cache(&monitorable());
    assert!(expected.len() > 100, "the fleet keeps devices");
    assert_eq!(succeeded["devices"], expected.len());
    assert_eq!(succeeded["probes"], 300);
    assert_eq!(succeeded["environment"], env["ENVIRONMENT_NAME"].as_str());
    assert!(succeeded.get("request_id").is_none(), "{succeeded}");

    let keys = CacheKeys::new(&env["ENVIRONMENT_NAME"]);
    let mut redis = redis_connection().await;
    assert_eq!(
        live_entry_set(&mut redis, &keys).await,
        entry_set(&expected)
    );
    let meta: HashMap<String, String> = redis.hgetall(keys.meta()).await.unwrap();
    assert_eq!(meta["devices"], expected.len().to_string());
    assert!(!meta["generation"].is_empty() && !meta["refreshed_at"].is_empty());

    let multiple = notifications
        .wait_for(&mut service, "multiple_inventories", RUN, |_| true)
        .await;
    let reported: BTreeSet<String> = multiple["serials"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(serial, clients)| {
            assert!(clients.as_array().unwrap().len() > 1, "{serial}: {clients}");
            serial.clone()
        })
        .collect();
    let expected_multiple: BTreeSet<String> =
        sim.expected_multiple_inventories().into_iter().collect();
    assert!(!expected_multiple.is_empty());
    assert_eq!(reported, expected_multiple);

    assert_profiles_stored(&env, &expected).await;

    let request_id = trigger_refresh(&env).await;
    let echoed = notifications
        .wait_for(&mut service, "refresh_succeeded", RUN, |n| {
            n["request_id"] == request_id.as_str()
        })
        .await;
    assert_eq!(echoed["request_ids"], serde_json::json!([request_id]));
    assert_eq!(
        live_entry_set(&mut redis, &keys).await,
        entry_set(&expected)
    );

    let status = service.terminate().await.unwrap();
    assert!(status.success(), "{}", service.log.join("\n"));
    assert!(
        service
            .log
            .iter()
            .any(|l| l.contains("refresh succeeded") && l.contains("300 probes")),
        "a readable summary per run: {}",
        service.log.join("\n")
    );
}

/// Every kept device is in the Redis profile hash and the Cassandra row with its Hawkeye fields.
async fn assert_profiles_stored(env: &HashMap<String, String>, expected: &[Value]) {
    let mut redis = redis_connection().await;
    let session = cassandra_session().await;
    let query = format!(
        "SELECT serial_number, probe_id, probe_uid, client_id, site_id, management_status \
         FROM {}.device_profile WHERE device_id = ?",
        env["CASSANDRA_KEYSPACE"]
    );
    for entry in expected {
        let serial = entry["serial_number"].as_str().unwrap();
        let client = &entry["bruin_client_info"];
        let hash: HashMap<String, String> = redis
            .hgetall(format!("{}{serial}", env["REDIS_DEVICE_KEY_PREFIX"]))
            .await
            .unwrap();
        assert_eq!(
            hash.get("serial_number").map(String::as_str),
            Some(serial),
            "{hash:?}"
        );
        assert_eq!(hash["probe_id"], text(&entry["probe_id"]));
        assert_eq!(hash["probe_uid"], text(&entry["probe_uid"]));
        assert_eq!(hash["probe_group"], text(&entry["probe_group"]));
        assert_eq!(hash["device_type_name"], text(&entry["device_type_name"]));
        assert_eq!(hash["client_name"], text(&client["client_name"]));
        assert_eq!(hash["client_id"], text(&client["client_id"]));
        assert_eq!(hash["last_contact"], text(&entry["last_contact"]));
        assert!(
            monitorable().contains(&hash["management_status"]),
            "{hash:?}"
        );

        type Row = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<String>,
        );
        let (row_serial, probe_id, probe_uid, client_id, site_id, status) = session
            .query_unpaged(query.as_str(), (serial,))
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .single_row::<Row>()
            .unwrap_or_else(|e| panic!("no device_profile row for {serial}: {e}"));
        assert_eq!(row_serial.as_deref(), Some(serial));
        assert_eq!(probe_id, Some(text(&entry["probe_id"])));
        assert_eq!(probe_uid, Some(text(&entry["probe_uid"])));
        assert_eq!(client_id, client["client_id"].as_i64());
        assert_eq!(site_id, client["site_id"].as_i64());
        assert_eq!(status.as_ref(), Some(&hash["management_status"]));
    }
}
