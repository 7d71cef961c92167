//! A Redis Cluster of a test's own (three masters), started by `scripts/stack start
//! redis-cluster` in its own stack directory on free loopback ports, so that stopping one of its
//! masters disturbs no other test; removed (`scripts/stack down`) on drop.

use std::net::TcpListener;

use hawkeye_devtools::service::free_port;

use crate::own_stack::OwnStack;

pub struct OwnRedisCluster {
    own: OwnStack,
    /// The seed nodes, as `REDIS_URL` takes them.
    pub url: String,
}

impl OwnRedisCluster {
    /// Starts the three masters and waits until the cluster is ok.
    pub fn start() -> Self {
        let base = free_base_port();
        let mut cluster = OwnRedisCluster {
            own: OwnStack::new("redis-cluster"),
            url: String::new(),
        };
        let mut start = cluster.own.command(&["start", "redis-cluster"]);
        start.env("STACK_REDIS_CLUSTER_PORT", base.to_string());
        cluster.own.run(start, "start redis-cluster");
        let env = cluster.own.run(cluster.own.command(&["env"]), "env");
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
        self.own.run(self.own.command(&["stop", &name]), "stop");
    }

    /// Starts every stopped master again and waits until the cluster is ok.
    pub fn start_stopped(&self) {
        self.own.run(
            self.own.command(&["start", "redis-cluster"]),
            "start redis-cluster",
        );
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
