//! Security: an authenticated Cassandra. A second Cassandra node of the test's own, started by
//! `scripts/stack` with `STACK_CASSANDRA_AUTH=password` (PasswordAuthenticator) on free loopback
//! ports: the service, logged in as a role the test creates, pushes profiles into it, and a
//! wrong password stops start-up with one line that names the settings but not the password.

use std::time::Duration;

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use crate::common::profiles::{cassandra_row, eventually};
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
    let (mut service, device) = start_and_push_one(&env).await;
    let reader = session(&cassandra, ROLE, PASSWORD).await;
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
    assert!(service.terminate().await.success());

    let wrong = "Wrong-Cql-Pa55-Never-Shown";
    env.insert("CASSANDRA_PASSWORD".into(), wrong.into());
    let line = refused_start_up(&env, "CASSANDRA_USERNAME", &[wrong, PASSWORD]).await;
    assert!(line.contains("incorrect"), "the line says why: {line}");
}
