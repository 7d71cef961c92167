//! Security: an authenticated Cassandra. A second Cassandra node of the test's own, started by
//! `scripts/stack` with `STACK_CASSANDRA_AUTH=password` (PasswordAuthenticator) on free loopback
//! ports: the service, logged in as a role the test creates, pushes profiles into it, and a
//! wrong password stops start-up with one line that names the settings but not the password.
//!
//! The same ordinary role is what the stack's `maximum_timestamp_fail_threshold: 3d`
//! guardrail applies to (superusers are spared), as ScyllaDB's `restrict_future_timestamp`
//! applies to everyone: the test first sees the guardrail refuse a far-future write, then
//! that events carrying the smallest-wins fields (`first_access`, a declared state) land with
//! their rules intact and every cell timestamp of the row within the bound. The last check is
//! the one that matters: Cassandra 5.0 applies the guardrail to single statements only
//! (`ModificationStatement.validateTimestamp`; batches skip it), and the service writes
//! devices in unlogged batches, so the guardrail alone would let far-future cells through.
//!
//! The role is also what the stack's `items_per_collection_fail_threshold: 64` applies to:
//! a device whose map is past it is refused for good, and the others of its batch must not be.

use std::time::Duration;

use serde_json::json;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::{
    cassandra_row, eventually, header, produce_json, producer,
};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use hawkeye_devtools::testkit::unique;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use crate::harness::{dead_letters_of, refused_start_up, start_and_push_one};
use crate::own_cassandra::OwnCassandra;
use hawkeye_customer_cache::config::{CassandraCredentials, Secret, StoreSettings};
use hawkeye_customer_cache::profile::{ProfileUpdate, TextField};
use hawkeye_customer_cache::stores::cassandra::ProfileWriter;
use hawkeye_customer_cache::stores::CassandraStore;

const ROLE: &str = "hcc_service";
const PASSWORD: &str = "Cql-Pa55-For-Auth-Test";

async fn session(cassandra: &OwnCassandra, user: &str, password: &str) -> Session {
    SessionBuilder::new()
        .known_node(format!("127.0.0.1:{}", cassandra.port))
        .user(user, password)
        .build()
        .await
        .expect("authenticated CQL session")
}

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn profiles_land_in_a_password_protected_cassandra_and_a_wrong_password_stops_start_up() {
    let cassandra = OwnCassandra::start(&[("STACK_CASSANDRA_AUTH", "password")]);
    let superuser = session(&cassandra, "cassandra", "cassandra").await;
    superuser
        .query_unpaged(
            format!(
                "CREATE ROLE IF NOT EXISTS {ROLE} WITH PASSWORD = '{PASSWORD}' AND LOGIN = true"
            ),
            (),
        )
        .await
        .expect("CREATE ROLE");

    let mut env = isolated_env();
    env.insert(
        "CASSANDRA_NODES".into(),
        format!("127.0.0.1:{}", cassandra.port),
    );
    env.insert("CASSANDRA_USERNAME".into(), ROLE.into());
    env.insert("CASSANDRA_PASSWORD".into(), PASSWORD.into());
    let reader = session(&cassandra, ROLE, PASSWORD).await;
    guardrail_refuses_a_far_future_write(&reader).await;
    let (mut service, device) = start_and_push_one(&env).await;
    eventually(
        Duration::from_secs(60),
        "the profile in the protected Cassandra",
        || async {
            cassandra_row(&reader, &env, &device)
                .await
                .filter(|row| row["city"] == "Secure")
        },
    )
    .await;
    smallest_wins_fields_land_under_the_guardrail(&reader, &env, &device).await;
    assert!(service.terminate().await.unwrap().success());
    a_refused_device_leaves_the_others_of_its_batch_written(&reader, &env).await;
    the_writer_reports_only_the_refused_device_of_a_batch(&reader, &env).await;

    let wrong = "Wrong-Cql-Pa55-Never-Shown";
    env.insert("CASSANDRA_PASSWORD".into(), wrong.into());
    let line = refused_start_up(&env, "CASSANDRA_USERNAME", &[wrong, PASSWORD]).await;
    assert!(line.contains("incorrect"), "the line says why: {line}");
}

/// Events of several devices pushed while the service is stopped, so that they share a batch
/// (the service groups devices into multi-partition batches): one carries a `uaspec` map past
/// the stack's `items_per_collection_fail_threshold`, which Cassandra refuses for good. The
/// others land, and only that one is dead-lettered, with Cassandra's reason.
async fn a_refused_device_leaves_the_others_of_its_batch_written(
    role: &Session,
    env: &std::collections::HashMap<String, String>,
) {
    let producer = producer();
    let good: Vec<String> = (0..5).map(|_| unique("batched")).collect();
    for device in &good {
        produce_json(
            &producer,
            env,
            &json!({"device_id": device, "city": "Batched"}),
        )
        .await;
    }
    let refused = unique("too-many-items");
    let items: serde_json::Map<String, serde_json::Value> = (0..65)
        .map(|item| (format!("k{item}"), json!("v")))
        .collect();
    let event = json!({"device_id": refused, "city": "Refused", "uaspec": items});
    produce_json(&producer, env, &event).await;

    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(Duration::from_secs(120)).await.unwrap();
    for device in &good {
        eventually(
            Duration::from_secs(60),
            "a good device of the batch",
            || async {
                cassandra_row(role, env, device)
                    .await
                    .filter(|row| row["city"] == "Batched")
            },
        )
        .await;
    }
    let bad = std::collections::HashMap::from([(refused.clone(), ())]);
    let letters = dead_letters_of(env, &bad).await;
    let reason = header(&letters[0].2, "error.reason").expect("error.reason");
    assert!(
        reason.starts_with("cassandra: ") && reason.contains("items_per_collection"),
        "the refused device's dead letter says why: {reason:?}"
    );
    assert!(
        cassandra_row(role, env, &refused).await.is_none(),
        "the refused device has no row"
    );
    assert!(service.terminate().await.unwrap().success());
}

