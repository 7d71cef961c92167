//! A Cassandra of a test's own, beside the stack's: one node, or a ring of two
//! (`STACK_CASSANDRA_NODES=2`: 127.0.0.1 and 127.0.0.2 on the same ports), started by
//! `scripts/stack` in its own stack directory on free loopback ports with the stack's settings a
//! test asks for (authentication, TLS), and removed (`scripts/stack down`) on drop.

use std::collections::HashMap;
use std::process::Command;

use hawkeye_devtools::service::free_port;

use crate::own_stack::OwnStack;

pub struct OwnCassandra {
    own: OwnStack,
    pub port: u16,
}

/// The second node of a ring of two, as `scripts/stack` names it.
pub const SECOND_NODE: &str = "cassandra2";

impl OwnCassandra {
    /// Starts the node with `settings` (`STACK_CASSANDRA_*` variables) and waits until it answers.
    pub fn start(settings: &[(&str, &str)]) -> Self {
        Self::start_nodes(settings, &["cassandra"])
    }

    /// Starts a ring of two nodes with `settings`: the first, then [`SECOND_NODE`] joining it;
    /// returns once the first lists the second among its peers.
    pub fn start_two_nodes(settings: &[(&str, &str)]) -> Self {
        let mut settings = settings.to_vec();
        settings.push(("STACK_CASSANDRA_NODES", "2"));
        Self::start_nodes(&settings, &["cassandra", SECOND_NODE])
    }

    fn start_nodes(settings: &[(&str, &str)], nodes: &[&str]) -> Self {
        let cassandra = OwnCassandra {
            own: OwnStack::new("cassandra"),
            port: free_port(),
        };
        // Fixed by the first start (the stack keeps them in its ports file).
        let storage_port = free_port().to_string();
        for node in nodes {
            let mut command = cassandra.stack(&["start", node]);
            command
                .envs(settings.iter().copied())
                .env("STACK_CASSANDRA_PORT", cassandra.port.to_string())
                .env("STACK_CASSANDRA_STORAGE_PORT", &storage_port);
            cassandra.own.run(command, &format!("start {node}"));
        }
        cassandra
    }

    /// Stops `node` (`scripts/stack stop`), keeping its data.
    pub fn stop(&self, node: &str) {
        self.own
            .run(self.stack(&["stop", node]), &format!("stop {node}"));
    }

    /// Starts `node` again on its data and waits until it answers (and, for the second node,
    /// is back in the ring).
    pub fn restart(&self, node: &str) {
        self.own
            .run(self.stack(&["start", node]), &format!("start {node}"));
    }

    /// The `CASSANDRA_*` settings `scripts/stack env` prints for this node.
    pub fn service_env(&self) -> HashMap<String, String> {
        let output = self.own.run(self.stack(&["env"]), "env");
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
        self.own.run(self.stack(&["cql", statement]), "cql")
    }

    /// `scripts/stack ARGS` on this node's stack directory, with a small heap for every node
    /// it starts (a 2-core machine runs it beside the stack).
    fn stack(&self, args: &[&str]) -> Command {
        let mut command = self.own.command(args);
        command.env("STACK_CASSANDRA_HEAP", "512m");
        command
    }
}
