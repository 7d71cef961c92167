//! Replies follow Redis: a newly published generation is served by the next request, and a
//! `last_contact` pushed for a cached device (by `push_last_contact`, or by a device profile
//! event) shows in the next reply, the entry otherwise as stored, without waiting for a refresh;
//! one pushed while a refresh runs is in the cache that refresh publishes.

use std::time::Duration;

use chrono::DateTime;
use hawkeye_customer_cache::cache::keys::CacheKeys;
use hawkeye_customer_cache::cache::last_contact::{push_last_contact, PushOutcome};
use hawkeye_customer_cache::profile::LastContact;
use hawkeye_customer_cache::stores::redis::RedisConnection;
use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::sim::SimConfig;
use hawkeye_devtools::testkit::cache_fixture::{entry, redis_connection, CacheFixture};
use hawkeye_devtools::testkit::profiles::{eventually, produce_json, producer};
use hawkeye_devtools::testkit::refresh::{
    monitorable, refresh_env, start_sim, start_with_notifications,
};
use hawkeye_devtools::testkit::request_reply::{run_get, serials_after};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use redis::AsyncCommands;
use serde_json::{json, Value};

fn last_contact(text: &str) -> LastContact {
    LastContact {
        at: DateTime::parse_from_rfc3339(text).unwrap().to_utc(),
        text: text.to_string(),
    }
}

async fn body(env: &std::collections::HashMap<String, String>) -> Value {
    let run = run_get(env, &[]).await;
    assert_eq!(run.reply["status"], 200, "{run:?}");
    run.reply["body"].clone()
}

#[tokio::test]
async fn new_generations_and_pushed_last_contacts_are_served_at_once() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let cache = CacheFixture::new(&env).await;
    let mut redis = cache.redis.clone();

    cache
        .publish(&[
            entry("A", "2020-01-01T00:00:00Z"),
            entry("B", "2020-01-02T00:00:00Z"),
        ])
        .await;
    assert_eq!(serials_after(&env, &[]).await, ["A", "B"]);

    let second = [
        entry("A", "2020-01-05T00:00:00Z"),
        entry("B", "2020-01-02T00:00:00Z"),
        entry("C", "2020-01-03T00:00:00Z"),
    ];
    cache.publish(&second).await;
    assert_eq!(body(&env).await, json!([second[1], second[2], second[0]]));

    let pushed = last_contact("2021-01-01T00:00:00+01:00");
    let outcome = push_last_contact(&mut redis, &cache.keys, "B", &pushed)
        .await
        .unwrap();
    assert_eq!(outcome, PushOutcome::Updated);
    let mut expected_b = second[1].clone();
    expected_b["last_contact"] = json!("2021-01-01T00:00:00+01:00");
    assert_eq!(body(&env).await, json!([second[2], second[0], expected_b]));
    let recent = serials_after(&env, &["--last-contact-filter", "2020-12-31T22:59:59Z"]).await;
    assert_eq!(recent, ["B"]);
    // Every other key and value as stored; only last_contact changed.
    let stored: Value = serde_json::from_str(&cache.stored("B").await.unwrap()).unwrap();
    assert_eq!(stored, expected_b);

    let older = last_contact("2020-06-01T00:00:00Z");
    let outcome = push_last_contact(&mut redis, &cache.keys, "B", &older)
        .await
        .unwrap();
    assert_eq!(outcome, PushOutcome::NotNewer);
    let unknown = push_last_contact(&mut redis, &cache.keys, "ZZ", &pushed)
        .await
        .unwrap();
    assert_eq!(unknown, PushOutcome::NotCached);

    // Several pushes between two requests: the latest of each device counts.
    for (serial, at) in [
        ("A", "2022-01-01T00:00:00Z"),
        ("C", "2022-02-01T00:00:00Z"),
        ("A", "2022-03-01T00:00:00Z"),
    ] {
        push_last_contact(&mut redis, &cache.keys, serial, &last_contact(at))
            .await
            .unwrap();
    }
    assert_eq!(serials_after(&env, &[]).await, ["B", "C", "A"]);
    let body = body(&env).await;
    assert_eq!(body[2]["last_contact"], "2022-03-01T00:00:00Z");

    // A new generation replaces the pushed values.
    cache.publish(&second).await;
    assert_eq!(serials_after(&env, &[]).await, ["B", "C", "A"]);
    assert_eq!(body_of_b(&env).await, second[1]);
    cache.remove().await;
}

