//! The Hawkeye/Ixia client against the simulator: every page, login and re-login, retries of
//! transient failures, and never a partial list.

use std::time::Duration;

use hawkeye_customer_cache::apis::{ApiError, HawkeyeClient};
use hawkeye_customer_cache::config::{HawkeyeSettings, Secret};
use hawkeye_devtools::service::free_port;
use hawkeye_devtools::sim::{Fault, Route, SimConfig};
use hawkeye_devtools::testkit::refresh::start_sim;

use crate::common::apis::{fast_retry, hawkeye_client, metrics};

fn fleet(devices: usize, page_limit: usize) -> SimConfig {
    SimConfig {
        devices,
        page_limit,
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn every_page_is_read_in_order() {
    // The client asks for 500 per page; the server caps pages at 100.
    let sim = start_sim(fleet(2500, 100)).await;
    let probes = hawkeye_client(&sim, metrics())
        .fetch_probes()
        .await
        .unwrap();

    let serials: Vec<&str> = probes.iter().map(|p| p.serial_number.as_str()).collect();
    let expected: Vec<&str> = sim
        .fleet()
        .devices
        .iter()
        .map(|d| d.serial.as_str())
        .collect();
    assert_eq!(serials, expected);
    let stats = sim.stats();
    assert_eq!(stats.probe_calls, 25);
    assert_eq!(stats.logins, 1);
    // Fields keep the types Hawkeye sent: probeId is a string number.
    assert_eq!(probes[0].probe_id, serde_json::json!("1"));
}

#[tokio::test]
async fn a_wrong_password_is_a_permanent_error_that_does_not_show_it() {
    let sim = start_sim(fleet(10, 100)).await;
    let settings = HawkeyeSettings {
        password: Secret::new("hunter2-wrong"),
        ..sim.hawkeye_settings()
    };
    let client = HawkeyeClient::new(&settings, metrics())
        .unwrap()
        .with_retry_policy(fast_retry());

    let error = client.fetch_probes().await.unwrap_err();
    assert!(
        matches!(error, ApiError::CredentialsRefused { status: 401, .. }),
        "{error:?}"
    );
    assert!(!error.is_transient());
    assert!(!error.to_string().contains("hunter2"), "{error}");
    assert!(!format!("{error:?}").contains("hunter2"));
    assert_eq!(
        sim.stats().login_calls,
        1,
        "refused credentials are not retried"
    );
    assert_eq!(sim.stats().probe_calls, 0);
}

#[tokio::test]
async fn an_expired_session_is_renewed_with_one_login() {
    let sim = start_sim(fleet(300, 100)).await;
    let client = hawkeye_client(&sim, metrics());
    client.fetch_probes().await.unwrap();

    sim.expire_sessions();
    let probes = client.fetch_probes().await.unwrap();
    assert_eq!(probes.len(), 300);
    let stats = sim.stats();
    assert_eq!(stats.logins, 2);
    assert_eq!(
        stats.unauthorized, 1,
        "only the first call after the expiry answered 401"
    );
}

#[tokio::test]
async fn transient_failures_of_a_page_are_retried() {
    let sim = start_sim(fleet(500, 100)).await;
    sim.inject(
        Route::Probes,
        [
            Fault::ServerError,
            Fault::RateLimited {
                retry_after_secs: 0,
            },
            Fault::Stall,
            Fault::Unavailable,
        ],
    );
    let registry = metrics();
    // Long enough that only the stalled call times out on a loaded CI machine (a healthy page
    // timing out would count one retry more than the faults injected).
    let client =
        hawkeye_client(&sim, registry.clone()).with_request_timeout(Duration::from_secs(2));

    let probes = client.fetch_probes().await.unwrap();
    assert_eq!(probes.len(), 500);
    assert_eq!(sim.stats().faults, 4);
    assert_eq!(
        registry
            .api_requests
            .with_label_values(&["hawkeye", "retry"])
            .get(),
        4
    );
    assert_eq!(
        registry
            .api_requests
            .with_label_values(&["hawkeye", "ok"])
            .get(),
        5
    );
}

#[tokio::test]
async fn a_page_that_keeps_failing_fails_the_whole_fetch() {
    let sim = start_sim(fleet(1000, 100)).await;
    sim.fail_probe_page(Some(3));
    let client = hawkeye_client(&sim, metrics());

    let error = client.fetch_probes().await.unwrap_err();
    assert!(
        matches!(error, ApiError::Status { status: 500, .. }),
        "{error:?}"
    );
    // Pages 0-2 once, page 3 for every attempt of the policy; nothing after it.
    assert_eq!(
        sim.stats().probe_calls,
        3 + u64::from(fast_retry().max_attempts.unwrap())
    );

    sim.fail_probe_page(None);
    assert_eq!(client.fetch_probes().await.unwrap().len(), 1000);
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_error() {
    let settings = HawkeyeSettings {
        base_url: format!("http://127.0.0.1:{}", free_port()).parse().unwrap(),
        username: "user".into(),
        password: Secret::new("hunter2"),
    };
    let client = HawkeyeClient::new(&settings, metrics())
        .unwrap()
        .with_retry_policy(fast_retry());
    let error = client.fetch_probes().await.unwrap_err();
    assert!(matches!(error, ApiError::Connection { .. }), "{error:?}");
    assert!(error.is_transient());
    assert!(!error.to_string().contains("hunter2"));
}
