//! Order independence (`CONTRACT.md` §3): whatever order the events of a device arrive in, and
//! however often they are replayed, both stores end in the same state: every field from the
//! newest event that carried it, `firstaccess` the earliest ever seen, `user_declared_on` the
//! first declaration, `last_contact` the latest instant.

use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::{
    cassandra_row, eventually, produce_json, producer, redis_hash,
};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use hawkeye_devtools::testkit::{cassandra_session, unique};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const DEVICES: usize = 8;
const VERSIONS: i64 = 5;
const BASE: i64 = 1_700_000_000_000;

/// Event `k` (1..=VERSIONS) of a device. The earliest first access comes with version 3, the
/// latest last contact with version 2, declarations with versions 2 and 4.
fn event(device: &str, k: i64) -> Value {
    let mut event = json!({
        "device_id": device,
        "api_last_updated_on": BASE + k * 1000,
        "city": format!("city {k}"),
        "first_access": BASE - [10, 40, 50, 30, 20][(k - 1) as usize] * 1000,
        "last_contact": format!("2024-01-0{}T00:00:00Z", [3, 9, 1, 5, 4][(k - 1) as usize]),
    });
    if k % 2 == 1 {
        event["state"] = json!(format!("state {k}"));
    }
    if k == 2 || k == 4 {
        event["user_declared_state"] = json!(format!("declared {k}"));
    }
    event
}

/// The device's order of versions: each device gets another permutation.
fn order(index: usize) -> Vec<i64> {
    let mut versions: Vec<i64> = (1..=VERSIONS).collect();
    versions.rotate_left(index % VERSIONS as usize);
    if index % 2 == 1 {
        versions.reverse();
    }
    versions
}

#[tokio::test]
async fn out_of_order_and_replayed_events_end_in_the_same_state() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let session = cassandra_session().await;
    let producer = producer();
    let devices: Vec<String> = (0..DEVICES).map(|_| unique("order")).collect();

    // Wave 1: the newest half, so later waves are older than what is stored (not merely
    // merged within one batch). Wave 2: every event in the device's own order. Wave 3: a
    // replay of everything, then a marker that shows the device's partition got this far.
    for (index, device) in devices.iter().enumerate() {
        for k in [VERSIONS, VERSIONS - 1] {
            produce_json(&producer, &env, &event(device, k)).await;
        }
        for k in order(index) {
            produce_json(&producer, &env, &event(device, k)).await;
        }
    }
    for device in &devices {
        for k in 1..=VERSIONS {
            produce_json(&producer, &env, &event(device, k)).await;
        }
        let marker =
            json!({"device_id": device, "api_last_updated_on": 1, "producer_id": "marker"});
        produce_json(&producer, &env, &marker).await;
    }

    for device in &devices {
        let hash = eventually(WAIT, "the marker in Redis", || async {
            let hash = redis_hash(&env, device).await;
            hash.contains_key("producer_id").then_some(hash)
        })
        .await;
        assert_eq!(
            hash["city"],
            format!("city {VERSIONS}"),
            "{device}: {hash:?}"
        );
        assert_eq!(hash["state"], format!("state {VERSIONS}"));
        assert_eq!(hash["user_declared_state"], "declared 4");
        assert_eq!(hash["user_declared_on"], (BASE + 2000).to_string());
        assert_eq!(hash["firstaccess"], (BASE - 50_000).to_string());
        assert_eq!(hash["last_contact"], "2024-01-09T00:00:00Z");
        assert_eq!(
            hash["api_last_updated_on"],
            (BASE + VERSIONS * 1000).to_string()
        );

        let row = eventually(WAIT, "the marker in Cassandra", || async {
            let row = cassandra_row(&session, &env, device).await?;
            (row["producer_id"] == "marker").then_some(row)
        })
        .await;
        assert_eq!(row["city"], format!("city {VERSIONS}"), "{device}: {row}");
        assert_eq!(row["state"], format!("state {VERSIONS}"));
        assert_eq!(row["user_declared_state"], "declared 4");
        assert_eq!(row["user_declared_on"], "2023-11-14 22:13:22.000Z");
        assert_eq!(row["first_access"], "2023-11-14 22:12:30.000Z");
        assert_eq!(row["last_contact"], "2024-01-09 00:00:00.000Z");
    }
    service.terminate().await.unwrap();
}
