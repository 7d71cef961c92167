//! Scenario 5: Hawkeye and Bruin faults during refreshes. Every refresh that fails (Hawkeye
//! down, a probe page missing, rate limits without end, truncated or invalid JSON, a Hawkeye
//! login failing, too many Bruin errors) leaves the previous cache in place, untouched (same
//! generation, same entries); a refresh that rides out transient faults (5xx, 429, expired
//! sessions and tokens, one truncated page, and in the full run a timeout) is exact.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hawkeye_customer_cache::cache::keys::CacheKeys;
use hawkeye_devtools::sim::{Fault, Route, RunningSim, SimConfig};
use hawkeye_devtools::testkit::cache_fixture::redis_connection;
use hawkeye_devtools::testkit::refresh::{
    entry_set, live_entry_set, monitorable, refresh_env, start_sim, start_with_notifications,
    trigger_refresh,
};
use redis::AsyncCommands;

use crate::harness::{full, size, Figures};

const RUN: Duration = Duration::from_secs(180);

/// A fault that must fail a refresh: switched on, one refresh, switched off again.
struct FailingCase {
    name: &'static str,
    apply: fn(&RunningSim),
    heal: fn(&RunningSim),
}

fn failing_cases() -> Vec<FailingCase> {
    fn nothing(_: &RunningSim) {}
    vec![
        FailingCase {
            name: "Hawkeye answers 503",
            apply: |sim| sim.set_hawkeye_down(true),
            heal: |sim| sim.set_hawkeye_down(false),
        },
        FailingCase {
            name: "a probe page missing (500 every time)",
            apply: |sim| sim.fail_probe_page(Some(1)),
            heal: |sim| sim.fail_probe_page(None),
        },
        FailingCase {
            name: "429 on every call",
            apply: |sim| sim.set_rate_limit_rate(1.0),
            heal: |sim| sim.set_rate_limit_rate(0.0),
        },
        FailingCase {
            // One per probe fetch attempt (HAWKEYE_MAX_ATTEMPTS=2): a malformed answer is
            // not retried call by call, the whole fetch is.
            name: "truncated JSON, then invalid JSON, from /probes",
            apply: |sim| sim.inject(Route::Probes, [Fault::TruncatedJson, Fault::InvalidJson]),
            heal: nothing,
        },
        FailingCase {
            name: "Bruin inventory failing for 20% of the devices",
            apply: |sim| {
                sim.fail_bruin_serials(0.2);
            },
            heal: |sim| {
                sim.fail_bruin_serials(0.0);
            },
        },
        FailingCase {
            name: "every API call answers 500 or 503",
            apply: |sim| sim.set_error_rate(1.0),
            heal: |sim| sim.set_error_rate(0.0),
        },
    ]
}

/// Transient faults a refresh must ride out, with the exact cache as result.
fn inject_transient_faults(sim: &RunningSim) -> usize {
    sim.expire_sessions();
    sim.expire_tokens();
    let mut probes = vec![
        Fault::ServerError,
        Fault::RateLimited {
            retry_after_secs: 1,
        },
        Fault::Unavailable,
        Fault::TruncatedJson,
    ];
    if full() {
        // The clients' 30 s timeout fires; too slow for the quick run.
        probes.insert(0, Fault::Stall);
    }
    let bruin = [
        Fault::Unavailable,
        Fault::ServerError,
        Fault::RateLimited {
            retry_after_secs: 1,
        },
    ];
    let count = probes.len() + 3 * bruin.len() + 2;
    sim.inject(Route::Probes, probes);
    sim.inject(Route::Login, [Fault::ServerError]);
    sim.inject(Route::Token, [Fault::Unavailable]);
    sim.inject(Route::Inventory, bruin);
    sim.inject(Route::Attribute, bruin);
    sim.inject(Route::Token, bruin);
    count
}

async fn generation(keys: &CacheKeys) -> Option<String> {
    let mut redis = redis_connection().await;
    let meta: HashMap<String, String> = redis.hgetall(keys.meta()).await.expect("meta");
    meta.get("generation").cloned()
}

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn failed_refreshes_keep_the_previous_cache_and_a_successful_one_is_exact() {
    let started = Instant::now();
    let sim = start_sim(SimConfig {
        seed: 7007,
        devices: size(300, 3_000),
        page_limit: 50,
        stall_secs: 35,
        ..SimConfig::default()
    })
    .await;
    let mut env = refresh_env(&sim);
    env.insert("HAWKEYE_MAX_ATTEMPTS".into(), "2".into());
    let (mut service, mut notifications) = start_with_notifications(&env).await;
    notifications
        .wait_for(&mut service, "refresh_succeeded", RUN, |_| true)
        .await;
    let keys = CacheKeys::new(&env["ENVIRONMENT_NAME"]);
    let mut redis = redis_connection().await;
    let expected = entry_set(&sim.expected_cache(&monitorable()));
    assert_eq!(live_entry_set(&mut redis, &keys).await, expected);
    let mut faults = 0;

    for case in failing_cases() {
        let before = generation(&keys).await.expect("a generation");
        (case.apply)(&sim);
        let request_id = trigger_refresh(&env).await;
        let failed = notifications
            .wait_for(&mut service, "refresh_failed", RUN, |n| {
                n["request_id"] == request_id.as_str()
            })
            .await;
        (case.heal)(&sim);
        println!("fault: {}: refresh failed: {}", case.name, failed["reason"]);
        faults += 1;
        assert_eq!(
            generation(&keys).await.as_ref(),
            Some(&before),
            "{}: meta touched",
            case.name
        );
        assert_eq!(
            live_entry_set(&mut redis, &keys).await,
            expected,
            "{}",
            case.name
        );
    }

    let before = generation(&keys).await;
    faults += inject_transient_faults(&sim);
    let request_id = trigger_refresh(&env).await;
    let succeeded = notifications
        .wait_for(&mut service, "refresh_succeeded", RUN, |n| {
            n["request_id"] == request_id.as_str()
        })
        .await;
    assert_eq!(succeeded["devices"], expected.len());
    assert_ne!(generation(&keys).await, before, "a new cache was published");
    assert_eq!(
        live_entry_set(&mut redis, &keys).await,
        expected,
        "the refresh is exact"
    );
    assert!(service.terminate().await.unwrap().success());
    Figures {
        scenario: "Hawkeye/Bruin faults during refreshes (devices in cache)",
        produced: 0,
        stored: expected.len(),
        dead_lettered: 0,
        lost: 0,
        faults,
        started,
    }
    .print();
}
