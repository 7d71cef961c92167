//! Security: an authenticated Cassandra. A second Cassandra node of the test's own, started by
//! `scripts/stack` with `STACK_CASSANDRA_AUTH=password` (PasswordAuthenticator) on free loopback
//! ports: the service, logged in as a role the test creates, pushes profiles into it, and a
//! wrong password stops start-up with one line that names the settings but not the password.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use serde_json::json;

use crate::common::profiles::{cassandra_row, eventually, produce_json, producer};
use crate::common::service::isolated_env;
use crate::common::{free_port, unique, ServiceProcess};
use crate::harness::refused_start_up;

const ROLE: &str = "hcc_service";
const PASSWORD: &str = "Cql-Pa55-For-Auth-Test";

/// A Cassandra node with PasswordAuthenticator in a stack directory of its own, removed
/// (`scripts/stack down`) on drop.
struct PasswordCassandra {
    stack_dir: PathBuf,
    port: u16,
}

impl PasswordCassandra {
    fn start() -> Self {
        let cassandra = PasswordCassandra {
            stack_dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("cassandra_auth")),
            port: free_port(),
        };
        let storage_port = free_port();
        let output = cassandra
            .stack(&["start", "cassandra"])
            .env("STACK_CASSANDRA_AUTH", "password")
            .env("STACK_CASSANDRA_PORT", cassandra.port.to_string())
            .env("STACK_CASSANDRA_STORAGE_PORT", storage_port.to_string())
            .env("STACK_CASSANDRA_HEAP", "512m")
            .output()
            .expect("cannot run scripts/stack");
        assert!(
            output.status.success(),
            "scripts/stack start cassandra failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        cassandra
    }

    /// `scripts/stack ARGS` on this node's stack directory, without the `STACK_*` settings of
    /// the shared stack this test runs beside (its ports would not match this node's).
    fn stack(&self, args: &[&str]) -> Command {
        let mut command = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("STACK_") {
                command.env_remove(name);
            }
        }
        command.args(args).env("STACK_DIR", &self.stack_dir);
        command
    }

    async fn session(&self, user: &str, password: &str) -> Session {
        SessionBuilder::new()
            .known_node(format!("127.0.0.1:{}", self.port))
            .user(user, password)
            .build()
            .await
            .expect("authenticated CQL session")
    }
}

impl Drop for PasswordCassandra {
    fn drop(&mut self) {
        // A panic here would abort the test run: report instead.
        match self.stack(&["down"]).output() {
            Ok(output) if output.status.success() => {
                let _ = std::fs::remove_dir_all(&self.stack_dir);
            }
            Ok(output) => eprintln!(
                "scripts/stack down of {} failed: {}",
                self.stack_dir.display(),
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(e) => eprintln!("cannot run scripts/stack down: {e}"),
        }
    }
}

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn profiles_land_in_a_password_protected_cassandra_and_a_wrong_password_stops_start_up() {
    let cassandra = PasswordCassandra::start();
    let superuser = cassandra.session("cassandra", "cassandra").await;
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
    let mut service = ServiceProcess::start(env.clone());
    service.wait_ready(Duration::from_secs(120)).await;

    let device = unique("auth");
    produce_json(
        &producer(),
        &env,
        &json!({"device_id": device, "city": "Secure"}),
    )
    .await;
    let reader = cassandra.session(ROLE, PASSWORD).await;
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
