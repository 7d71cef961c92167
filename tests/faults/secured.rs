//! Security (issue 30): least privilege on a secured stack of the test's own
//! (`STACK_SECURE=on`: Kafka over SASL_SSL with ACLs, Redis over TLS with client certificates
//! and ACL users, Cassandra over TLS with roles), with exactly the rights of `deploy/security/`.
//!
//! * The service runs as `hawkeye-cache`: the push, a refresh and cache requests work; the
//!   operator tools run as `hawkeye-operator`: `get`, `refresh`, `profile publish`,
//!   `rebuild-redis`, `verify` and `replay-dlq` work; on one Redis server and on a Redis Cluster
//!   with the same ACL users; and over the mTLS listener with an encrypted key.
//! * Each refusal stops start-up with one line naming the setting or the grant: a wrong SASL
//!   password, an untrusted Kafka or Redis server, a refused client certificate, a consumer
//!   group not granted, a Cassandra role that may not write, a wrong Cassandra password.
//! * A reply topic the service may not write to is counted and logged with the grant, and the
//!   next request is answered.
//! * No password or key passphrase of the stack appears in any log, error, endpoint or `--help`.

use std::collections::HashMap;
use std::time::Duration;

use hawkeye_devtools::service::{free_port, ServiceProcess};
use hawkeye_devtools::sim::SimConfig;
use hawkeye_devtools::testkit::profiles::eventually;
use hawkeye_devtools::testkit::refresh::{refresh_env, start_sim};
use hawkeye_devtools::testkit::request_reply::run_get;
use hawkeye_devtools::testkit::service::{binary, run_command};
use hawkeye_devtools::testkit::unique;

use crate::harness::refused_start_up;
use crate::own_stack::OwnStack;

/// A secured stack of the test's own, removed on drop.
struct SecuredStack {
    own: OwnStack,
    kafka_port: u16,
}

impl SecuredStack {
    fn start() -> Self {
        let stack = SecuredStack {
            own: OwnStack::new("secured"),
            kafka_port: free_port(),
        };
        // Kafka's controller and mTLS listeners take the next two ports, which `free_port`
        // would hand out next: skip them.
        let _controller_and_mtls = [free_port(), free_port()];
        // The same for the Redis Cluster's second and third nodes.
        let cluster_port = free_port();
        let _cluster_nodes = [free_port(), free_port()];
        let mut up = stack.own.command(&["up"]);
        up.env("STACK_SECURE", "on")
            .env("STACK_REDIS_CLUSTER", "on")
            .env("STACK_REDIS_CLUSTER_PORT", cluster_port.to_string())
            .env("STACK_KAFKA_PORT", stack.kafka_port.to_string())
            .env("STACK_CASSANDRA_PORT", free_port().to_string())
            .env("STACK_CASSANDRA_STORAGE_PORT", free_port().to_string())
            .env("STACK_REDIS_PORT", free_port().to_string());
        stack.own.run(up, "up");
        stack
    }

    /// What `scripts/stack env [principal]` prints, as settings.
    fn env(&self, principal: &str) -> HashMap<String, String> {
        let output = self.own.run(self.own.command(&["env", principal]), "env");
        output
            .lines()
            .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    /// The stack's passwords and key passphrases by name (`pki/secrets.env`).
    fn secrets(&self, pki: &str) -> HashMap<String, String> {
        let secrets = std::fs::read_to_string(format!("{pki}/secrets.env")).unwrap();
        secrets
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.to_string(), value.trim_matches('\'').to_string()))
            .collect()
    }

    /// Runs a Kafka tool class as the stack's admin (`--command-config` added).
    fn kafka_admin(&self, class: &str, args: &[&str]) {
        let config = self
            .own
            .run(self.own.command(&["kafka-config", "admin"]), "kafka-config");
        let brokers = format!("127.0.0.1:{}", self.kafka_port);
        let mut all = vec!["kafka-class", class, "--bootstrap-server", &brokers];
        all.extend(["--command-config", config.trim()]);
        all.extend(args);
        self.own.run(self.own.command(&all), class);
    }
}

