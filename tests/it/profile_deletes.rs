//! Deletes (`CONTRACT.md` §3 "Deletes"): a Kafka tombstone keyed by a device id deletes the
//! device from both stores at its record timestamp. Redis drops the hash (a field newer than
//! the delete stays; `firstaccess`, `user_declared_on`, `last_contact` go whatever their age)
//! and keeps `deleted_at` in the versions hash; Cassandra drops the row the same way and keeps
//! the delete in `device_profile_deletes`. An event not newer than the delete never brings
//! anything back, however late it comes and whichever instance reads it; a newer one recreates
//! the device with its own fields only, starting a new life (`first_access` the earliest seen
//! after the delete); a delete not newer than the last changes nothing more. A delete and
//! events of its device in one batch resolve as they would apart, also on a Redis Cluster. A
//! tombstone without a usable key is dead-lettered with its own reason. `profile verify` agrees
//! on deleted and recreated devices and `profile rebuild-redis` brings no deleted one back.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hawkeye_customer_cache::stores::redis::versions_key;
use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::cache_fixture::redis_connection;
use hawkeye_devtools::testkit::profiles::{
    cassandra_row, delete_redis_device, drop_keyspace, env_with_own_keyspace, eventually,
    first_access_in_both, header, produce_json, producer, records_in, redis_hash, redis_versions,
    wait_for_city, TopicReader,
};
use hawkeye_devtools::testkit::request_reply::partition_ids;
use hawkeye_devtools::testkit::service::{binary, isolated_env, run_command};
use hawkeye_devtools::testkit::{
    cassandra_session, redis_cluster, redis_cluster_url, stack, unique,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use redis::AsyncCommands;
use scylla::client::session::Session;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
const READY: Duration = Duration::from_secs(60);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// The `first_access` of a device before its delete: 2020-09-13T12:26:40Z.
const F_OLD: i64 = 1_600_000_000_000;
/// Later first accesses, seen after a delete.
const F_MID: i64 = F_OLD + HOUR_MS;
const F_NEW: i64 = F_OLD + DAY_MS;
const DELETED: &str = "hawkeye_customer_cache_profile_devices_deleted_total";
/// The fields a delete removes whatever their age (they keep no version), in Redis and in
/// Cassandra.
const UNVERSIONED_IN_REDIS: [&str; 3] = ["firstaccess", "user_declared_on", "last_contact"];
const UNVERSIONED_IN_CASSANDRA: [&str; 3] = ["first_access", "user_declared_on", "last_contact"];

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Versions of a test: an hour ago, so that every version and record timestamp is a plausible
/// one (in the past, within the topic's retention).
fn start_of_test() -> i64 {
    now_ms() - HOUR_MS
}

/// How `SELECT JSON` renders a timestamp of `epoch_ms`.
fn cql_timestamp(epoch_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(epoch_ms)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S%.3fZ")
        .to_string()
}

/// An event carrying every kind of field: newest-wins ones, `first_access` ([`F_OLD`]), a
/// declaration (so `user_declared_on`) and a `last_contact`.
fn full_event(device: &str, version: i64) -> Value {
    json!({
        "device_id": device, "api_last_updated_on": version, "city": "Pune",
        "state": "Maharashtra", "country": "India", "uaspec": {"agent": "Chrome"},
        "device_spec": {"os": "Android"}, "first_access": F_OLD,
        "user_declared_state": "Goa", "last_contact": "2024-01-09T00:00:00Z"
    })
}

/// Produces a record to the service's `TOPIC_PROFILE_UPDATES`, with a record timestamp when
/// given (the producer's clock otherwise).
async fn send(
    producer: &FutureProducer,
    env: &HashMap<String, String>,
    key: Option<&str>,
    value: Option<&[u8]>,
    timestamp: Option<i64>,
) {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&env["TOPIC_PROFILE_UPDATES"]);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(value) = value {
        record = record.payload(value);
    }
    if let Some(timestamp) = timestamp {
        record = record.timestamp(timestamp);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .expect("cannot produce a record");
}

/// The delete of `key` at `at` (epoch ms): a record without a value, timestamped `at`.
async fn tombstone(producer: &FutureProducer, env: &HashMap<String, String>, key: &str, at: i64) {
    send(producer, env, Some(key), None, Some(at)).await;
}

/// A JSON event keyed by its device_id, with the record timestamp `at`.
async fn produce_at(
    producer: &FutureProducer,
    env: &HashMap<String, String>,
    event: &Value,
    at: i64,
) {
    let value = event.to_string();
    send(
        producer,
        env,
        event["device_id"].as_str(),
        Some(value.as_bytes()),
        Some(at),
    )
    .await;
}

/// Per partition of `topic`: (offset committed by `group`, end offset). Blocking.
fn committed_and_end(group: &str, topic: &str) -> Vec<(Option<i64>, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack().kafka_brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let timeout = Duration::from_secs(10);
    let mut list = TopicPartitionList::new();
    for partition in partition_ids(&consumer, topic, timeout) {
        list.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(list, timeout)
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|element| {
            let (_, end) = consumer
                .fetch_watermarks(topic, element.partition(), timeout)
                .expect("watermarks");
            match element.offset() {
                Offset::Offset(offset) => (Some(offset), end),
                _ => (None, end),
            }
        })
        .collect()
}

/// Waits until the service committed every record of its profile topic produced so far. An
/// offset is committed only once both stores acknowledged the record (or it was
/// dead-lettered), so whatever those records do is in the stores by then: what a late event
/// did not bring back, it never will.
async fn wait_until_processed(env: &HashMap<String, String>) {
    let group = format!("{}.profiles", env["KAFKA_GROUP_ID"]);
    let topic = env["TOPIC_PROFILE_UPDATES"].clone();
    eventually(WAIT, "every record of the profile topic committed", || {
        let (group, topic) = (group.clone(), topic.clone());
        async move {
            let offsets = tokio::task::spawn_blocking(move || committed_and_end(&group, &topic))
                .await
                .expect("reading the offsets");
            offsets
                .iter()
                .all(|&(committed, end)| committed.unwrap_or(0) >= end)
                .then_some(())
        }
    })
    .await;
}

/// Whether the device's Redis hash exists (`EXISTS`).
async fn redis_key_exists(env: &HashMap<String, String>, device: &str) -> bool {
    let key = format!("{}{device}", env["REDIS_DEVICE_KEY_PREFIX"]);
    redis_connection().await.exists(key).await.expect("EXISTS")
}

/// The TTL of the device's Redis hash (-1: none, -2: no hash).
async fn redis_ttl(env: &HashMap<String, String>, device: &str) -> i64 {
    let key = format!("{}{device}", env["REDIS_DEVICE_KEY_PREFIX"]);
    redis_connection().await.ttl(key).await.expect("TTL")
}

/// The device's `deleted_at` in `device_profile_deletes`, as `SELECT JSON` renders it.
async fn deleted_at_in_cassandra(
    session: &Session,
    env: &HashMap<String, String>,
    device: &str,
) -> Option<Value> {
    let cql = format!(
        "SELECT JSON deleted_at FROM {}.device_profile_deletes WHERE device_id = ?",
        env["CASSANDRA_KEYSPACE"]
    );
    let row = session
        .query_unpaged(cql, (device,))
        .await
        .expect("SELECT JSON")
        .into_rows_result()
        .expect("rows")
        .maybe_first_row::<(String,)>()
        .expect("one JSON column");
    row.map(|(json,)| {
        let mut row: Value = serde_json::from_str(&json).expect("SELECT JSON is JSON");
        row["deleted_at"].take()
    })
}

/// The columns of a `device_profile` row that hold a value.
fn present_columns(row: &Value) -> BTreeMap<String, Value> {
    row.as_object()
        .expect("a row is an object")
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(column, value)| (column.clone(), value.clone()))
        .collect()
}

