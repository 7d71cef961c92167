//! `profile verify` says whether the stores agree field by field (exit 0) or not (exit 1,
//! naming the field), counts devices only in Redis, and `--repair` makes them agree.

use std::time::Duration;

use hawkeye_customer_cache::stores::redis::versions_key;
use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::cache_fixture::redis_connection;
use hawkeye_devtools::testkit::profiles::{
    cassandra_row, drop_keyspace, env_with_own_keyspace, produce_json, producer, redis_hash,
    wait_for_city,
};
use hawkeye_devtools::testkit::service::{binary, run_command};
use hawkeye_devtools::testkit::{cassandra_session, unique};
use redis::AsyncCommands;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const V1: i64 = 1_650_000_000_000;

#[tokio::test]
async fn verify_finds_a_changed_field_and_repair_makes_the_stores_agree() {
    let env = env_with_own_keyspace();
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let session = cassandra_session().await;
    let producer = producer();
    let device = unique("d");
    let other = unique("d");
    for (id, city) in [(&device, "Pune"), (&other, "Delhi")] {
        produce_json(
            &producer,
            &env,
            &json!({
                "device_id": id, "api_last_updated_on": V1, "city": city,
                "uaspec": {"agent": "Chrome"}, "first_access": 1_600_000_000_000_i64,
                "last_contact": "2020-11-05T15:57:07+02:00"
            }),
        )
        .await;
    }
    wait_for_city(&env, &session, &device, "Pune", WAIT).await;
    wait_for_city(&env, &session, &other, "Delhi", WAIT).await;
    service.terminate().await.unwrap();

    let verify = |args: &'static [&'static str]| run_command(args, &env, COMMAND_TIMEOUT);
    let (code, stdout, stderr) = verify(&["profile", "verify"]).await;
    assert_eq!(
        (code, stdout.trim()),
        (0, "0 of 2 devices differ"),
        "{stderr}"
    );

    // A hand edit of one field, and a device Redis alone holds.
    let prefix = &env["REDIS_DEVICE_KEY_PREFIX"];
    let ghost = unique("ghost");
    let mut redis = redis_connection().await;
    let _: () = redis
        .hset(format!("{prefix}{device}"), "city", "Aundh")
        .await
        .unwrap();
    let _: () = redis
        .hset(format!("{prefix}{ghost}"), "city", "Nowhere")
        .await
        .unwrap();
    let _: () = redis
        .hset(versions_key(&format!("{prefix}{ghost}")), "city", V1)
        .await
        .unwrap();
    let (code, stdout, _) = verify(&["profile", "verify"]).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.starts_with("2 of 3 devices differ"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "device {device:?} field city: redis \"Aundh\" cassandra \"Pune\""
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("device {ghost:?} field city")),
        "{stdout}"
    );

    let (code, stdout, stderr) = verify(&["profile", "verify", "--repair"]).await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("repaired 2 devices, 0 still differ"),
        "{stdout}"
    );
    assert_eq!(redis_hash(&env, &device).await["city"], "Pune");
    let ghost_row = cassandra_row(&session, &env, &ghost)
        .await
        .expect("the ghost's row");
    assert_eq!(ghost_row["city"], "Nowhere");

    let (code, stdout, _) = verify(&["profile", "verify"]).await;
    assert_eq!((code, stdout.trim()), (0, "0 of 3 devices differ"));
    drop_keyspace(&session, &env).await;
}
