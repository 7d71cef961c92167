//! A second Cassandra node of a test's own, started by `scripts/stack` in its own stack
//! directory on free loopback ports with the stack's settings a test asks for (authentication,
//! TLS), and removed (`scripts/stack down`) on drop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use crate::common::{free_port, unique};

pub struct OwnCassandra {
    stack_dir: PathBuf,
    pub port: u16,
}

impl OwnCassandra {
    /// Starts the node with `settings` (`STACK_CASSANDRA_*` variables) and waits until it answers.
    pub fn start(settings: &[(&str, &str)]) -> Self {
        let cassandra = OwnCassandra {
            stack_dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("cassandra")),
            port: free_port(),
        };
        let mut command = cassandra.stack(&["start", "cassandra"]);
        command
            .envs(settings.iter().copied())
            .env("STACK_CASSANDRA_PORT", cassandra.port.to_string())
            .env("STACK_CASSANDRA_STORAGE_PORT", free_port().to_string())
            .env("STACK_CASSANDRA_HEAP", "512m");
        cassandra.run(command, "start cassandra");
        cassandra
    }

    /// The `CASSANDRA_*` settings `scripts/stack env` prints for this node.
    pub fn service_env(&self) -> HashMap<String, String> {
        let output = self.run(self.stack(&["env"]), "env");
        output
            .lines()
            .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
            .filter(|(key, _)| key.starts_with("CASSANDRA_"))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    /// Runs CQL with `scripts/stack cql` (logged in, over TLS, as the node needs) and returns
    /// what it printed.
    pub fn cql(&self, statement: &str) -> String {
        self.run(self.stack(&["cql", statement]), "cql")
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

    fn run(&self, mut command: Command, what: &str) -> String {
        let output = command.output().expect("cannot run scripts/stack");
        assert!(
            output.status.success(),
            "scripts/stack {what} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).to_string()
    }
}

impl Drop for OwnCassandra {
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
