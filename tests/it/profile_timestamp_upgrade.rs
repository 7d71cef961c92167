//! The README's "Upgrading stored rows": a row whose smallest-wins cells were written the first
//! way (`USING TIMESTAMP i64::MAX - value`) freezes them in Cassandra, `profile verify` counts
//! it, and the documented steps (repair, `TRUNCATE`, repair) rewrite it from Redis in today's
//! encoding, after which an earlier `first_access` wins in Cassandra again.

use std::collections::HashMap;
use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::{
    cassandra_row, drop_keyspace, env_with_own_keyspace, eventually, produce_json, producer,
    wait_for_city,
};
use hawkeye_devtools::testkit::service::{binary, run_command};
use hawkeye_devtools::testkit::{cassandra_session, unique};
use scylla::client::session::Session;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const V1: i64 = 1_650_000_000_000;
/// 2020-09-13T12:26:40Z, 2017-07-14T02:40:00Z and 2014-05-13T16:53:20Z.
const FIRST_ACCESSES: [i64; 3] = [1_600_000_000_000, 1_500_000_000_000, 1_400_000_000_000];

#[tokio::test]
async fn rows_of_the_first_encoding_are_reported_and_rewritten_by_the_documented_steps() {
    let env = env_with_own_keyspace();
    let session = cassandra_session().await;
    let device = unique("legacy");
    let push = |version: i64, first_access: i64, city: &'static str| {
        let event = json!({
            "device_id": device, "api_last_updated_on": version, "city": city,
            "first_access": first_access, "user_declared_state": "KA",
        });
        let env = env.clone();
        async move { produce_json(&producer(), &env, &event).await }
    };

    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    push(V1, FIRST_ACCESSES[0], "Pune").await;
    wait_for_city(&env, &session, &device, "Pune", WAIT).await;
    write_the_first_way(&session, &env, &device).await;
    // Redis takes the earlier first access; the frozen Cassandra cell does not.
    push(V1 + 1000, FIRST_ACCESSES[1], "Delhi").await;
    wait_for_city(&env, &session, &device, "Delhi", WAIT).await;
    let row = cassandra_row(&session, &env, &device).await.expect("row");
    assert_eq!(row["first_access"], "2020-09-13 12:26:40.000Z", "{row}");
    service.terminate().await.unwrap();

    let command = |args: &'static [&'static str]| run_command(args, &env, COMMAND_TIMEOUT);
    let (code, stdout, _) = command(&["profile", "verify"]).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("1 devices hold cells in the first timestamp encoding"),
        "{stdout}"
    );
    let (_, stdout, stderr) = command(&["profile", "verify", "--repair"]).await;
    assert!(stdout.contains("1 still differ"), "{stdout}\n{stderr}");
    let cql = format!("TRUNCATE {}.device_profile", env["CASSANDRA_KEYSPACE"]);
    session.query_unpaged(cql, ()).await.expect("TRUNCATE");
    let (code, stdout, stderr) = command(&["profile", "verify", "--repair"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("0 still differ"), "{stdout}");
    let (code, stdout, _) = command(&["profile", "verify"]).await;
    assert_eq!((code, stdout.trim()), (0, "0 of 1 devices differ"));
    let row = cassandra_row(&session, &env, &device).await.expect("row");
    assert_eq!(row["first_access"], "2017-07-14 02:40:00.000Z", "{row}");
    assert_eq!(row["user_declared_on"], "2022-04-15 05:20:00.000Z", "{row}");

    // Rewritten, the row follows the rules again.
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    push(V1 + 2000, FIRST_ACCESSES[2], "Agra").await;
    eventually(WAIT, "the earliest first access in Cassandra", || async {
        cassandra_row(&session, &env, &device)
            .await
            .filter(|row| row["first_access"] == "2014-05-13 16:53:20.000Z")
    })
    .await;
    service.terminate().await.unwrap();
    drop_keyspace(&session, &env).await;
}

/// Rewrites the device's `first_access` and `user_declared_on` cells as the first builds did.
async fn write_the_first_way(session: &Session, env: &HashMap<String, String>, device: &str) {
    let keyspace = &env["CASSANDRA_KEYSPACE"];
    for (column, value) in [
        ("first_access", FIRST_ACCESSES[0]),
        ("user_declared_on", V1),
    ] {
        let cql = format!(
            "UPDATE {keyspace}.device_profile USING TIMESTAMP {} SET {column} = ? \
             WHERE device_id = ?",
            i64::MAX - value
        );
        let at = scylla::value::CqlTimestamp(value);
        session
            .query_unpaged(cql, (at, device))
            .await
            .expect("a write the first way");
    }
}