/// The device's row's present columns (empty when it has no row).
async fn cassandra_columns(
    session: &Session,
    env: &HashMap<String, String>,
    device: &str,
) -> BTreeMap<String, Value> {
    cassandra_row(session, env, device)
        .await
        .as_ref()
        .map(present_columns)
        .unwrap_or_default()
}

fn strings(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.clone()))
        .collect()
}

/// Waits until the device has neither a Redis hash nor a Cassandra row.
async fn wait_until_gone(env: &HashMap<String, String>, session: &Session, device: &str) {
    eventually(WAIT, &format!("{device}: no Redis hash"), || async {
        redis_hash(env, device).await.is_empty().then_some(())
    })
    .await;
    eventually(WAIT, &format!("{device}: no Cassandra row"), || async {
        cassandra_row(session, env, device)
            .await
            .is_none()
            .then_some(())
    })
    .await;
}

/// Asserts that the device deleted at `deleted_at` is gone from both stores and that both
/// remember the delete: the Redis versions hash holds `deleted_at` and nothing else.
async fn assert_deleted(
    env: &HashMap<String, String>,
    session: &Session,
    device: &str,
    deleted_at: i64,
    what: &str,
) {
    let hash = redis_hash(env, device).await;
    assert!(hash.is_empty(), "{what}: {device}: Redis hash {hash:?}");
    assert!(
        !redis_key_exists(env, device).await,
        "{what}: {device}: the Redis key exists"
    );
    assert_eq!(
        redis_versions(env, device).await,
        strings(&[("deleted_at", deleted_at.to_string())]),
        "{what}: {device}: Redis versions hash"
    );
    let row = cassandra_row(session, env, device).await;
    assert_eq!(row, None, "{what}: {device}: Cassandra row");
    assert_eq!(
        deleted_at_in_cassandra(session, env, device).await,
        Some(Value::from(cql_timestamp(deleted_at))),
        "{what}: {device}: device_profile_deletes"
    );
}

