//! The Bruin client against the simulator: one shared token (reused, refreshed once on expiry
//! or 401 however many calls run at once), inventory and management status, retries.

use std::time::Duration;

use futures::future::join_all;
use hawkeye_customer_cache::apis::{ApiError, BruinClient};
use hawkeye_customer_cache::config::{BruinSettings, Secret};
use hawkeye_devtools::sim::{Category, Device, Fault, Route, RunningSim, SimConfig};
use hawkeye_devtools::testkit::refresh::start_sim;

use crate::common::apis::{bruin_client, fast_retry, metrics};

fn serials(sim: &RunningSim, count: usize) -> Vec<String> {
    sim.fleet()
        .devices
        .iter()
        .take(count)
        .map(|d| d.serial.clone())
        .collect()
}

fn first(sim: &RunningSim, wanted: impl Fn(&Device) -> bool) -> Device {
    sim.fleet()
        .devices
        .iter()
        .find(|d| wanted(d))
        .cloned()
        .expect("no such device in the fleet")
}

#[tokio::test]
async fn one_token_serves_many_concurrent_calls() {
    let sim = start_sim(SimConfig {
        devices: 200,
        ..SimConfig::default()
    })
    .await;
    sim.set_latency(Duration::from_millis(20));
    let registry = metrics();
    let client = bruin_client(&sim, registry.clone());

    let serials = serials(&sim, 200);
    let answers = join_all(serials.iter().map(|serial| client.inventory(serial))).await;
    for (serial, answer) in serials.iter().zip(answers) {
        let expected = &sim.fleet().device(serial).unwrap().documents;
        assert_eq!(answer.unwrap().len(), expected.len(), "{serial}");
    }
    let stats = sim.stats();
    assert_eq!(stats.token_grants, 1);
    assert_eq!(stats.token_calls, 1);
    assert!(stats.max_bruin_in_flight > 1, "calls ran one at a time");
    assert_eq!(
        registry
            .api_requests
            .with_label_values(&["bruin_token", "ok"])
            .get(),
        1
    );
    assert_eq!(
        registry
            .api_requests
            .with_label_values(&["bruin_inventory", "ok"])
            .get(),
        200
    );
}

#[tokio::test]
async fn a_revoked_token_is_replaced_once_for_all_concurrent_callers() {
    let sim = start_sim(SimConfig {
        devices: 100,
        ..SimConfig::default()
    })
    .await;
    let client = bruin_client(&sim, metrics());
    let serials = serials(&sim, 100);
    client.inventory(&serials[0]).await.unwrap();

    sim.expire_tokens();
    sim.set_latency(Duration::from_millis(20));
    let answers = join_all(serials.iter().map(|serial| client.inventory(serial))).await;
    assert!(answers.iter().all(Result::is_ok));
    let stats = sim.stats();
    assert_eq!(
        stats.token_grants, 2,
        "one grant at first, one after the revocation"
    );
    assert!(stats.unauthorized >= 1);
}

#[tokio::test]
async fn a_token_is_renewed_when_its_lifetime_ends() {
    let sim = start_sim(SimConfig {
        devices: 10,
        token_ttl_secs: 1,
        ..SimConfig::default()
    })
    .await;
    let client = bruin_client(&sim, metrics());
    let serial = &serials(&sim, 1)[0];
    client.inventory(serial).await.unwrap();

    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.inventory(serial).await.unwrap();
    assert_eq!(sim.stats().token_grants, 2);
}

#[tokio::test]
async fn management_status_is_the_attribute_value_with_its_en_dash() {
    let sim = start_sim(SimConfig::default()).await;
    let client = bruin_client(&sim, metrics());
    let kept = first(&sim, |d| {
        d.category == Category::Monitorable && !d.multiple_inventories
    });

    let documents = client.inventory(&kept.serial).await.unwrap();
    let valid = documents
        .iter()
        .find(|doc| {
            doc.status.as_deref() == Some("A")
                && doc.service_number.as_deref() == Some(&kept.serial)
        })
        .unwrap();
    assert!(valid.client_id.is_number(), "clientID keeps its JSON type");
    let status = client
        .management_status(&valid.client_id, &kept.serial)
        .await
        .unwrap();
    let expected = kept
        .management_status(&valid.client_id.to_string())
        .map(str::to_string);
    assert_eq!(status, expected);
    assert!(status.unwrap().contains('\u{2013}') || expected.as_deref() == Some("Pending"));

    let without = first(&sim, |d| {
        d.category == Category::Unmonitorable
            && d.management_status(&d.client.as_ref().unwrap().client_id.to_string())
                .is_none()
    });
    let client_id = serde_json::json!(without.client.unwrap().client_id);
    assert_eq!(
        client
            .management_status(&client_id, &without.serial)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn transient_errors_of_calls_and_token_are_retried() {
    let sim = start_sim(SimConfig {
        devices: 10,
        ..SimConfig::default()
    })
    .await;
    sim.inject(Route::Token, [Fault::Unavailable]);
    sim.inject(
        Route::Inventory,
        [
            Fault::ServerError,
            Fault::RateLimited {
                retry_after_secs: 0,
            },
        ],
    );
    let client = bruin_client(&sim, metrics());
    let serial = &serials(&sim, 1)[0];

    let documents = client.inventory(serial).await.unwrap();
    assert_eq!(
        documents.len(),
        sim.fleet().device(serial).unwrap().documents.len()
    );
    let stats = sim.stats();
    assert_eq!(
        (stats.token_calls, stats.inventory_calls, stats.faults),
        (2, 3, 3)
    );
}

#[tokio::test]
async fn a_serial_that_keeps_failing_is_an_error_after_the_attempts() {
    let sim = start_sim(SimConfig {
        devices: 50,
        ..SimConfig::default()
    })
    .await;
    let failing = sim.fail_bruin_serials(0.1);
    assert_eq!(
        failing.len(),
        sim.fleet()
            .devices
            .iter()
            .filter(|d| d.category != Category::NeverContacted)
            .count()
            / 10
    );
    let client = bruin_client(&sim, metrics());

    let error = client.inventory(&failing[0]).await.unwrap_err();
    assert!(
        matches!(error, ApiError::Status { status: 500, .. }),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert_eq!(
        sim.stats().inventory_calls,
        u64::from(fast_retry().max_attempts.unwrap())
    );
}

#[tokio::test]
async fn a_wrong_client_secret_is_refused_without_showing_it() {
    let sim = start_sim(SimConfig {
        devices: 10,
        ..SimConfig::default()
    })
    .await;
    let settings = BruinSettings {
        client_secret: Secret::new("s3cr3t-wrong"),
        ..sim.bruin_settings()
    };
    let client = BruinClient::new(&settings, metrics())
        .unwrap()
        .with_retry_policy(fast_retry());
    let serial = &serials(&sim, 1)[0];

    let error = client.inventory(serial).await.unwrap_err();
    assert!(
        matches!(error, ApiError::CredentialsRefused { status: 401, .. }),
        "{error:?}"
    );
    assert!(!error.is_transient());
    // Callers right after a refusal do not go back to the token server.
    let again = client.inventory(serial).await.unwrap_err();
    assert!(
        matches!(again, ApiError::TokenUnavailable { .. }),
        "{again:?}"
    );
    for text in [error.to_string(), format!("{error:?}"), again.to_string()] {
        assert!(!text.contains("s3cr3t"), "{text}");
    }
    let stats = sim.stats();
    assert_eq!((stats.token_calls, stats.inventory_calls), (1, 0));
}