/// The settings of a principal on top of `base` (the simulator's APIs, the HTTP port): the
/// topics, groups and keys are the defaults the grants name.
fn as_principal(
    base: &HashMap<String, String>,
    principal: &HashMap<String, String>,
) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = base
        .iter()
        .filter(|(key, _)| {
            !key.starts_with("TOPIC_")
                && !key.starts_with("KAFKA_")
                && !key.starts_with("REDIS_")
                && !key.starts_with("CASSANDRA_")
                && *key != "ENVIRONMENT_NAME"
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    env.extend(
        principal
            .iter()
            .filter(|(key, _)| !key.starts_with("STACK_") && *key != "KAFKA_MTLS_BROKERS")
            .map(|(key, value)| (key.clone(), value.clone())),
    );
    env
}

async fn tool(env: &HashMap<String, String>, args: &[&str]) -> (i32, String, String) {
    run_command(args, env, Duration::from_secs(120)).await
}

fn assert_no_secret(what: &str, text: &str, secrets: &[impl AsRef<str>]) {
    for secret in secrets {
        let secret = secret.as_ref();
        assert!(
            !text.contains(secret),
            "{what} shows a password of the stack:\n{text}"
        );
    }
}

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn every_job_and_tool_runs_with_the_documented_rights_and_each_refusal_is_one_line() {
    let stack = SecuredStack::start();
    let service_principal = stack.env("");
    let pki = &service_principal["STACK_PKI"];
    let stack_secrets = stack.secrets(pki);
    for name in [
        "ADMIN_PASSWORD",
        "HAWKEYE_CACHE_PASSWORD",
        "HAWKEYE_OPERATOR_PASSWORD",
        "HAWKEYE_CACHE_KEY_PASSPHRASE",
    ] {
        assert!(stack_secrets.contains_key(name), "{name} in secrets.env");
    }
    let secrets: Vec<&str> = stack_secrets.values().map(String::as_str).collect();
    let sim = start_sim(SimConfig {
        devices: 40,
        ..SimConfig::default()
    })
    .await;
    let mut base = refresh_env(&sim);
    base.insert("RUST_LOG".into(), "debug".into());
    let service_env = as_principal(&base, &service_principal);
    let operator = as_principal(&base, &stack.env("operator"));
    assert!(service_env["KAFKA_CONFIG"].contains("sasl.username=hawkeye-cache"));
    let mut outputs = String::new();

    // The service as hawkeye-cache: start-up creates its topics and tables, the first refresh
    // publishes the cache.
    let mut service = ServiceProcess::start(binary(), service_env.clone()).unwrap();
    service.wait_ready(Duration::from_secs(120)).await.unwrap();
    let cached = eventually(
        Duration::from_secs(120),
        "the cache, as hawkeye-operator",
        || async {
            let get = run_get(&operator, &["--timeout", "20"]).await;
            (get.reply["status"] == 200).then_some(get)
        },
    )
    .await;
    outputs.push_str(&cached.stderr);
    let cached = cached.reply;
    assert!(
        !cached["body"].as_array().map(Vec::is_empty).unwrap_or(true),
        "{cached}"
    );

    // The operator asks for a refresh and publishes profile events: one good, one poison.
    let (code, refresh_id, stderr) = tool(&operator, &["refresh"]).await;
    assert_eq!(code, 0, "refresh as hawkeye-operator: {stderr}");
    assert!(!refresh_id.trim().is_empty());
    outputs.push_str(&stderr);
    let device = unique("secured");
    let events = std::env::temp_dir().join(unique("secured-events"));
    std::fs::write(
        &events,
        format!(
            "{{\"device_id\":\"{device}\",\"city\":\"Secure\"}}\n{{\"device_id\":\"{device}-bad\",\"first_access\":\"not a time\"}}\n"
        ),
    )
    .unwrap();
    let events_path = events.to_string_lossy().to_string();
    let (code, out, stderr) = tool(&operator, &["profile", "publish", &events_path]).await;
    assert_eq!(code, 0, "profile publish as hawkeye-operator: {stderr}");
    assert!(out.contains('2'), "{out}");
    outputs.push_str(&stderr);

    // The push wrote both stores: verify (as the operator) finds the device in both, agreeing.
    let (verified, stderr) = eventually(
        Duration::from_secs(60),
        "the pushed device in both stores",
        || async {
            let (code, out, stderr) = tool(&operator, &["profile", "verify"]).await;
            (code == 0 && out.starts_with("0 of ") && !out.starts_with("0 of 0 "))
                .then_some((out, stderr))
        },
    )
    .await;
    outputs.push_str(&stderr);
    assert!(verified.contains("devices differ"), "{verified}");
    let (code, rebuilt, stderr) = tool(&operator, &["profile", "rebuild-redis"]).await;
    assert_eq!(code, 0, "rebuild-redis as hawkeye-operator: {stderr}");
    assert!(rebuilt.contains("rebuilt"), "{rebuilt}");
    outputs.push_str(&stderr);

    // The poison event reached the dead letters (the service may write there); the operator
    // replays it.
    let (replayed, stderr) = eventually(
        Duration::from_secs(60),
        "the dead letter replayed",
        || async {
            let (code, out, stderr) = tool(&operator, &["profile", "replay-dlq"]).await;
            assert_eq!(code, 0, "replay-dlq as hawkeye-operator: {stderr}");
            (!out.starts_with("replayed 0 ")).then_some((out, stderr))
        },
    )
    .await;
    outputs.push_str(&stderr);
    assert!(
        replayed.starts_with("replayed 1 dead letters"),
        "{replayed}"
    );

    // A requester names a reply topic the service may not write to: counted, logged with the
    // grant, and the next request is answered.
    stack.kafka_admin(
        "org.apache.kafka.tools.TopicCommand",
        &["--create", "--topic", "other.replies", "--partitions", "1"],
    );
    stack.kafka_admin(
        "org.apache.kafka.tools.AclCommand",
        &[
            "--add",
            "--allow-principal",
            "User:hawkeye-operator",
            "--operation",
            "Read",
            "--operation",
            "Describe",
            "--topic",
            "other.replies",
        ],
    );
    let refused = run_get(
        &operator,
        &["--timeout", "5", "--reply-topic", "other.replies"],
    )
    .await;
    assert_eq!(
        refused.code, 2,
        "no reply on a topic the service may not write: {refused:?}"
    );
    let failures = eventually(
        Duration::from_secs(30),
        "the refused reply counted",
        || async {
            let value = service
                .metric("hawkeye_customer_cache_get_failures_total{reason=\"delivery_failed\"}")
                .await
                .unwrap_or(0.0);
            (value >= 1.0).then_some(value)
        },
    )
    .await;
    assert_eq!(failures, 1.0);
    let again = run_get(&operator, &["--timeout", "20"]).await;
    assert_eq!(again.reply["status"], 200, "{again:?}");
    for path in ["/health", "/ready", "/metrics"] {
        let body = reqwest::get(service.http_url(path))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_no_secret(path, &body, &secrets);
    }
    assert!(service.terminate().await.unwrap().success());
    let log = service.log.join("\n");
    assert!(
        log.contains("Kafka refuses WRITE on topic other.replies to this client: grant it"),
        "the refused reply is logged with the grant"
    );
    assert_no_secret("the service's log", &log, &secrets);
    assert_no_secret("the tools' output", &outputs, &secrets);

    // Refusals at start-up, each one line naming the setting or the grant.
    let config = &service_env["KAFKA_CONFIG"];
    let mut wrong = service_env.clone();
    wrong.insert(
        "KAFKA_CONFIG".into(),
        config.replace("sasl.password=", "sasl.password=wrong-"),
    );
    refused_start_up(
        &wrong,
        "(KAFKA_CONFIG sasl.mechanisms, sasl.username, sasl.password)",
        &secrets,
    )
    .await;
    let mut untrusted = service_env.clone();
    untrusted.insert(
        "KAFKA_CONFIG".into(),
        config.replace("/ca.pem", "/other-ca.pem"),
    );
    refused_start_up(&untrusted, "(KAFKA_CONFIG ssl.ca.location)", &secrets).await;
    let mut no_certificate = service_env.clone();
    no_certificate.insert(
        "KAFKA_BROKERS".into(),
        service_principal["KAFKA_MTLS_BROKERS"].clone(),
    );
    no_certificate.insert(
        "KAFKA_CONFIG".into(),
        format!(
            "security.protocol=SSL,ssl.ca.location={}",
            service_env["CASSANDRA_TLS_CA_FILE"]
        ),
    );
    refused_start_up(
        &no_certificate,
        "(KAFKA_CONFIG ssl.certificate.location, ssl.key.location)",
        &secrets,
    )
    .await;
    let mut other_group = service_env.clone();
    other_group.insert("KAFKA_GROUP_ID".into(), "not-granted".into());
    let line = refused_start_up(&other_group, "grant it", &secrets).await;
    assert!(
        line.contains("READ on consumer group not-granted."),
        "{line}"
    );
    let mut untrusted_redis = service_env.clone();
    untrusted_redis.insert(
        "REDIS_TLS_CA_FILE".into(),
        service_env["REDIS_TLS_CA_FILE"].replace("/ca.pem", "/other-ca.pem"),
    );
    refused_start_up(&untrusted_redis, "REDIS_TLS_CA_FILE", &secrets).await;
    // The operator's role may not write: the start-up's first write names the permission.
    let mut read_only = service_env.clone();
    for key in ["CASSANDRA_USERNAME", "CASSANDRA_PASSWORD"] {
        read_only.insert(key.into(), operator[key].clone());
    }
    let line = refused_start_up(&read_only, "cannot set up Cassandra", &secrets).await;
    assert!(
        line.contains("User hawkeye_operator has no MODIFY permission on <table device_db."),
        "{line}"
    );
    let mut wrong_role = service_env.clone();
    wrong_role.insert("CASSANDRA_PASSWORD".into(), "not-the-password".into());
    refused_start_up(&wrong_role, "CASSANDRA_PASSWORD", &secrets).await;

    // The service over the mTLS listener, its certificate's key encrypted (ssl.key.password):
    // it starts, and the passphrase shows nowhere; nor does any secret in `--help`.
    let passphrase = &stack_secrets["HAWKEYE_CACHE_KEY_PASSPHRASE"];
    let mut mutual = service_env.clone();
    mutual.insert(
        "KAFKA_BROKERS".into(),
        service_principal["KAFKA_MTLS_BROKERS"].clone(),
    );
    mutual.insert(
        "KAFKA_CONFIG".into(),
        format!(
            "security.protocol=SSL,ssl.ca.location={pki}/ca.pem,ssl.certificate.location={pki}/hawkeye-cache.pem,ssl.key.location={pki}/hawkeye-cache.enc.key,ssl.key.password={passphrase}"
        ),
    );
    let mut service = ServiceProcess::start(binary(), mutual.clone()).unwrap();
    service.wait_ready(Duration::from_secs(120)).await.unwrap();
    assert!(service.terminate().await.unwrap().success());
    assert_no_secret("the mTLS service's log", &service.log.join("\n"), &secrets);
    let (_, help, _) = run_command(&["run", "--help"], &mutual, Duration::from_secs(30)).await;
    assert!(help.contains("REDIS_TLS_CA_FILE"), "{help}");
    assert_no_secret("--help", &help, &secrets);

    // A Redis Cluster with the same ACL users: the service starts on it (its refresh publishes
    // the cache there), the operator rebuilds Redis from Cassandra and publishes an event, and
    // verify finds both stores agreeing.
    let on_cluster = |env: &HashMap<String, String>| {
        let mut env = env.clone();
        env.insert("REDIS_URL".into(), env["REDIS_CLUSTER_URL"].clone());
        env
    };
    let (service_env, operator) = (on_cluster(&service_env), on_cluster(&operator));
    let mut service = ServiceProcess::start(binary(), service_env).unwrap();
    service.wait_ready(Duration::from_secs(120)).await.unwrap();
    let (code, rebuilt, stderr) = tool(&operator, &["profile", "rebuild-redis"]).await;
    assert_eq!(code, 0, "rebuild-redis on the cluster: {stderr}");
    assert!(!rebuilt.starts_with("rebuilt 0 "), "{rebuilt}");
    std::fs::write(
        &events,
        format!("{{\"device_id\":\"{device}-cluster\",\"city\":\"Sharded\"}}\n"),
    )
    .unwrap();
    let (code, _, stderr) = tool(&operator, &["profile", "publish", &events_path]).await;
    assert_eq!(code, 0, "profile publish: {stderr}");
    let checked = eventually(
        Duration::from_secs(60),
        "the cluster agreeing with Cassandra",
        || async {
            let (code, out, _) = tool(&operator, &["profile", "verify"]).await;
            (code == 0).then_some(out)
        },
    )
    .await;
    assert!(checked.starts_with("0 of "), "{checked}");
    let cached = run_get(&operator, &["--timeout", "20"]).await;
    assert_eq!(
        cached.reply["status"], 200,
        "the cache from the cluster: {cached:?}"
    );
    assert!(service.terminate().await.unwrap().success());
    assert_no_secret("the service's log", &service.log.join("\n"), &secrets);
    drop(stack);
}