fn first_access_expected(first_access: i64) -> (Option<String>, Value) {
    (
        Some(first_access.to_string()),
        Value::from(cql_timestamp(first_access)),
    )
}

#[tokio::test]
async fn a_tombstone_deletes_the_device_from_both_stores_and_both_remember_when() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(READY).await.unwrap();
    let env = service.env.clone();
    let session = cassandra_session().await;
    let producer = producer();
    let device = unique("del");
    let version = start_of_test();
    let deleted_at = version + 10_000;

    produce_json(&producer, &env, &full_event(&device, version)).await;
    wait_for_city(&env, &session, &device, "Pune", WAIT).await;
    let hash = redis_hash(&env, &device).await;
    for field in UNVERSIONED_IN_REDIS {
        assert!(
            hash.contains_key(field),
            "{field} before the delete: {hash:?}"
        );
    }
    assert_eq!(service.metric(DELETED).await.unwrap(), 0.0);

    tombstone(&producer, &env, &device, deleted_at).await;
    wait_until_gone(&env, &session, &device).await;
    assert_deleted(&env, &session, &device, deleted_at, "after the delete").await;
    eventually(WAIT, "one delete counted", || async {
        (service.metric(DELETED).await.unwrap() == 1.0).then_some(())
    })
    .await;
    assert!(service.terminate().await.unwrap().success());
}

#[tokio::test]
async fn an_event_not_newer_than_the_delete_never_brings_anything_back() {
    let env = isolated_env();
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(READY).await.unwrap();
    let session = cassandra_session().await;
    let producer = producer();
    let device = unique("late");
    let version = start_of_test();
    let deleted_at = version + 10_000;

    produce_json(&producer, &env, &full_event(&device, version)).await;
    wait_for_city(&env, &session, &device, "Pune", WAIT).await;
    tombstone(&producer, &env, &device, deleted_at).await;
    wait_until_gone(&env, &session, &device).await;

    // Late: one of the delete's own version, one just older with an earlier first access and
    // a later last contact than anything seen, and one whose version is its record timestamp.
    let mut equal = full_event(&device, deleted_at);
    equal["city"] = json!("Equal");
    produce_json(&producer, &env, &equal).await;
    let recent_contact = chrono::Utc::now() - chrono::Duration::minutes(1);
    produce_json(
        &producer,
        &env,
        &json!({"device_id": device, "api_last_updated_on": deleted_at - 1, "city": "Older",
                "first_access": F_OLD - DAY_MS, "user_declared_state": "Kerala",
                "last_contact": recent_contact.to_rfc3339()}),
    )
    .await;
    produce_at(
        &producer,
        &env,
        &json!({"device_id": device, "city": "Record time", "first_access": F_OLD}),
        deleted_at - 5_000,
    )
    .await;
    wait_until_processed(&env).await;
    assert_deleted(&env, &session, &device, deleted_at, "after late events").await;
    assert!(service.terminate().await.unwrap().success());

    // However late: an instance that never met the device does not bring it back either.
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(READY).await.unwrap();
    produce_json(&producer, &env, &full_event(&device, version)).await;
    wait_until_processed(&env).await;
    assert_deleted(&env, &session, &device, deleted_at, "after a restart").await;
    assert!(service.terminate().await.unwrap().success());
}