async fn body_of_b(env: &std::collections::HashMap<String, String>) -> Value {
    body(env)
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["serial_number"] == "B")
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn a_profile_event_with_a_newer_last_contact_shows_in_the_next_get() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let cache = CacheFixture::new(&env).await;
    let cached = entry("P1", "2020-01-01T00:00:00Z");
    cache.publish(std::slice::from_ref(&cached)).await;
    assert_eq!(body(&env).await, json!([cached]));

    let events = producer();
    produce_json(
        &events,
        &env,
        &json!({"device_id": "P1", "city": "Madrid", "last_contact": "2024-05-01T10:00:00+02:00"}),
    )
    .await;
    // Older than what is cached: changes nothing in the cache.
    produce_json(
        &events,
        &env,
        &json!({"device_id": "P1", "last_contact": "2019-01-01T00:00:00Z"}),
    )
    .await;
    let mut expected = cached.clone();
    expected["last_contact"] = json!("2024-05-01T10:00:00+02:00");
    eventually(
        Duration::from_secs(60),
        "the pushed last_contact in a get",
        || {
            let env = env.clone();
            let expected = expected.clone();
            async move { (body(&env).await == json!([expected])).then_some(()) }
        },
    )
    .await;
    let recent = serials_after(&env, &["--last-contact-filter", "2024-05-01 07:59:59"]).await;
    assert_eq!(recent, ["P1"]);
    cache.remove().await;
}

/// An event that lands after the refresh wrote a device's profile and before it published the
/// cache was pushed into the old cache (here there is none); the refresh brings it into the
/// cache it publishes.
#[tokio::test]
async fn a_last_contact_pushed_during_a_refresh_is_in_the_cache_it_publishes() {
    // Slow Bruin answers, four at a time: the refresh takes seconds after its first upserts.
    let sim = start_sim(SimConfig {
        seed: 4401,
        devices: 600,
        latency_ms: 20,
        ..SimConfig::default()
    })
    .await;
    let mut env = refresh_env(&sim);
    env.insert("BRUIN_CONCURRENCY".into(), "4".into());
    let first = sim.expected_cache(&monitorable())[0]["serial_number"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut service, mut notifications) = start_with_notifications(&env).await;
    let env = service.env.clone();
    let mut redis = redis_connection().await;
    let profile_key = format!("{}{first}", env["REDIS_DEVICE_KEY_PREFIX"]);
    let stored_contact = |redis: RedisConnection| {
        let key = profile_key.clone();
        async move {
            let mut redis = redis;
            let contact: Option<String> = redis.hget(&key, "last_contact").await.unwrap();
            contact
        }
    };
    eventually(
        Duration::from_secs(60),
        "the refresh's upsert of the first kept device",
        || stored_contact(redis.clone()),
    )
    .await;

    // Later than any the simulator gives, and not ahead of the service's clock.
    let pushed = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let pushed = pushed.as_str();
    produce_json(
        &producer(),
        &env,
        &json!({"device_id": first, "last_contact": pushed}),
    )
    .await;
    eventually(Duration::from_secs(30), "the event in the profile", || {
        let redis = redis.clone();
        async move { (stored_contact(redis).await.as_deref() == Some(pushed)).then_some(()) }
    })
    .await;
    let keys = CacheKeys::new(&env["ENVIRONMENT_NAME"]);
    let generation: Option<String> = redis.hget(keys.meta(), "generation").await.unwrap();
    assert_eq!(generation, None, "the event must land before the publish");

    notifications
        .wait_for(
            &mut service,
            "refresh_succeeded",
            Duration::from_secs(120),
            |_| true,
        )
        .await;
    let entry = body(&env)
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["serial_number"] == first.as_str())
        .cloned()
        .unwrap();
    assert_eq!(entry["last_contact"], pushed, "{entry}");
    assert!(service.terminate().await.unwrap().success());
}
