//! The service starts against the real stack, turns ready, creates its table, stops cleanly on
//! SIGTERM, and refuses bad settings with one line naming the setting.

use std::time::Duration;

use hawkeye_devtools::service::{free_port, ServiceProcess};
use hawkeye_devtools::testkit::service::{binary, isolated_env, run_to_exit};
use hawkeye_devtools::testkit::{cassandra_session, unique};

#[tokio::test]
async fn starts_ready_creates_the_table_and_stops_on_sigterm() {
    let mut env = isolated_env();
    let keyspace = unique("hcc_start");
    env.insert("CASSANDRA_KEYSPACE".into(), keyspace.clone());
    let mut service = ServiceProcess::start(binary(), env).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();

    let ready: serde_json::Value = reqwest::get(service.http_url("/ready"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
    for store in ["kafka", "redis", "cassandra"] {
        assert_eq!(ready["checks"][store], "ok", "{ready}");
    }
    let health = reqwest::get(service.http_url("/health")).await.unwrap();
    assert!(health.status().is_success());
    let metrics = service.metrics().await.unwrap();
    assert!(metrics.contains("hawkeye_customer_cache_profile_events_consumed_total"));

    let session = cassandra_session().await;
    let rows = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = 'device_profile'",
            (keyspace.as_str(),),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let columns: Vec<String> = rows
        .rows::<(String,)>()
        .unwrap()
        .map(|row| row.unwrap().0)
        .collect();
    for column in [
        "device_id",
        "first_access",
        "uaspec",
        "client_id",
        "management_status",
    ] {
        assert!(
            columns.iter().any(|c| c == column),
            "missing {column} in {columns:?}"
        );
    }

    let status = service.terminate().await.unwrap();
    assert!(
        status.success(),
        "exit {status}: {}",
        service.log.join("\n")
    );
    assert!(service.log.iter().any(|line| line.contains("stopped")));
    session
        .query_unpaged(format!("DROP KEYSPACE {keyspace}"), ())
        .await
        .unwrap();
}

fn the_error_line(stderr: &[String]) -> &str {
    let errors: Vec<&String> = stderr.iter().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line in {stderr:#?}");
    errors[0]
}

#[tokio::test]
async fn empty_brokers_stop_start_up_naming_the_setting() {
    let mut env = isolated_env();
    env.insert("KAFKA_BROKERS".into(), "".into());
    let (code, stderr) = run_to_exit(&env, Duration::from_secs(30)).await;
    assert_eq!(code, 2);
    assert_eq!(
        the_error_line(&stderr),
        "error: invalid setting KAFKA_BROKERS: is empty"
    );
}

#[tokio::test]
async fn a_malformed_number_names_the_setting() {
    let mut env = isolated_env();
    env.insert("BRUIN_CONCURRENCY".into(), "lots".into());
    let (code, stderr) = run_to_exit(&env, Duration::from_secs(30)).await;
    assert_eq!(code, 2);
    assert_eq!(
        the_error_line(&stderr),
        "error: invalid setting BRUIN_CONCURRENCY: \"lots\" is not a positive whole number"
    );
}

#[tokio::test]
async fn unreachable_cassandra_stops_start_up_naming_the_setting() {
    let mut env = isolated_env();
    env.insert("CASSANDRA_NODES".into(), "127.0.0.1:1".into());
    let (code, stderr) = run_to_exit(&env, Duration::from_secs(60)).await;
    assert_eq!(code, 1);
    let line = the_error_line(&stderr);
    assert!(line.contains("CASSANDRA_NODES"), "{line}");
}

#[tokio::test]
async fn a_wrong_redis_password_is_not_echoed() {
    let mut env = isolated_env();
    let url = env["REDIS_URL"].replace("redis://", "redis://:not-the-password@");
    env.insert("REDIS_URL".into(), url);
    let (code, stderr) = run_to_exit(&env, Duration::from_secs(60)).await;
    // The stack's Redis has no password: AUTH fails, and the password must not be printed.
    assert_eq!(code, 1);
    let line = the_error_line(&stderr);
    assert!(line.contains("REDIS_URL"), "{line}");
    assert!(
        stderr.iter().all(|l| !l.contains("not-the-password")),
        "{stderr:#?}"
    );
}

#[tokio::test]
async fn unreachable_kafka_stops_start_up_with_one_line() {
    let mut env = isolated_env();
    let closed = format!("127.0.0.1:{}", free_port());
    env.insert("KAFKA_BROKERS".into(), closed);
    let (code, stderr) = run_to_exit(&env, Duration::from_secs(60)).await;
    assert_eq!(code, 1);
    let line = the_error_line(&stderr);
    assert!(
        line.contains("cannot reach Kafka (KAFKA_BROKERS)"),
        "{line}"
    );
    // librdkafka reports the refused connections many times a second: none of that reaches
    // the operator before the one line that says what is wrong.
    let noise: Vec<&String> = stderr.iter().filter(|l| l.contains("librdkafka")).collect();
    assert!(noise.is_empty(), "{noise:#?}");
}

#[tokio::test]
async fn cassandra_cluster_settings_shape_the_keyspace_and_the_routing() {
    let mut env = isolated_env();
    let keyspace = unique("hcc_dc");
    env.insert("CASSANDRA_KEYSPACE".into(), keyspace.clone());
    env.insert(
        "CASSANDRA_REPLICATION".into(),
        "{'class': 'NetworkTopologyStrategy', 'datacenter1': 1}".into(),
    );
    env.insert("CASSANDRA_LOCAL_DC".into(), "datacenter1".into());
    env.insert("CASSANDRA_CONSISTENCY".into(), "ALL".into());
    env.insert("CASSANDRA_WRITE_CONCURRENCY".into(), "8".into());
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let session = cassandra_session().await;
    let rows = session
        .query_unpaged(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (keyspace.as_str(),),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let (replication,): (std::collections::HashMap<String, String>,) = rows.single_row().unwrap();
    assert!(
        replication["class"].ends_with("NetworkTopologyStrategy"),
        "{replication:?}"
    );
    assert_eq!(replication["datacenter1"], "1");
    assert!(service.terminate().await.unwrap().success());
    session
        .query_unpaged(format!("DROP KEYSPACE {keyspace}"), ())
        .await
        .unwrap();

    // A datacenter without nodes: start-up stops with one line naming the setting.
    let mut elsewhere = isolated_env();
    elsewhere.insert("CASSANDRA_LOCAL_DC".into(), "nowhere".into());
    let (code, stderr) = run_to_exit(&elsewhere, Duration::from_secs(60)).await;
    assert_eq!(code, 1);
    let line = the_error_line(&stderr);
    assert!(line.contains("CASSANDRA_LOCAL_DC"), "{line}");
}