/// The Cassandra writer itself, given one upsert of devices that share a batch, one of them
/// past the guardrail: it names only that device as refused (the refresh relies on this, as
/// the profile push does), and writes the others.
async fn the_writer_reports_only_the_refused_device_of_a_batch(
    role: &Session,
    env: &std::collections::HashMap<String, String>,
) {
    let mut settings = StoreSettings::new(
        env["REDIS_URL"].clone(),
        vec![env["CASSANDRA_NODES"].clone()],
    );
    settings.cassandra_keyspace = env["CASSANDRA_KEYSPACE"].clone();
    settings.cassandra_credentials = CassandraCredentials {
        username: ROLE.into(),
        password: Secret::new(PASSWORD),
    };
    let store = CassandraStore::connect(&settings)
        .await
        .expect("connect as the role");
    let writer = ProfileWriter::prepare(&store).await.expect("prepare");
    let update = |device_id: &str, items: usize| ProfileUpdate {
        device_id: device_id.to_string(),
        version: 1_700_000_000_000,
        text: [(TextField::City, "Written".to_string())].into(),
        uaspec: Some(
            (0..items)
                .map(|item| (format!("k{item}"), "v".into()))
                .collect(),
        ),
        ..ProfileUpdate::default()
    };
    let good: Vec<String> = (0..5).map(|_| unique("writer")).collect();
    let refused = unique("writer-refused");
    let mut updates: Vec<ProfileUpdate> = good.iter().map(|device| update(device, 1)).collect();
    updates.insert(2, update(&refused, 65));
    let refusals = writer.upsert(&updates).await.expect("no transient failure");
    assert_eq!(
        refusals.keys().collect::<Vec<_>>(),
        [&refused],
        "only the device past the guardrail is refused: {refusals:?}"
    );
    for device in &good {
        let row = cassandra_row(role, env, device)
            .await
            .expect("a good device's row");
        assert_eq!(row["city"], "Written");
    }
}

/// A write `USING TIMESTAMP` ten days ahead, as the role, must be refused: otherwise the
/// scenario would not show what ScyllaDB does.
async fn guardrail_refuses_a_far_future_write(role: &Session) {
    for statement in [
        "CREATE KEYSPACE IF NOT EXISTS guardrail_probe WITH replication = \
         {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE IF NOT EXISTS guardrail_probe.cells (k text PRIMARY KEY, v text)",
    ] {
        role.query_unpaged(statement, ()).await.expect(statement);
    }
    let ten_days_ahead = chrono::Utc::now().timestamp_micros() + 10 * 86_400 * 1_000_000;
    let refused = role
        .query_unpaged(
            format!("INSERT INTO guardrail_probe.cells (k, v) VALUES ('k', 'v') USING TIMESTAMP {ten_days_ahead}"),
            (),
        )
        .await
        .expect_err("the guardrail refuses a timestamp ten days ahead");
    assert!(
        refused.to_string().contains("maximum_timestamp"),
        "refused by the guardrail: {refused}"
    );
}

/// Events with an earlier `first_access` and a later declaration, pushed after the first one:
/// the row ends with the earliest first access and the first declaration's version.
async fn smallest_wins_fields_land_under_the_guardrail(
    role: &Session,
    env: &std::collections::HashMap<String, String>,
    device: &str,
) {
    const VERSION: i64 = 1_700_000_000_000;
    let producer = producer();
    for (version, first_access, declared) in [
        (VERSION + 2000, 1_600_000_000_000_i64, "later"),
        (VERSION + 1000, 1_500_000_000_000, "first"),
        (VERSION + 3000, 1_550_000_000_000, "latest"),
    ] {
        let event = json!({
            "device_id": device,
            "api_last_updated_on": version,
            "first_access": first_access,
            "user_declared_state": declared,
        });
        produce_json(&producer, env, &event).await;
    }
    eventually(
        Duration::from_secs(60),
        "the earliest first access and the first declaration in Cassandra",
        || async {
            cassandra_row(role, env, device).await.filter(|row| {
                row["first_access"] == "2017-07-14 02:40:00.000Z"
                    && row["user_declared_on"] == "2023-11-14 22:13:21.000Z"
                    && row["user_declared_state"] == "latest"
            })
        },
    )
    .await;
    let cql = format!(
        "SELECT WRITETIME(city), WRITETIME(first_access), WRITETIME(user_declared_state), \
         WRITETIME(user_declared_on), WRITETIME(updated_date) FROM {}.device_profile \
         WHERE device_id = ?",
        env["CASSANDRA_KEYSPACE"]
    );
    let rows = role
        .query_unpaged(cql, (device,))
        .await
        .expect("SELECT WRITETIME")
        .into_rows_result()
        .expect("rows");
    let (city, first_access, declared, declared_on, updated) = rows
        .single_row::<(
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        )>()
        .expect("one row of write times");
    let bound = chrono::Utc::now().timestamp_micros() + 3 * 86_400 * 1_000_000;
    for time in [city, first_access, declared, declared_on, updated] {
        let time = time.expect("every cell written");
        assert!(
            time <= bound,
            "a cell written at {time}, past ScyllaDB's bound {bound}"
        );
    }
}
