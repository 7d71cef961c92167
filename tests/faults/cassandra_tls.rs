//! Security: TLS to Cassandra. A second Cassandra node of the test's own accepts TLS clients
//! only (`STACK_CASSANDRA_TLS=on`, a self-signed certificate for 127.0.0.1): the service with
//! `CASSANDRA_TLS=true` and that certificate as `CASSANDRA_TLS_CA_FILE` pushes profiles into it;
//! without the CA file (the certificate is not trusted) or without TLS, start-up fails with one
//! line naming the settings.

use std::time::Duration;

use hawkeye_devtools::testkit::profiles::eventually;
use hawkeye_devtools::testkit::service::isolated_env;

use crate::harness::{refused_start_up, start_and_push_one};
use crate::own_cassandra::OwnCassandra;

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn profiles_reach_a_tls_only_cassandra_and_untrusted_or_plain_connections_stop_start_up() {
    let cassandra = OwnCassandra::start(&[("STACK_CASSANDRA_TLS", "on")]);
    let mut env = isolated_env();
    env.extend(cassandra.service_env());
    assert_eq!(env["CASSANDRA_TLS"], "true");
    assert!(env.contains_key("CASSANDRA_TLS_CA_FILE"));

    let (mut service, device) = start_and_push_one(&env).await;
    let select = format!(
        "SELECT city FROM {}.device_profile WHERE device_id = '{device}'",
        env["CASSANDRA_KEYSPACE"]
    );
    eventually(
        Duration::from_secs(60),
        "the profile in the TLS-only Cassandra",
        || async { cassandra.cql(&select).contains("Secure").then_some(()) },
    )
    .await;
    assert!(service.terminate().await.unwrap().success());

    // The system's roots do not know the node's self-signed certificate.
    env.remove("CASSANDRA_TLS_CA_FILE");
    let untrusted = refused_start_up(&env, "CASSANDRA_TLS", &[]).await;
    assert!(
        untrusted.contains("certificate"),
        "the line says why: {untrusted}"
    );

    env.insert("CASSANDRA_TLS".into(), "false".into());
    let plain = refused_start_up(&env, "cannot set up Cassandra", &[]).await;
    assert!(plain.contains("(CASSANDRA_NODES)"), "{plain}");
}