#[tokio::test]
async fn an_event_newer_than_the_delete_recreates_the_device_with_only_its_own_fields() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(READY).await.unwrap();
    let env = service.env.clone();
    let session = cassandra_session().await;
    let producer = producer();
    let device = unique("recreated");
    let version = start_of_test();
    let deleted_at = version + 10_000;
    let newer = version + 20_000;

    produce_json(&producer, &env, &full_event(&device, version)).await;
    wait_for_city(&env, &session, &device, "Pune", WAIT).await;
    tombstone(&producer, &env, &device, deleted_at).await;
    wait_until_gone(&env, &session, &device).await;

    // A later first access than the one before the delete: the new life's first.
    produce_json(
        &producer,
        &env,
        &json!({"device_id": device, "api_last_updated_on": newer, "city": "Nagpur",
                "first_access": F_NEW}),
    )
    .await;
    wait_for_city(&env, &session, &device, "Nagpur", WAIT).await;
    assert_eq!(
        redis_hash(&env, &device).await,
        strings(&[
            ("city", "Nagpur".into()),
            ("firstaccess", F_NEW.to_string()),
            ("api_last_updated_on", newer.to_string()),
        ]),
        "Redis holds the new event's fields only"
    );
    let versions = redis_versions(&env, &device).await;
    assert_eq!(
        versions.get("deleted_at"),
        Some(&deleted_at.to_string()),
        "{versions:?}"
    );
    let columns = cassandra_columns(&session, &env, &device).await;
    let expected: BTreeMap<String, Value> = [
        ("device_id", json!(device)),
        ("city", json!("Nagpur")),
        ("first_access", json!(cql_timestamp(F_NEW))),
        ("api_last_updated_on", json!(cql_timestamp(newer))),
        ("updated_date", json!(cql_timestamp(newer))),
    ]
    .into_iter()
    .map(|(column, value)| (column.to_string(), value))
    .collect();
    assert_eq!(
        columns, expected,
        "Cassandra holds the new event's fields only"
    );

    // The new life's first access is the earliest seen since the delete: an earlier one than
    // F_NEW still wins in both stores (but the one before the delete never comes back).
    produce_json(
        &producer,
        &env,
        &json!({"device_id": device, "api_last_updated_on": newer + 10_000, "state": "MH",
                "first_access": F_MID}),
    )
    .await;
    eventually(WAIT, "the second event of the new life", || async {
        let state = cassandra_row(&session, &env, &device).await?["state"].clone();
        let in_redis = redis_hash(&env, &device).await.remove("state");
        (state == "MH" && in_redis.as_deref() == Some("MH")).then_some(())
    })
    .await;
    assert_eq!(
        first_access_in_both(&env, &session, &device).await,
        first_access_expected(F_MID),
        "(Redis firstaccess, Cassandra first_access)"
    );
    assert!(service.terminate().await.unwrap().success());
}

