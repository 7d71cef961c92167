//! `profile rebuild-redis` gives back every device's Redis hash and versions hash from
//! Cassandra, so that after a flush the merge rules hold as before: an older event does not
//! roll a field back, an earlier first_access still wins.

use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::{
    delete_redis_device, drop_keyspace, env_with_own_keyspace, eventually, produce_json, producer,
    redis_hash, redis_versions, wait_for_city,
};
use hawkeye_devtools::testkit::service::{binary, run_command};
use hawkeye_devtools::testkit::{cassandra_session, unique};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const V0: i64 = 1_640_000_000_000;
const V1: i64 = 1_650_000_000_000;
const V2: i64 = 1_650_000_500_000;

#[tokio::test]
async fn a_rebuild_gives_back_hashes_and_versions_and_the_rules_still_hold() {
    let env = env_with_own_keyspace();
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let session = cassandra_session().await;
    let producer = producer();
    let first = unique("d");
    let second = unique("d");

    produce_json(
        &producer,
        &env,
        &json!({
            "device_id": first, "api_last_updated_on": V1, "city": "Pune", "state": "MH",
            "first_access": 1_600_000_000_000_i64, "uaspec": {"agent": "Chrome"},
            "user_declared_state": "KA", "last_contact": "2020-11-05T13:57:07Z"
        }),
    )
    .await;
    produce_json(
        &producer,
        &env,
        &json!({
            "device_id": first, "api_last_updated_on": V2, "state": "Goa",
            "user_declared_state": "GA", "device_spec": {"os": "Android"}
        }),
    )
    .await;
    produce_json(
        &producer,
        &env,
        &json!({
            "device_id": second, "api_last_updated_on": V1, "city": "Delhi", "country": "India"
        }),
    )
    .await;
    wait_for_city(&env, &session, &second, "Delhi", WAIT).await;
    eventually(WAIT, "the second event of the first device", || async {
        (redis_hash(&env, &first)
            .await
            .get("state")
            .map(String::as_str)
            == Some("Goa"))
        .then_some(())
    })
    .await;
    let mut before = Vec::new();
    for device in [&first, &second] {
        before.push((
            redis_hash(&env, device).await,
            redis_versions(&env, device).await,
        ));
        delete_redis_device(&env, device).await;
    }

    let (code, stdout, stderr) =
        run_command(&["profile", "rebuild-redis"], &env, Duration::from_secs(60)).await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.starts_with("rebuilt 2 devices in "), "{stdout}");
    for (device, (hash, versions)) in [&first, &second].into_iter().zip(&before) {
        assert_eq!(&redis_hash(&env, device).await, hash, "hash of {device}");
        assert_eq!(
            &redis_versions(&env, device).await,
            versions,
            "versions of {device}"
        );
    }

    // An older event changes nothing it carries but an earlier first_access.
    produce_json(
        &producer,
        &env,
        &json!({
            "device_id": first, "api_last_updated_on": V0, "city": "Old", "state": "Old",
            "first_access": 1_500_000_000_000_i64
        }),
    )
    .await;
    let hash = eventually(WAIT, "the earlier first_access", || async {
        let hash = redis_hash(&env, &first).await;
        (hash.get("firstaccess").map(String::as_str) == Some("1500000000000")).then_some(hash)
    })
    .await;
    assert_eq!(hash["city"], "Pune");
    assert_eq!(hash["state"], "Goa");
    assert_eq!(hash["user_declared_on"], V1.to_string());
    service.terminate().await.unwrap();
    drop_keyspace(&session, &env).await;
}
