//! Security: secrets never appear in logs, errors, metrics or the HTTP endpoints. The service
//! runs at RUST_LOG=debug with distinctive secrets in every secret setting through a refresh
//! (and a failed one), profile events (good and bad), cache requests and start-up errors;
//! every captured line and body is searched for each secret.

use std::time::Duration;

use base64::Engine;
use hawkeye_devtools::sim::SimConfig;
use hawkeye_devtools::testkit::profiles::{produce, produce_json, producer};
use hawkeye_devtools::testkit::refresh::{
    refresh_env, start_sim, start_with_notifications, trigger_refresh,
};
use hawkeye_devtools::testkit::request_reply::run_get;
use hawkeye_devtools::testkit::service::run_to_exit;
use hawkeye_devtools::testkit::unique;
use serde_json::json;

use crate::redis_auth::PasswordRedis;

const HAWKEYE_SECRET: &str = "HkPw-31f9c7e2";
const BRUIN_SECRET: &str = "BrCs-8d04a6b5";
const CASSANDRA_SECRET: &str = "CsPw-5c7e19d3";
const REDIS_SECRET: &str = "RdPw-a2b86f40";
const KAFKA_SECRET: &str = "KfPw-e6913b2c";

fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what} shows the secret {secret}:\n{text}"
        );
    }
}

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn secrets_appear_in_no_log_line_error_metric_or_endpoint() {
    let sim = start_sim(SimConfig {
        devices: 60,
        password: HAWKEYE_SECRET.into(),
        client_secret: BRUIN_SECRET.into(),
        ..SimConfig::default()
    })
    .await;
    let redis = PasswordRedis::start(REDIS_SECRET).await;
    let mut env = refresh_env(&sim);
    env.insert("REDIS_URL".into(), redis.url());
    env.insert("CASSANDRA_USERNAME".into(), "cassandra".into());
    env.insert("CASSANDRA_PASSWORD".into(), CASSANDRA_SECRET.into());
    // A secret-bearing librdkafka key that a plaintext connection accepts and ignores.
    env.insert(
        "KAFKA_CONFIG".into(),
        format!("ssl.key.password={KAFKA_SECRET}"),
    );
    env.insert("RUST_LOG".into(), "debug".into());
    env.insert("HAWKEYE_MAX_ATTEMPTS".into(), "1".into());
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{BRUIN_SECRET}", sim.config().client_id));
    let secrets: Vec<String> = [
        HAWKEYE_SECRET,
        BRUIN_SECRET,
        CASSANDRA_SECRET,
        REDIS_SECRET,
        KAFKA_SECRET,
    ]
    .map(String::from)
    .into_iter()
    .chain([basic])
    .collect();

    let (mut service, mut notifications) = start_with_notifications(&env).await;
    notifications
        .wait_for(
            &mut service,
            "refresh_succeeded",
            Duration::from_secs(120),
            |_| true,
        )
        .await;
    sim.expire_tokens();
    sim.expire_sessions();
    sim.set_hawkeye_down(true);
    let failing = trigger_refresh(&env).await;
    notifications
        .wait_for(
            &mut service,
            "refresh_failed",
            Duration::from_secs(120),
            |n| n["request_id"] == failing.as_str(),
        )
        .await;
    sim.set_hawkeye_down(false);
    let kafka = producer();
    produce_json(
        &kafka,
        &env,
        &json!({"device_id": unique("secret"), "city": "Quiet"}),
    )
    .await;
    produce(&kafka, &env, Some("bad"), b"{not json").await;
    let get = run_get(&env, &["--timeout", "30"]).await;
    assert_eq!(get.reply["status"], 200, "{get:?}");
    assert_no_secret(
        "the get client",
        &format!("{}{}", get.stderr, get.reply),
        &secrets,
    );

    for path in ["/health", "/ready", "/metrics"] {
        let body = reqwest::get(service.http_url(path))
            .await
            .expect(path)
            .text()
            .await
            .expect(path);
        assert_no_secret(path, &body, &secrets);
    }
    assert!(service.terminate().await.unwrap().success());
    assert!(
        service.log.len() > 50,
        "debug logging was on: {} lines",
        service.log.len()
    );
    assert_no_secret("the service log", &service.log.join("\n"), &secrets);
    for notification in &notifications.seen {
        assert_no_secret("a notification", &notification.to_string(), &secrets);
    }

    // Start-up errors: a refused Redis password, a KAFKA_CONFIG key librdkafka rejects.
    let mut failing_env = env.clone();
    failing_env.insert("REDIS_URL".into(), redis.url_with("RdPw-wrong-77c1"));
    failing_env.insert(
        "KAFKA_CONFIG".into(),
        format!("no.such.property={KAFKA_SECRET}"),
    );
    let (code, stderr) = run_to_exit(&failing_env, Duration::from_secs(60)).await;
    assert_ne!(code, 0);
    let mut all = secrets.clone();
    all.push("RdPw-wrong-77c1".into());
    assert_no_secret("start-up errors", &stderr.join("\n"), &all);
    failing_env.insert("KAFKA_CONFIG".into(), String::new());
    let (code, stderr) = run_to_exit(&failing_env, Duration::from_secs(60)).await;
    assert_eq!(code, 1, "{stderr:?}");
    assert_no_secret("start-up errors", &stderr.join("\n"), &all);
}
