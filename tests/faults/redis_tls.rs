//! Security: TLS to Redis with a private CA and client certificates. The test takes the CA, a
//! server certificate for 127.0.0.1 and a client certificate of `scripts/stack pki`, and starts
//! its own redis-server with `tls-auth-clients yes` (TLS only, a password too): the service with
//! `REDIS_TLS_CA_FILE`, `REDIS_TLS_CERT_FILE` and `REDIS_TLS_KEY_FILE` pushes profiles into it;
//! without the CA file (the system's roots do not know the CA) or without the client
//! certificate, start-up fails with one line naming the setting, the password never shown.
//! Then the same push into a three-master Redis Cluster over TLS (`tls-cluster yes`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hawkeye_customer_cache::config::RedisTls;
use hawkeye_customer_cache::stores::redis::RedisConnection;
use hawkeye_devtools::service::free_port;
use hawkeye_devtools::testkit::profiles::eventually;
use hawkeye_devtools::testkit::service::isolated_env;
use redis::AsyncCommands;

use crate::harness::{refused_start_up, start_and_push_one};
use crate::own_stack::OwnStack;

const PASSWORD: &str = "Tls-Redis-Pa55-Never-Shown";

/// The PKI of a secured stack (`scripts/stack pki`: a private CA, a server certificate for
/// 127.0.0.1 that cluster nodes also present to each other on the bus, and the service's client
/// certificate), in a stack directory of the test's own, removed on drop.
struct Certificates {
    _stack: OwnStack,
    dir: PathBuf,
}

