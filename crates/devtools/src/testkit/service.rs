//! The service binary as the tests run it ([`crate::service::ServiceProcess`] is the harness):
//! the binary built with the test, each test's own isolated environment, and runs to the exit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use crate::service::built_binary;

use super::{stack, unique};

/// The service binary cargo built for the running test.
pub fn binary() -> &'static Path {
    static BINARY: LazyLock<PathBuf> =
        LazyLock::new(|| built_binary().expect("cannot find the service binary"));
    &BINARY
}

/// The environment of one isolated service instance: its own topics, group, Redis prefixes,
/// HTTP port (`crate::service::isolated_env`, as the benchmark), with the tests' own
/// keyspace and info logs. Tests change entries before they start the service.
pub fn isolated_env() -> HashMap<String, String> {
    let mut env = crate::service::isolated_env(&stack(), &unique("t"));
    env.insert("CASSANDRA_KEYSPACE".into(), "hcc_test".into());
    env.insert("RUST_LOG".into(), "info".into());
    env
}

/// Runs `hawkeye-customer-cache {args}` with `env` to its exit; returns its exit code, stdout
/// and stderr.
pub async fn run_command(
    args: &[&str],
    env: &HashMap<String, String>,
    timeout: Duration,
) -> (i32, String, String) {
    let exit = crate::service::run_command(binary(), args, env, timeout)
        .await
        .unwrap();
    (exit.code, exit.stdout, exit.stderr)
}

/// Runs the service (`run`) with `env` to its exit; returns its exit code and stderr lines.
pub async fn run_to_exit(env: &HashMap<String, String>, timeout: Duration) -> (i32, Vec<String>) {
    let (code, _, stderr) = run_command(&["run"], env, timeout).await;
    (code, stderr.lines().map(str::to_string).collect())
}