/// `met` is written by the instance that then deletes it, `unmet` by an earlier instance: a
/// delete usually comes long after the device's last write, to an instance that has not met
/// the device lately (it reads the device's row first).
#[tokio::test]
async fn a_delete_older_than_the_stored_fields_keeps_them_but_not_the_unversioned_ones() {
    let env = isolated_env();
    let session = cassandra_session().await;
    let producer = producer();
    let met = unique("met");
    let unmet = unique("unmet");
    let version = start_of_test();
    let deleted_at = version - 10_000;

    let mut earlier = ServiceProcess::start(binary(), env.clone()).unwrap();
    earlier.wait_ready(READY).await.unwrap();
    produce_json(&producer, &env, &full_event(&unmet, version)).await;
    wait_for_city(&env, &session, &unmet, "Pune", WAIT).await;
    assert!(earlier.terminate().await.unwrap().success());
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(READY).await.unwrap();
    produce_json(&producer, &env, &full_event(&met, version)).await;
    wait_for_city(&env, &session, &met, "Pune", WAIT).await;

    let mut before = Vec::new();
    for device in [&met, &unmet] {
        // As the old job left its hashes: with a TTL.
        let key = format!("{}{device}", env["REDIS_DEVICE_KEY_PREFIX"]);
        let _: () = redis_connection()
            .await
            .expire(&key, 86_400)
            .await
            .expect("EXPIRE");
        before.push((
            redis_hash(&env, device).await,
            cassandra_columns(&session, &env, device).await,
        ));
        tombstone(&producer, &env, device, deleted_at).await;
    }
    wait_until_processed(&env).await;

    for (device, (hash, columns)) in [&met, &unmet].into_iter().zip(before) {
        let mut expected = hash.clone();
        for field in UNVERSIONED_IN_REDIS {
            assert!(
                expected.remove(field).is_some(),
                "{device}: {field} in {hash:?}"
            );
        }
        assert_eq!(
            redis_hash(&env, device).await,
            expected,
            "{device}: Redis keeps the newer fields, not {UNVERSIONED_IN_REDIS:?}"
        );
        assert_eq!(
            redis_ttl(&env, device).await,
            -1,
            "{device}: the delete removes the hash's TTL"
        );
        let versions = redis_versions(&env, device).await;
        assert_eq!(
            versions.get("deleted_at"),
            Some(&deleted_at.to_string()),
            "{device}: {versions:?}"
        );
        assert_eq!(versions.get("city"), Some(&version.to_string()), "{device}");

        let mut expected = columns.clone();
        for column in UNVERSIONED_IN_CASSANDRA {
            assert!(
                expected.remove(column).is_some(),
                "{device}: {column} in {columns:?}"
            );
        }
        assert_eq!(
            cassandra_columns(&session, &env, device).await,
            expected,
            "{device}: Cassandra keeps the newer fields, not {UNVERSIONED_IN_CASSANDRA:?}"
        );
    }

    // An event between the delete and the stored fields: its city loses, its first access
    // is the first of the device's new life, in both stores.
    for device in [&met, &unmet] {
        produce_json(
            &producer,
            &env,
            &json!({"device_id": device, "api_last_updated_on": deleted_at + 1,
                    "city": "Older", "first_access": F_NEW}),
        )
        .await;
    }
    wait_until_processed(&env).await;
    for device in [&met, &unmet] {
        assert_eq!(
            first_access_in_both(&env, &session, device).await,
            first_access_expected(F_NEW),
            "{device}: (Redis firstaccess, Cassandra first_access)"
        );
        assert_eq!(redis_hash(&env, device).await["city"], "Pune", "{device}");
        assert_eq!(
            cassandra_row(&session, &env, device).await.expect("row")["city"],
            "Pune",
            "{device}"
        );
    }
    assert!(service.terminate().await.unwrap().success());
}

