//! A Redis Cluster of a test's own (three masters), started by `scripts/stack start
//! redis-cluster` in its own stack directory on free loopback ports, so that stopping one of its
//! masters disturbs no other test; removed (`scripts/stack down`) on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use crate::common::{free_port, unique};

pub struct OwnRedisCluster {
    stack_dir: PathBuf,
    /// The seed nodes, as `REDIS_URL` takes them.
    pub url: String,
}

impl OwnRedisCluster {
    /// Starts the three masters and waits until the cluster is ok.
    pub fn start() -> Self {
        let base = free_base_port();
        let mut cluster = OwnRedisCluster {
            stack_dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("redis-cluster")),
            url: String::new(),
        };
        let mut start = cluster.stack(&["start", "redis-cluster"]);
        start.env("STACK_REDIS_CLUSTER_PORT", base.to_string());
        cluster.run(start, "start redis-cluster");
        let env = cluster.run(cluster.stack(&["env"]), "env");
        cluster.url = env
            .lines()
            .find_map(|line| line.strip_prefix("export REDIS_CLUSTER_URL="))
            .expect("scripts/stack env prints REDIS_CLUSTER_URL")
            .to_string();
        cluster
    }

    /// Stops master `node` (1, 2 or 3); its append-only file keeps its data.
    pub fn stop_master(&self, node: usize) {
        let name = format!("redis-cluster-{node}");
        self.run(self.stack(&["stop", &name]), "stop");
    }

    /// Starts every stopped master again and waits until the cluster is ok.
    pub fn start_stopped(&self) {
        self.run(
            self.stack(&["start", "redis-cluster"]),
            "start redis-cluster",
        );
    }

    /// `scripts/stack ARGS` on this cluster's stack directory, without the `STACK_*` settings
    /// of the shared stack this test runs beside.
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

/// A port `p` such that `p..p+3` and their cluster bus ports (`+10000`) were free a moment ago.
fn free_base_port() -> u16 {
    for _ in 0..1000 {
        let base = free_port();
        if base > 55_533 {
            continue;
        }
        let free = (0..3).all(|offset| {
            [base + offset, base + offset + 10_000]
                .iter()
                .all(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        });
        if free {
            return base;
        }
    }
    panic!("no three free loopback ports with free bus ports found");
}

impl Drop for OwnRedisCluster {
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
