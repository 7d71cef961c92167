//! Device profile events create and update the device in Redis and Cassandra (`CONTRACT.md`
//! §3): every field lands under the names readers expect, absent / "" / null / {} values keep
//! what is stored, numbers keep their JSON text, special characters survive, and several
//! events of one device merge.

use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::{
    cassandra_row, eventually, produce_json, producer, redis_hash,
};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use hawkeye_devtools::testkit::{cassandra_session, unique};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
const V1: i64 = 1_650_000_000_000;

/// How `SELECT JSON` renders a timestamp of `epoch_ms`.
fn cql_timestamp(epoch_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(epoch_ms)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S%.3fZ")
        .to_string()
}

#[tokio::test]
async fn events_create_update_and_merge_devices_in_both_stores() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let session = cassandra_session().await;
    let producer = producer();
    let device = format!("{} ü dev", unique("d"));

    produce_json(&producer, &env, &json!({
        "device_id": format!("  {device} "),
        "country_code": "IN", "country": "India", "state_code": 29, "state": "Karnataka's",
        "city": "New  Delhi", "district_custom": "ಬೆಂಗಳೂರು", "state_custom": "s c",
        "state_code_custom": 29.0, "user_declared_state": "Goa", "user_declared_district": "North Goa",
        "fcm_token": "tok:1", "producer_id": "registry",
        "uaspec": {"agent": "Chrome", "version": "120"},
        "device_spec": "{\"os\":\"Android\",\"make\":\"Acme\"}",
        "first_access": 1_600_000_000_000_i64, "api_last_updated_on": V1.to_string(),
        "last_contact": "2020-11-05T13:57:07Z", "unknown_field": [1]
    })).await;

    let hash = eventually(WAIT, "the device hash", || async {
        let hash = redis_hash(&env, &device).await;
        (!hash.is_empty()).then_some(hash)
    })
    .await;
    let expected: Vec<(&str, String)> = vec![
        ("country_code", "IN".into()),
        ("country", "India".into()),
        ("state_code", "29".into()),
        ("state", "Karnataka's".into()),
        ("city", "New  Delhi".into()),
        ("district_custom", "ಬೆಂಗಳೂರು".into()),
        ("state_custom", "s c".into()),
        ("state_code_custom", "29.0".into()),
        ("user_declared_state", "Goa".into()),
        ("user_declared_district", "North Goa".into()),
        ("user_declared_on", V1.to_string()),
        ("fcm_token", "tok:1".into()),
        ("producer_id", "registry".into()),
        ("uaspec", r#"{"agent":"Chrome","version":"120"}"#.into()),
        ("devicespec", r#"{"make":"Acme","os":"Android"}"#.into()),
        ("firstaccess", "1600000000000".into()),
        ("api_last_updated_on", V1.to_string()),
        ("last_contact", "2020-11-05T13:57:07Z".into()),
    ];
    for (field, value) in &expected {
        assert_eq!(
            hash.get(*field),
            Some(value),
            "Redis field {field}: {hash:?}"
        );
    }
    assert_eq!(
        hash.len(),
        expected.len(),
        "only the fields readers expect: {hash:?}"
    );

    let row = eventually(WAIT, "the device_profile row", || {
        cassandra_row(&session, &env, &device)
    })
    .await;
    assert_eq!(row["state"], "Karnataka's");
    assert_eq!(row["district_custom"], "ಬೆಂಗಳೂರು");
    assert_eq!(row["state_code"], "29");
    assert_eq!(row["uaspec"], json!({"agent": "Chrome", "version": "120"}));
    assert_eq!(row["device_spec"], json!({"make": "Acme", "os": "Android"}));
    assert_eq!(row["first_access"], cql_timestamp(1_600_000_000_000));
    assert_eq!(row["api_last_updated_on"], cql_timestamp(V1));
    assert_eq!(row["user_declared_on"], cql_timestamp(V1));
    assert_eq!(row["last_contact"], cql_timestamp(1_604_584_627_000));

    // An update with empty values changes only the city; two more events of the same device
    // merge: each sets its own field.
    let v2 = V1 + 1000;
    produce_json(
        &producer,
        &env,
        &json!({
            "device_id": device, "api_last_updated_on": v2, "city": "Mysuru", "state": "",
            "country": null, "uaspec": {}, "device_spec": "", "fcm_token": "", "first_access": ""
        }),
    )
    .await;
    produce_json(
        &producer,
        &env,
        &json!({"device_id": device, "api_last_updated_on": v2 + 1, "producer_id": "p2"}),
    )
    .await;
    produce_json(
        &producer,
        &env,
        &json!({"device_id": device, "api_last_updated_on": v2 + 2, "fcm_token": "tok:2"}),
    )
    .await;

    let hash = eventually(WAIT, "the merged update in Redis", || async {
        let hash = redis_hash(&env, &device).await;
        (hash.get("fcm_token").map(String::as_str) == Some("tok:2")).then_some(hash)
    })
    .await;
    assert_eq!(hash["city"], "Mysuru");
    assert_eq!(hash["producer_id"], "p2");
    assert_eq!(hash["state"], "Karnataka's");
    assert_eq!(hash["country"], "India");
    assert_eq!(hash["uaspec"], r#"{"agent":"Chrome","version":"120"}"#);
    assert_eq!(hash["devicespec"], r#"{"make":"Acme","os":"Android"}"#);
    assert_eq!(hash["firstaccess"], "1600000000000");
    assert_eq!(hash["user_declared_on"], V1.to_string());
    assert_eq!(hash["api_last_updated_on"], (v2 + 2).to_string());

    let row = eventually(WAIT, "the merged update in Cassandra", || async {
        let row = cassandra_row(&session, &env, &device).await?;
        (row["fcm_token"] == "tok:2").then_some(row)
    })
    .await;
    assert_eq!(row["city"], "Mysuru");
    assert_eq!(row["producer_id"], "p2");
    assert_eq!(row["state"], "Karnataka's");
    assert_eq!(row["country"], "India");
    assert_eq!(row["uaspec"], json!({"agent": "Chrome", "version": "120"}));
    assert_eq!(row["first_access"], cql_timestamp(1_600_000_000_000));
    assert_eq!(row["api_last_updated_on"], cql_timestamp(v2 + 2));
    assert_eq!(row["client_id"], Value::Null);
    service.terminate().await.unwrap();
}