#[tokio::test]
async fn a_delete_not_newer_than_the_last_one_changes_nothing_more() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(READY).await.unwrap();
    let env = service.env.clone();
    let session = cassandra_session().await;
    let producer = producer();
    let device = unique("again");
    let version = start_of_test();
    let deleted_at = version + 10_000;

    produce_json(&producer, &env, &full_event(&device, version)).await;
    wait_for_city(&env, &session, &device, "Pune", WAIT).await;
    tombstone(&producer, &env, &device, deleted_at).await;
    wait_until_gone(&env, &session, &device).await;
    produce_json(
        &producer,
        &env,
        &json!({"device_id": device, "api_last_updated_on": deleted_at + 10_000,
                "city": "Nagpur", "first_access": F_NEW, "user_declared_state": "Kerala",
                "last_contact": "2024-02-01T00:00:00Z"}),
    )
    .await;
    wait_for_city(&env, &session, &device, "Nagpur", WAIT).await;
    let hash = redis_hash(&env, &device).await;
    for field in UNVERSIONED_IN_REDIS {
        assert!(
            hash.contains_key(field),
            "{field} in the new life: {hash:?}"
        );
    }
    let versions = redis_versions(&env, &device).await;
    let columns = cassandra_columns(&session, &env, &device).await;

    // Older than the delete, then the same delete again: both newer than nothing stored but
    // the unversioned fields, which a delete would remove whatever their age.
    tombstone(&producer, &env, &device, deleted_at - 5_000).await;
    tombstone(&producer, &env, &device, deleted_at).await;
    wait_until_processed(&env).await;
    assert_eq!(redis_hash(&env, &device).await, hash, "Redis hash");
    assert_eq!(
        redis_versions(&env, &device).await,
        versions,
        "Redis versions"
    );
    assert_eq!(
        cassandra_columns(&session, &env, &device).await,
        columns,
        "Cassandra row"
    );
    assert_eq!(
        deleted_at_in_cassandra(&session, &env, &device).await,
        Some(Value::from(cql_timestamp(deleted_at))),
        "device_profile_deletes keeps the newest delete"
    );
    assert!(service.terminate().await.unwrap().success());
}

#[tokio::test]
async fn tombstones_without_a_usable_key_are_dead_lettered_and_the_stream_goes_on() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(READY).await.unwrap();
    let env = service.env.clone();
    let session = cassandra_session().await;
    let producer = producer();
    let padded = unique("padded");
    let after = unique("after");
    let version = start_of_test();

    produce_json(
        &producer,
        &env,
        &json!({"device_id": padded, "api_last_updated_on": version, "city": "Pune"}),
    )
    .await;
    wait_for_city(&env, &session, &padded, "Pune", WAIT).await;
    let long_key = "x".repeat(300);
    let unusable: [(Option<&str>, &str); 3] = [
        (None, "tombstone without a key"),
        (Some(&long_key), "tombstone key is not a valid device_id"),
        (Some("   "), "tombstone key is not a valid device_id"),
    ];
    for (key, _) in unusable {
        send(&producer, &env, key, None, None).await;
    }
    // A key with spaces around a device id names that device, as a device_id would.
    tombstone(&producer, &env, &format!("  {padded} "), version + 10_000).await;
    produce_json(
        &producer,
        &env,
        &json!({"device_id": after, "city": "After"}),
    )
    .await;

    let letters = TopicReader::from_beginning(&env["TOPIC_PROFILE_DLQ"])
        .take(unusable.len(), WAIT)
        .await;
    for (key, reason_start) in unusable {
        let letter = letters
            .iter()
            .find(|letter| letter.key() == key.map(str::as_bytes))
            .unwrap_or_else(|| panic!("no dead letter keyed {key:?}"));
        assert_eq!(
            letter.payload(),
            None,
            "{key:?}: a tombstone's letter has no value"
        );
        let reason = header(letter, "error.reason").expect("error.reason");
        assert!(
            reason.starts_with(reason_start),
            "{key:?}: reason {reason:?}"
        );
        assert!(!reason.contains('\n'), "one line: {reason:?}");
        assert_eq!(
            header(letter, "source.topic").as_ref(),
            Some(&env["TOPIC_PROFILE_UPDATES"])
        );
    }
    wait_for_city(&env, &session, &after, "After", WAIT).await;
    wait_until_gone(&env, &session, &padded).await;
    wait_until_processed(&env).await;
    let dlq = env["TOPIC_PROFILE_DLQ"].clone();
    let dead_letters = tokio::task::spawn_blocking(move || records_in(&dlq))
        .await
        .unwrap();
    assert_eq!(
        dead_letters, 3,
        "only the unusable tombstones are dead-lettered"
    );
    assert_eq!(service.metric(DELETED).await.unwrap(), 1.0, "one delete");
    assert!(service.terminate().await.unwrap().success());
}