impl Certificates {
    fn make() -> Self {
        let stack = OwnStack::new("redis-tls");
        let printed = stack.run(stack.command(&["pki"]), "pki");
        Certificates {
            dir: PathBuf::from(printed.trim()),
            _stack: stack,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn shown(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// The service's TLS settings: the CA, the client certificate and its key.
    fn service_env(&self) -> [(String, String); 3] {
        [
            ("REDIS_TLS_CA_FILE".into(), self.shown("ca.pem")),
            (
                "REDIS_TLS_CERT_FILE".into(),
                self.shown("hawkeye-cache.pem"),
            ),
            ("REDIS_TLS_KEY_FILE".into(), self.shown("hawkeye-cache.key")),
        ]
    }

    fn settings(&self) -> RedisTls {
        RedisTls {
            ca_file: Some(self.path("ca.pem")),
            cert_file: Some(self.path("hawkeye-cache.pem")),
            key_file: Some(self.path("hawkeye-cache.key")),
        }
    }

    /// The arguments of a redis-server that speaks TLS only and wants client certificates.
    fn server_args(&self, port: u16) -> Vec<String> {
        let mut args: Vec<String> =
            "--port 0 --bind 127.0.0.1 --tls-auth-clients yes --appendonly no"
                .split_whitespace()
                .map(String::from)
                .collect();
        args.extend([
            "--save".into(),
            String::new(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            self.shown("server.pem"),
            "--tls-key-file".into(),
            self.shown("server.key"),
            "--tls-ca-cert-file".into(),
            self.shown("ca.pem"),
        ]);
        args
    }

    /// `redis-cli` over TLS with the client certificate, stopped after 30 s (`--cluster create`
    /// waits for ever for nodes that cannot meet).
    fn redis_cli(&self, args: &[&str]) -> String {
        let output = Command::new("timeout")
            .args([
                "30",
                "redis-cli",
                "--tls",
                "--cacert",
                &self.shown("ca.pem"),
            ])
            .args(["--cert", &self.shown("hawkeye-cache.pem")])
            .args(["--key", &self.shown("hawkeye-cache.key")])
            .args(args)
            .output()
            .expect("cannot run redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// redis-server processes of the test, killed on drop.
struct Servers(Vec<Child>);

impl Servers {
    fn start(&mut self, args: &[String], dir: &Path) {
        let child = Command::new("redis-server")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("cannot start redis-server (Debian package redis-server)");
        self.0.push(child);
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until the service's connection to `url` works with `tls` and returns it.
async fn connected(url: &str, tls: &RedisTls) -> RedisConnection {
    eventually(
        Duration::from_secs(20),
        "a TLS connection to Redis",
        || async { RedisConnection::connect_with_tls(url, tls).await.ok() },
    )
    .await
}

/// Waits until the hash of `device` in the Redis of `REDIS_URL` shows the event's city.
async fn wait_for_secure_city(env: &HashMap<String, String>, tls: &RedisTls, device: &str) {
    let mut redis = connected(&env["REDIS_URL"], tls).await;
    let key = format!("{}{device}", env["REDIS_DEVICE_KEY_PREFIX"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let hash: HashMap<String, String> = redis.hgetall(&key).await.unwrap_or_default();
        if hash.get("city").map(String::as_str) == Some("Secure") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the profile never reached the TLS Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn profiles_reach_a_redis_over_tls_with_a_private_ca_and_a_client_certificate() {
    let certificates = Certificates::make();
    let port = free_port();
    let mut args = certificates.server_args(port);
    args.extend(["--requirepass".into(), PASSWORD.into()]);
    let mut servers = Servers(Vec::new());
    servers.start(&args, &certificates.dir);
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{port}/0");
    drop(connected(&url, &certificates.settings()).await);

    let mut env = isolated_env();
    env.insert("REDIS_URL".into(), url);
    env.extend(certificates.service_env());
    let (mut service, device) = start_and_push_one(&env).await;
    wait_for_secure_city(&env, &certificates.settings(), &device).await;
    assert!(service.terminate().await.unwrap().success());

    // The system's roots do not know the test's CA.
    let mut untrusted = env.clone();
    untrusted.remove("REDIS_TLS_CA_FILE");
    let line = refused_start_up(&untrusted, "REDIS_TLS_CA_FILE", &[PASSWORD]).await;
    assert!(
        line.contains("the server's certificate is not trusted"),
        "{line}"
    );

    // The server wants a client certificate.
    let mut anonymous = env.clone();
    anonymous.remove("REDIS_TLS_CERT_FILE");
    anonymous.remove("REDIS_TLS_KEY_FILE");
    let line = refused_start_up(&anonymous, "REDIS_TLS_CERT_FILE", &[PASSWORD]).await;
    assert!(
        line.contains("the server requires a client certificate"),
        "{line}"
    );
}

/// A port for a cluster node: it and its bus port (+10000) free a moment ago.
fn free_node_port() -> u16 {
    (0..1000)
        .map(|_| free_port())
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok())
        .expect("no free port with a free cluster bus port")
}

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn profiles_reach_a_redis_cluster_over_tls_with_a_client_certificate() {
    let certificates = Certificates::make();
    let mut servers = Servers(Vec::new());
    let mut ports = Vec::new();
    while ports.len() < 3 {
        let port = free_node_port();
        if ports.contains(&port) {
            continue;
        }
        let dir = certificates.path(&format!("node-{port}"));
        std::fs::create_dir(&dir).unwrap();
        let mut args = certificates.server_args(port);
        args.extend(["--cluster-enabled", "yes", "--tls-cluster", "yes"].map(String::from));
        servers.start(&args, &dir);
        ports.push(port);
    }
    let nodes: Vec<String> = ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    eventually(Duration::from_secs(20), "the nodes answer", || async {
        let all = ports.iter().all(|port| {
            certificates
                .redis_cli(&["-p", &port.to_string(), "PING"])
                .trim()
                == "PONG"
        });
        all.then_some(())
    })
    .await;
    let mut create = vec!["--cluster", "create"];
    create.extend(nodes.iter().map(String::as_str));
    create.push("--cluster-yes");
    certificates.redis_cli(&create);
    eventually(Duration::from_secs(30), "the cluster is ok", || async {
        let ok = ports.iter().all(|port| {
            certificates
                .redis_cli(&["-p", &port.to_string(), "CLUSTER", "INFO"])
                .contains("cluster_state:ok")
        });
        ok.then_some(())
    })
    .await;

    let seeds: Vec<String> = nodes
        .iter()
        .map(|node| format!("rediss://{node}"))
        .collect();
    let mut env = isolated_env();
    env.insert("REDIS_URL".into(), seeds.join(","));
    env.extend(certificates.service_env());
    let redis = connected(&env["REDIS_URL"], &certificates.settings()).await;
    assert!(redis.is_cluster(), "the TLS nodes are a Redis Cluster");
    let (mut service, device) = start_and_push_one(&env).await;
    wait_for_secure_city(&env, &certificates.settings(), &device).await;
    assert!(service.terminate().await.unwrap().success());
}
