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
//! (`ModificationStatement.validateTimestamp`; batches skip it), and the service writes each
//! device in one unlogged batch, so the guardrail alone would let far-future cells through.

use std::time::Duration;

use serde_json::json;

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use crate::common::profiles::{cassandra_row, eventually, produce_json, producer};
use crate::common::service::isolated_env;
use crate::harness::{refused_start_up, start_and_push_one};
use crate::own_cassandra::OwnCassandra;

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
    assert!(service.terminate().await.success());

    let wrong = "Wrong-Cql-Pa55-Never-Shown";
    env.insert("CASSANDRA_PASSWORD".into(), wrong.into());
    let line = refused_start_up(&env, "CASSANDRA_USERNAME", &[wrong, PASSWORD]).await;
    assert!(line.contains("incorrect"), "the line says why: {line}");
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