#[tokio::test]
async fn a_delete_and_events_of_its_device_in_one_batch_resolve_as_they_would_apart() {
    let env = isolated_env();
    let session = cassandra_session().await;
    let producer = producer();
    let version = start_of_test();
    let deleted_at = version + 20_000;
    // `deleted`: an event, then its delete. `recreated`: known before; its delete, then a newer
    // event. `stale`: known before; its delete, then an older event.
    let deleted = unique("batch_deleted");
    let recreated = unique("batch_recreated");
    let stale = unique("batch_stale");

    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(READY).await.unwrap();
    for device in [&recreated, &stale] {
        produce_json(&producer, &env, &full_event(device, version)).await;
        wait_for_city(&env, &session, device, "Pune", WAIT).await;
    }
    assert!(service.terminate().await.unwrap().success());

    // Produced while the service is stopped, so that it reads them in one batch.
    produce_json(&producer, &env, &full_event(&deleted, version + 10_000)).await;
    tombstone(&producer, &env, &deleted, deleted_at).await;
    tombstone(&producer, &env, &recreated, deleted_at).await;
    produce_json(
        &producer,
        &env,
        &json!({"device_id": recreated, "api_last_updated_on": deleted_at + 10_000,
                "city": "Nagpur", "first_access": F_NEW}),
    )
    .await;
    tombstone(&producer, &env, &stale, deleted_at).await;
    produce_json(
        &producer,
        &env,
        &json!({"device_id": stale, "api_last_updated_on": deleted_at - 10_000,
                "city": "Stale", "first_access": F_OLD - DAY_MS}),
    )
    .await;

    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(READY).await.unwrap();
    wait_until_processed(&env).await;
    assert_deleted(&env, &session, &deleted, deleted_at, "event, then delete").await;
    assert_deleted(
        &env,
        &session,
        &stale,
        deleted_at,
        "delete, then older event",
    )
    .await;
    assert_eq!(
        redis_hash(&env, &recreated).await,
        strings(&[
            ("city", "Nagpur".into()),
            ("firstaccess", F_NEW.to_string()),
            ("api_last_updated_on", (deleted_at + 10_000).to_string()),
        ]),
        "delete, then newer event: Redis"
    );
    let columns = cassandra_columns(&session, &env, &recreated).await;
    let names: Vec<&str> = columns.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "api_last_updated_on",
            "city",
            "device_id",
            "first_access",
            "updated_date"
        ],
        "delete, then newer event: Cassandra {columns:?}"
    );
    assert_eq!(
        first_access_in_both(&env, &session, &recreated).await,
        first_access_expected(F_NEW)
    );
    assert!(service.terminate().await.unwrap().success());
}

#[tokio::test]
async fn a_delete_on_a_redis_cluster_removes_the_hash_and_a_newer_event_recreates_it() {
    let mut env = isolated_env();
    env.insert("REDIS_URL".into(), redis_cluster_url());
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(READY).await.unwrap();
    let redis = redis_cluster().await;
    let session = cassandra_session().await;
    let producer = producer();
    let run = unique("cluster_del");
    // A plain id and one holding braces (its versions hash is named into its slot).
    let devices = [format!("{run}-plain"), format!("{run}{{x}}y")];
    let version = start_of_test();
    let deleted_at = version + 10_000;
    let newer = version + 20_000;
    let on_cluster = |device: &str| {
        let key = format!("{}{device}", env["REDIS_DEVICE_KEY_PREFIX"]);
        let mut redis = redis.clone();
        async move {
            let hash: HashMap<String, String> = redis.hgetall(&key).await.expect("HGETALL");
            let versions: HashMap<String, String> =
                redis.hgetall(versions_key(&key)).await.expect("HGETALL");
            let exists: bool = redis.exists(&key).await.expect("EXISTS");
            (hash, versions, exists)
        }
    };

    for device in &devices {
        produce_json(&producer, &env, &full_event(device, version)).await;
        tombstone(&producer, &env, device, deleted_at).await;
    }
    wait_until_processed(&env).await;
    for device in &devices {
        let (hash, versions, exists) = on_cluster(device).await;
        assert!(hash.is_empty() && !exists, "{device:?}: {hash:?}");
        assert_eq!(
            versions,
            strings(&[("deleted_at", deleted_at.to_string())]),
            "{device:?}"
        );
        assert_eq!(
            cassandra_row(&session, &env, device).await,
            None,
            "{device:?}"
        );
    }

    for device in &devices {
        produce_json(
            &producer,
            &env,
            &json!({"device_id": device, "api_last_updated_on": newer, "city": "Nagpur"}),
        )
        .await;
    }
    wait_until_processed(&env).await;
    for device in &devices {
        let (hash, versions, _) = on_cluster(device).await;
        assert_eq!(
            hash,
            strings(&[
                ("city", "Nagpur".into()),
                ("api_last_updated_on", newer.to_string()),
            ]),
            "{device:?}"
        );
        assert_eq!(versions.get("deleted_at"), Some(&deleted_at.to_string()));
        let row = cassandra_row(&session, &env, device)
            .await
            .expect("the row");
        assert_eq!(row["city"], "Nagpur", "{device:?}");
        assert_eq!(row["state"], Value::Null, "{device:?}");
    }
    assert!(service.terminate().await.unwrap().success());
}

