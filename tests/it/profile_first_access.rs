//! The earliest `first_access` wins in Cassandra across separate batches, also once the
//! service remembers the cell it wrote (it then leaves out `first_access` cells that cannot
//! win): an earlier value that comes later is still written, a later one changes nothing.

use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::{
    cassandra_row, produce_json, producer, redis_hash, wait_for_city,
};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use hawkeye_devtools::testkit::{cassandra_session, unique};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const VERSION: i64 = 1_700_000_000_000;

#[tokio::test]
async fn an_earlier_first_access_still_wins_after_the_first_one_was_written() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let session = cassandra_session().await;
    let producer = producer();
    let device = unique("first");
    let first_access_in_cassandra = || async {
        let row = cassandra_row(&session, &env, &device)
            .await
            .expect("the device_profile row");
        row["first_access"].as_str().unwrap_or_default().to_string()
    };

    // Each event waits for the one before it, so each is its own batch: Cassandra's cell
    // timestamps decide, not the in-batch merge.
    let event = |first_access: i64, city: &str, version: i64| {
        json!({"device_id": device, "api_last_updated_on": version, "city": city,
               "first_access": first_access})
    };
    produce_json(&producer, &env, &event(VERSION - 10_000, "a", VERSION)).await;
    wait_for_city(&env, &session, &device, "a", WAIT).await;
    assert_eq!(
        first_access_in_cassandra().await,
        "2023-11-14 22:13:10.000Z"
    );

    produce_json(&producer, &env, &event(VERSION - 50_000, "b", VERSION + 1)).await;
    wait_for_city(&env, &session, &device, "b", WAIT).await;
    assert_eq!(
        first_access_in_cassandra().await,
        "2023-11-14 22:12:30.000Z",
        "an earlier first_access coming later is written"
    );

    produce_json(&producer, &env, &event(VERSION - 20_000, "c", VERSION + 2)).await;
    wait_for_city(&env, &session, &device, "c", WAIT).await;
    assert_eq!(
        first_access_in_cassandra().await,
        "2023-11-14 22:12:30.000Z"
    );
}

/// Both stores order first_access in 64 ms steps and keep the later value within a step (what
/// Cassandra does with two cells of one timestamp), so they never disagree on a tie.
#[tokio::test]
async fn first_access_values_of_one_64_ms_step_resolve_alike_in_both_stores() {
    const STEP_START: i64 = 1_700_000_000_000; // a multiple of 64
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let session = cassandra_session().await;
    let producer = producer();
    let device = unique("tie");
    let both_stores = || async {
        let redis = redis_hash(&env, &device).await.remove("firstaccess");
        let row = cassandra_row(&session, &env, &device).await;
        let cassandra = row.map(|row| row["first_access"].as_str().unwrap_or_default().to_string());
        (redis, cassandra)
    };
    let event = |first_access: i64, city: &str, version: i64| {
        json!({"device_id": device, "api_last_updated_on": version, "city": city,
               "first_access": first_access})
    };
    for (first_access, city, kept, kept_text) in [
        (
            STEP_START + 10,
            "a",
            STEP_START + 10,
            "2023-11-14 22:13:20.010Z",
        ),
        (
            STEP_START + 60,
            "b",
            STEP_START + 60,
            "2023-11-14 22:13:20.060Z",
        ),
        (
            STEP_START + 20,
            "c",
            STEP_START + 60,
            "2023-11-14 22:13:20.060Z",
        ),
        (
            STEP_START - 1,
            "d",
            STEP_START - 1,
            "2023-11-14 22:13:19.999Z",
        ),
    ] {
        produce_json(&producer, &env, &event(first_access, city, VERSION)).await;
        wait_for_city(&env, &session, &device, city, WAIT).await;
        assert_eq!(
            both_stores().await,
            (Some(kept.to_string()), Some(kept_text.to_string())),
            "after first_access {first_access}"
        );
    }
}