/// Runs `profile verify` and returns its exit code and stdout.
async fn verify(env: &HashMap<String, String>) -> (i32, String) {
    let (code, stdout, stderr) = run_command(&["profile", "verify"], env, COMMAND_TIMEOUT).await;
    assert!(code == 0 || code == 1, "verify failed: {stdout}\n{stderr}");
    (code, stdout)
}

#[tokio::test]
async fn verify_agrees_on_deleted_and_recreated_devices_and_rebuild_redis_brings_none_back() {
    let env = env_with_own_keyspace();
    let session = cassandra_session().await;
    let producer = producer();
    let deleted = unique("deleted");
    let recreated = unique("recreated");
    let untouched = unique("untouched");
    let version = start_of_test();
    let deleted_at = version + 10_000;
    let newer = version + 20_000;

    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(READY).await.unwrap();
    for device in [&deleted, &recreated, &untouched] {
        produce_json(&producer, &env, &full_event(device, version)).await;
    }
    for device in [&deleted, &recreated] {
        tombstone(&producer, &env, device, deleted_at).await;
    }
    produce_json(
        &producer,
        &env,
        &json!({"device_id": recreated, "api_last_updated_on": newer, "city": "Nagpur",
                "first_access": F_NEW}),
    )
    .await;
    wait_until_processed(&env).await;
    assert!(service.terminate().await.unwrap().success());
    let new_life = strings(&[
        ("city", "Nagpur".into()),
        ("firstaccess", F_NEW.to_string()),
        ("api_last_updated_on", newer.to_string()),
    ]);
    assert_eq!(redis_hash(&env, &recreated).await, new_life);

    // The deleted device is in neither store: only the other two are compared.
    let (code, stdout) = verify(&env).await;
    assert_eq!(
        (code, stdout.lines().next()),
        (0, Some("0 of 2 devices differ")),
        "{stdout}"
    );

    for device in [&deleted, &recreated] {
        delete_redis_device(&env, device).await;
    }
    let (code, stdout, stderr) =
        run_command(&["profile", "rebuild-redis"], &env, COMMAND_TIMEOUT).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        redis_hash(&env, &deleted).await.is_empty(),
        "the deleted device came back"
    );
    assert_eq!(
        redis_versions(&env, &deleted).await,
        strings(&[("deleted_at", deleted_at.to_string())]),
        "the rebuilt Redis remembers the delete"
    );
    assert_eq!(redis_hash(&env, &recreated).await, new_life);
    assert_eq!(
        redis_versions(&env, &recreated).await.get("deleted_at"),
        Some(&deleted_at.to_string())
    );
    let (code, stdout) = verify(&env).await;
    assert_eq!(
        (code, stdout.lines().next()),
        (0, Some("0 of 2 devices differ")),
        "{stdout}"
    );

    // The rebuilt Redis keeps out a late event of the deleted device, as Cassandra does.
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(READY).await.unwrap();
    produce_json(&producer, &env, &full_event(&deleted, version)).await;
    wait_until_processed(&env).await;
    assert_deleted(
        &env,
        &session,
        &deleted,
        deleted_at,
        "late event after the rebuild",
    )
    .await;
    assert!(service.terminate().await.unwrap().success());
    for device in [&deleted, &recreated, &untouched] {
        delete_redis_device(&env, device).await;
    }
    drop_keyspace(&session, &env).await;
}
