//! Taking over an existing deployment (`CONTRACT.md` §3): the service starts on the platform's
//! own `device_profile` table, rows written the way its API writes them (plain `INSERT`s, cells
//! at their write time), adds the columns it lacks and changes nothing else, also when several
//! instances start at once; a column of another type, or a missing column while
//! `CASSANDRA_ALTER_TABLE=false`, stops start-up with one line. The rows already there take part
//! in the rules at their write times in both stores: the earliest `first_access` wins, the
//! row's included, also across instances started apart and after a restart; an event older
//! than a row's cell does not win, a newer one does; the platform's own columns are never
//! written. The old job's Redis hash is updated in place and loses its TTL, its unversioned
//! fields older than any event. `profile verify` and `profile rebuild-redis` handle the
//! adopted rows.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::cache_fixture::redis_connection;
use hawkeye_devtools::testkit::profiles::{
    cassandra_row, delete_redis_device, drop_keyspace, env_with_own_keyspace, eventually,
    first_access_in_both, produce_json, producer, redis_hash, wait_for_city,
};
use hawkeye_devtools::testkit::service::{binary, isolated_env, run_command, run_to_exit};
use hawkeye_devtools::testkit::{cassandra_session, unique};
use redis::AsyncCommands;
use scylla::client::session::Session;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
const READY: Duration = Duration::from_secs(60);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// The `first_access` of the platform's rows: 2020-09-13T12:26:40Z.
const F0: i64 = 1_600_000_000_000;
/// The platform's own columns, which the service does not know and must never write.
const PLATFORM_ONLY: [&str; 4] = ["last_access", "total_ts", "total_launches", "avg_ts"];

/// Creates the keyspace (SimpleStrategy, RF 1) and the platform's table as published with the
/// device-register design, but with `first_access` of `first_access_type` (`timestamp` there).
async fn create_platform_table(session: &Session, keyspace: &str, first_access_type: &str) {
    let keyspace_cql = format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} \
         WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    );
    let table_cql = format!(
        "CREATE TABLE IF NOT EXISTS {keyspace}.device_profile (
            device_id text, first_access {first_access_type}, last_access timestamp,
            total_ts double, total_launches bigint, avg_ts double, device_spec Map<text,text>,
            updated_date timestamp, state text, state_code text, country text,
            country_code text, state_custom text, state_code_custom text, district_custom text,
            city text, uaspec Map<text,text>, fcm_token text, producer_id text,
            user_declared_state text, user_declared_district text,
            PRIMARY KEY (device_id))"
    );
    for cql in [keyspace_cql, table_cql] {
        session
            .query_unpaged(cql, ())
            .await
            .expect("creating the platform's table");
    }
}

/// Writes a device's row as the platform's API does: a plain `INSERT` (its cells carry the
/// write time), the platform-only columns included. Returns the write time in epoch ms.
async fn insert_platform_row(
    session: &Session,
    keyspace: &str,
    device: &str,
    first_access: i64,
    city: &str,
) -> i64 {
    let cql = format!(
        "INSERT INTO {keyspace}.device_profile (device_id, first_access, last_access, total_ts, \
         total_launches, avg_ts, device_spec, updated_date, state, state_code, country, \
         country_code, city, uaspec, fcm_token, producer_id, user_declared_state, \
         user_declared_district) \
         VALUES (?, {first_access}, 1700000000000, 5321.5, 181, 29.4, \
         {{'os': 'Android', 'make': 'Acme'}}, 1700000000000, 'Karnataka', '29', 'India', 'IN', \
         ?, {{'agent': 'Chrome', 'version': '120'}}, 'tok:platform', 'dev.sunbird.portal', \
         'Karnataka', 'Bengaluru')"
    );
    session
        .query_unpaged(cql, (device, city))
        .await
        .expect("the platform's INSERT");
    let cql = format!("SELECT WRITETIME(city) FROM {keyspace}.device_profile WHERE device_id = ?");
    let (micros,): (Option<i64>,) = session
        .query_unpaged(cql, (device,))
        .await
        .expect("SELECT WRITETIME")
        .into_rows_result()
        .expect("rows")
        .single_row()
        .expect("the row just written");
    micros.expect("a write time") / 1000
}

/// The platform-only columns of a row, their values and write times, as `SELECT JSON` renders
/// them.
async fn platform_only_cells(session: &Session, keyspace: &str, device: &str) -> Value {
    let columns: Vec<String> = PLATFORM_ONLY
        .iter()
        .flat_map(|c| [c.to_string(), format!("WRITETIME({c}) AS {c}_written")])
        .collect();
    let cql = format!(
        "SELECT JSON {} FROM {keyspace}.device_profile WHERE device_id = ?",
        columns.join(", ")
    );
    let (json,): (String,) = session
        .query_unpaged(cql, (device,))
        .await
        .expect("SELECT JSON")
        .into_rows_result()
        .expect("rows")
        .single_row()
        .expect("the platform's row");
    serde_json::from_str(&json).expect("SELECT JSON is JSON")
}

/// Starts the service on `env`, waits until it is ready and stops it cleanly.
async fn starts_and_stops(env: &HashMap<String, String>) {
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(READY).await.unwrap();
    assert!(service.terminate().await.unwrap().success());
}

/// `device_profile`'s columns and their types, as `system_schema` spells them.
async fn column_types(session: &Session, keyspace: &str) -> BTreeMap<String, String> {
    session
        .query_unpaged(
            "SELECT column_name, type FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = 'device_profile'",
            (keyspace,),
        )
        .await
        .expect("system_schema.columns")
        .into_rows_result()
        .expect("rows")
        .rows::<(String, String)>()
        .expect("two text columns")
        .map(|row| row.expect("a column"))
        .collect()
}

/// The columns of `schemas/device_profile.cql` with their types.
fn service_columns() -> BTreeMap<String, String> {
    include_str!("../../schemas/device_profile.cql")
        .lines()
        .skip_while(|line| !line.starts_with("CREATE TABLE"))
        .skip(1)
        .take_while(|line| !line.starts_with(')'))
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("--"))
        .map(|line| {
            let line = line.trim_end_matches(',').trim_end_matches(" PRIMARY KEY");
            let (name, kind) = line.split_once(' ').expect("`name type`");
            (name.to_string(), kind.trim().to_string())
        })
        .collect()
}

/// The columns an adopted table must end with: the platform's as they were, and the service's
/// that were missing, with the service's types.
fn adopted_columns(platform: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut expected = platform.clone();
    for (column, kind) in service_columns() {
        expected.entry(column).or_insert(kind);
    }
    expected
}

/// How `SELECT JSON` renders a timestamp of `epoch_ms`.
fn cql_timestamp(epoch_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(epoch_ms)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S%.3fZ")
        .to_string()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The one `error:` line of a start-up that failed.
fn the_error_line(stderr: &[String]) -> &str {
    let errors: Vec<&String> = stderr.iter().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line in {stderr:#?}");
    errors[0]
}

/// Waits until both stores hold `first_access` for the device.
async fn wait_for_first_access(
    env: &HashMap<String, String>,
    session: &Session,
    device: &str,
    first_access: i64,
) {
    let expected = (
        Some(first_access.to_string()),
        Value::from(cql_timestamp(first_access)),
    );
    eventually(
        WAIT,
        &format!("{device}: first_access {first_access} in both stores"),
        || async { (first_access_in_both(env, session, device).await == expected).then_some(()) },
    )
    .await;
}

/// Waits until both stores hold `value` in the text field (Redis field = Cassandra column).
async fn wait_for_field(
    env: &HashMap<String, String>,
    session: &Session,
    device: &str,
    field: &str,
    value: &str,
) {
    eventually(
        WAIT,
        &format!("{device} {field} = {value} in Redis"),
        || async {
            (redis_hash(env, device).await.get(field).map(String::as_str) == Some(value))
                .then_some(())
        },
    )
    .await;
    eventually(
        WAIT,
        &format!("{device} {field} = {value} in Cassandra"),
        || async { (cassandra_row(session, env, device).await?[field] == value).then_some(()) },
    )
    .await;
}

/// Runs `profile verify` and returns its exit code and stdout.
async fn verify(env: &HashMap<String, String>) -> (i32, String) {
    let (code, stdout, stderr) = run_command(&["profile", "verify"], env, COMMAND_TIMEOUT).await;
    assert!(code == 0 || code == 1, "verify failed: {stdout}\n{stderr}");
    (code, stdout)
}

#[tokio::test]
async fn start_up_adds_the_missing_columns_and_changes_none_of_the_platforms() {
    let env = env_with_own_keyspace();
    let keyspace = env["CASSANDRA_KEYSPACE"].clone();
    let session = cassandra_session().await;
    create_platform_table(&session, &keyspace, "timestamp").await;
    let devices = [unique("d"), unique("d")];
    for device in &devices {
        insert_platform_row(&session, &keyspace, device, F0, "platform-city").await;
    }
    let platform = column_types(&session, &keyspace).await;
    assert!(!platform.contains_key("serial_number"), "{platform:?}");
    let mut rows_before = Vec::new();
    for device in &devices {
        rows_before.push(cassandra_row(&session, &env, device).await);
    }

    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(READY).await.unwrap();

    let adopted = column_types(&session, &keyspace).await;
    assert_eq!(adopted, adopted_columns(&platform));
    for column in [
        "serial_number",
        "api_last_updated_on",
        "user_declared_on",
        "last_contact",
        "probe_id",
        "client_id",
    ] {
        assert!(
            adopted.contains_key(column),
            "{column} missing: {adopted:?}"
        );
    }
    assert_eq!(adopted["client_id"], "bigint");
    // Adding columns changes no row: the new columns are null, the rest as written.
    for (device, before) in devices.iter().zip(rows_before) {
        let mut before = before.expect("the platform's row");
        let after = cassandra_row(&session, &env, device)
            .await
            .expect("the platform's row");
        for column in adopted.keys().filter(|c| !platform.contains_key(*c)) {
            assert_eq!(after[column], Value::Null, "{column}: {after}");
            before[column] = Value::Null;
        }
        assert_eq!(after, before);
    }
    assert!(service.terminate().await.unwrap().success());
    drop_keyspace(&session, &env).await;
}

#[tokio::test]
async fn several_instances_starting_at_once_on_the_platforms_table_all_become_ready() {
    let keyspace = unique("hcc_adopt");
    let session = cassandra_session().await;
    create_platform_table(&session, &keyspace, "timestamp").await;
    insert_platform_row(&session, &keyspace, &unique("d"), F0, "platform-city").await;
    let platform = column_types(&session, &keyspace).await;

    let mut services: Vec<ServiceProcess> = (0..3)
        .map(|_| {
            let mut env = isolated_env();
            env.insert("CASSANDRA_KEYSPACE".into(), keyspace.clone());
            ServiceProcess::start(binary(), env).unwrap()
        })
        .collect();
    for service in &mut services {
        service.wait_ready(Duration::from_secs(120)).await.unwrap();
    }
    assert_eq!(
        column_types(&session, &keyspace).await,
        adopted_columns(&platform)
    );
    for service in &mut services {
        let status = service.terminate().await.unwrap();
        assert!(
            status.success(),
            "exit {status}: {}",
            service.log.join("\n")
        );
    }
    drop_keyspace(&session, &services[0].env).await;
}

#[tokio::test]
async fn a_needed_column_of_another_type_stops_start_up_naming_both_types() {
    let env = env_with_own_keyspace();
    let keyspace = env["CASSANDRA_KEYSPACE"].clone();
    let session = cassandra_session().await;
    create_platform_table(&session, &keyspace, "bigint").await;
    insert_platform_row(&session, &keyspace, &unique("d"), F0, "platform-city").await;

    let (code, stderr) = run_to_exit(&env, READY).await;
    assert_ne!(code, 0, "{stderr:#?}");
    let line = the_error_line(&stderr);
    for word in ["first_access", "bigint", "timestamp"] {
        assert!(line.contains(word), "{word} not in {line}");
    }
    // Neither dropped nor altered.
    assert_eq!(
        column_types(&session, &keyspace).await["first_access"],
        "bigint"
    );
    drop_keyspace(&session, &env).await;
}

#[tokio::test]
async fn without_alter_table_missing_columns_stop_start_up_listing_them() {
    let mut env = env_with_own_keyspace();
    let keyspace = env["CASSANDRA_KEYSPACE"].clone();
    let session = cassandra_session().await;
    create_platform_table(&session, &keyspace, "timestamp").await;
    let platform = column_types(&session, &keyspace).await;
    env.insert("CASSANDRA_ALTER_TABLE".into(), "false".into());

    let (code, stderr) = run_to_exit(&env, READY).await;
    assert_ne!(code, 0, "{stderr:#?}");
    let line = the_error_line(&stderr);
    assert!(line.contains("ALTER TABLE"), "{line}");
    let missing: Vec<String> = service_columns()
        .into_keys()
        .filter(|c| !platform.contains_key(c))
        .collect();
    assert!(missing.iter().any(|c| c == "serial_number"), "{missing:?}");
    for column in &missing {
        assert!(line.contains(column.as_str()), "{column} not in {line}");
    }
    assert_eq!(
        column_types(&session, &keyspace).await,
        platform,
        "the table was altered"
    );

    // Once adopted (here by a start that may alter it), the table needs no change.
    env.insert("CASSANDRA_ALTER_TABLE".into(), "true".into());
    starts_and_stops(&env).await;
    env.insert("CASSANDRA_ALTER_TABLE".into(), "false".into());
    starts_and_stops(&env).await;
    drop_keyspace(&session, &env).await;
}

/// `profile verify` and `profile rebuild-redis` use the schema as the service left it: on the
/// platform's table before the service ever started they change nothing (no column, no base,
/// which must come from the service's own start) and say what to do.
#[tokio::test]
async fn operator_tools_change_nothing_on_a_table_not_yet_adopted() {
    let env = env_with_own_keyspace();
    let keyspace = env["CASSANDRA_KEYSPACE"].clone();
    let session = cassandra_session().await;
    create_platform_table(&session, &keyspace, "timestamp").await;
    let platform = column_types(&session, &keyspace).await;
    for tool in ["verify", "rebuild-redis"] {
        let (code, _, stderr) = run_command(&["profile", tool], &env, COMMAND_TIMEOUT).await;
        assert_ne!(code, 0, "{tool}: {stderr}");
        assert!(
            stderr.contains("start the service on it once") && stderr.contains("serial_number"),
            "{tool}: {stderr}"
        );
        assert_eq!(
            column_types(&session, &keyspace).await,
            platform,
            "{tool} altered the table"
        );
    }
    let tables: Vec<(String,)> = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            (keyspace.as_str(),),
        )
        .await
        .expect("system_schema.tables")
        .into_rows_result()
        .expect("rows")
        .rows::<(String,)>()
        .expect("one text column")
        .map(|row| row.expect("a table"))
        .collect();
    assert_eq!(tables, [("device_profile".to_string(),)]);
    drop_keyspace(&session, &env).await;
}

#[tokio::test]
async fn without_alter_table_a_table_the_service_created_starts() {
    let mut env = env_with_own_keyspace();
    let session = cassandra_session().await;
    starts_and_stops(&env).await;

    env.insert("CASSANDRA_ALTER_TABLE".into(), "false".into());
    starts_and_stops(&env).await;
    drop_keyspace(&session, &env).await;
}

#[tokio::test]
async fn the_earliest_first_access_wins_over_a_platform_rows_in_both_stores() {
    let env = env_with_own_keyspace();
    let keyspace = env["CASSANDRA_KEYSPACE"].clone();
    let session = cassandra_session().await;
    create_platform_table(&session, &keyspace, "timestamp").await;
    let earlier = unique("earlier");
    let later = unique("later");
    for device in [&earlier, &later] {
        insert_platform_row(&session, &keyspace, device, F0, "platform-city").await;
    }
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(READY).await.unwrap();
    let producer = producer();
    let event = |device: &str, first_access: i64, city: &str| {
        json!({"device_id": device, "api_last_updated_on": now_ms(), "city": city,
               "first_access": first_access})
    };
    let expect_first_access = |device: String, first_access: i64, what: &'static str| {
        let (env, session) = (&env, &session);
        async move {
            assert_eq!(
                first_access_in_both(env, session, &device).await,
                (
                    Some(first_access.to_string()),
                    Value::from(cql_timestamp(first_access))
                ),
                "{device}: {what} (Redis firstaccess, Cassandra first_access)"
            );
        }
    };

    // An event's earlier first_access replaces the row's in both stores.
    produce_json(&producer, &env, &event(&earlier, F0 - DAY_MS, "a1")).await;
    wait_for_city(&env, &session, &earlier, "a1", WAIT).await;
    wait_for_first_access(&env, &session, &earlier, F0 - DAY_MS).await;

    // A later one keeps the row's, in Redis too, where the device had no hash before.
    produce_json(&producer, &env, &event(&later, F0 + DAY_MS, "b1")).await;
    wait_for_city(&env, &session, &later, "b1", WAIT).await;
    expect_first_access(later.clone(), F0, "a later first_access than the row's").await;

    // The row's value, folded in, does not stick: an even earlier one still wins, and a value
    // between the two does not.
    produce_json(&producer, &env, &event(&later, F0 - 2 * DAY_MS, "b2")).await;
    wait_for_city(&env, &session, &later, "b2", WAIT).await;
    wait_for_first_access(&env, &session, &later, F0 - 2 * DAY_MS).await;
    produce_json(&producer, &env, &event(&later, F0 - DAY_MS, "b3")).await;
    wait_for_city(&env, &session, &later, "b3", WAIT).await;
    expect_first_access(
        later.clone(),
        F0 - 2 * DAY_MS,
        "a later one than the earliest",
    )
    .await;
    expect_first_access(earlier.clone(), F0 - DAY_MS, "still the event's").await;
    assert!(service.terminate().await.unwrap().success());

    // A new instance meets the devices again (it reads their rows once more) and finds the
    // service's own cells: a value a minute later than the earliest still loses, an earlier
    // one still wins.
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(READY).await.unwrap();
    produce_json(
        &producer,
        &env,
        &event(&later, F0 - 2 * DAY_MS + 60_000, "b4"),
    )
    .await;
    wait_for_city(&env, &session, &later, "b4", WAIT).await;
    expect_first_access(
        later.clone(),
        F0 - 2 * DAY_MS,
        "after a restart, a later one",
    )
    .await;
    produce_json(&producer, &env, &event(&earlier, F0 - 3 * DAY_MS, "a2")).await;
    wait_for_city(&env, &session, &earlier, "a2", WAIT).await;
    wait_for_first_access(&env, &session, &earlier, F0 - 3 * DAY_MS).await;
    assert!(service.terminate().await.unwrap().success());

    // The stores agree on both adopted devices, the row's other values included.
    let (code, stdout) = verify(&env).await;
    assert_eq!(
        (code, stdout.lines().next()),
        (0, Some("0 of 2 devices differ")),
        "{stdout}"
    );
    drop_keyspace(&session, &env).await;
}

#[tokio::test]
async fn instances_started_apart_share_one_base_so_the_earliest_first_access_wins_across_them() {
    let first_env = env_with_own_keyspace();
    let keyspace = first_env["CASSANDRA_KEYSPACE"].clone();
    let session = cassandra_session().await;
    create_platform_table(&session, &keyspace, "timestamp").await;
    let device = unique("d");
    insert_platform_row(&session, &keyspace, &device, F0 + DAY_MS, "platform-city").await;
    let mut first = ServiceProcess::start(binary(), first_env.clone()).unwrap();
    first.wait_ready(READY).await.unwrap();
    // The second starts later, on the same stores, with topics of its own.
    let mut second_env = isolated_env();
    for setting in ["CASSANDRA_KEYSPACE", "REDIS_DEVICE_KEY_PREFIX"] {
        second_env.insert(setting.into(), first_env[setting].clone());
    }
    let mut second = ServiceProcess::start(binary(), second_env.clone()).unwrap();
    second.wait_ready(READY).await.unwrap();
    let producer = producer();

    // Values ten steps of the encoding (640 ms) apart: the smaller, written by the instance
    // that started first, must beat the other's cell, which a base of each instance's own
    // (the later start's above the earlier's) would not let it.
    let later = F0 + 640;
    produce_json(
        &producer,
        &second_env,
        &json!({"device_id": device, "api_last_updated_on": now_ms(), "city": "second",
                "first_access": later}),
    )
    .await;
    wait_for_city(&second_env, &session, &device, "second", WAIT).await;
    wait_for_first_access(&second_env, &session, &device, later).await;
    produce_json(
        &producer,
        &first_env,
        &json!({"device_id": device, "api_last_updated_on": now_ms(), "city": "first",
                "first_access": F0}),
    )
    .await;
    wait_for_city(&first_env, &session, &device, "first", WAIT).await;
    assert_eq!(
        first_access_in_both(&first_env, &session, &device).await,
        (Some(F0.to_string()), Value::from(cql_timestamp(F0))),
        "(Redis firstaccess, Cassandra first_access)"
    );
    assert!(first.terminate().await.unwrap().success());
    assert!(second.terminate().await.unwrap().success());
    drop_keyspace(&session, &first_env).await;
}

#[tokio::test]
async fn an_event_older_than_a_platform_rows_write_does_not_win_and_a_newer_one_does() {
    let env = env_with_own_keyspace();
    let keyspace = env["CASSANDRA_KEYSPACE"].clone();
    let session = cassandra_session().await;
    create_platform_table(&session, &keyspace, "timestamp").await;
    let device = unique("d");
    let written_at = insert_platform_row(&session, &keyspace, &device, F0, "platform-city").await;
    let platform_cells = platform_only_cells(&session, &keyspace, &device).await;
    assert_eq!(platform_cells["total_launches"], 181, "{platform_cells}");
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(READY).await.unwrap();
    let producer = producer();

    // An hour older than the row's cells: its city and user_declared_state lose in both
    // stores. Its district_custom (a column the row has no cell in; same statement as the
    // city) and its earlier first_access are written, which shows that the event was; being
    // the first to carry user_declared_state, it sets user_declared_on.
    let stale = written_at - HOUR_MS;
    produce_json(
        &producer,
        &env,
        &json!({"device_id": device, "api_last_updated_on": stale,
                "city": "stale", "district_custom": "stale-district",
                "user_declared_state": "Goa", "first_access": F0 - DAY_MS}),
    )
    .await;
    wait_for_field(&env, &session, &device, "district_custom", "stale-district").await;
    wait_for_first_access(&env, &session, &device, F0 - DAY_MS).await;
    let hash = redis_hash(&env, &device).await;
    assert_eq!(
        hash.get("city").map(String::as_str),
        Some("platform-city"),
        "Redis: {hash:?}"
    );
    // The row's other values are in Redis too, the event carried none of them.
    assert_eq!(hash.get("state").map(String::as_str), Some("Karnataka"));
    assert_eq!(
        hash.get("devicespec").map(String::as_str),
        Some(r#"{"make":"Acme","os":"Android"}"#)
    );
    assert_eq!(
        hash.get("user_declared_state").map(String::as_str),
        Some("Karnataka")
    );
    assert_eq!(hash.get("user_declared_on"), Some(&stale.to_string()));
    let row = cassandra_row(&session, &env, &device).await.expect("row");
    assert_eq!(row["city"], "platform-city", "Cassandra: {row}");
    assert_eq!(row["user_declared_state"], "Karnataka", "Cassandra: {row}");
    assert_eq!(
        row["user_declared_on"],
        cql_timestamp(stale),
        "Cassandra: {row}"
    );
    assert_eq!(
        platform_only_cells(&session, &keyspace, &device).await,
        platform_cells
    );

    // An hour newer: it wins in both.
    produce_json(
        &producer,
        &env,
        &json!({"device_id": device, "api_last_updated_on": written_at + HOUR_MS,
                "city": "fresh"}),
    )
    .await;
    wait_for_city(&env, &session, &device, "fresh", WAIT).await;
    assert_eq!(
        platform_only_cells(&session, &keyspace, &device).await,
        platform_cells,
        "the platform's own columns are never written"
    );
    assert!(service.terminate().await.unwrap().success());

    let (code, stdout) = verify(&env).await;
    assert_eq!(
        (code, stdout.lines().next()),
        (0, Some("0 of 1 devices differ")),
        "{stdout}"
    );
    drop_keyspace(&session, &env).await;
}

#[tokio::test]
async fn the_old_jobs_hash_is_updated_in_place_and_loses_its_ttl() {
    let env = env_with_own_keyspace();
    let keyspace = env["CASSANDRA_KEYSPACE"].clone();
    let session = cassandra_session().await;
    create_platform_table(&session, &keyspace, "timestamp").await;
    let prefix = &env["REDIS_DEVICE_KEY_PREFIX"];
    let mut redis = redis_connection().await;
    // `kept`: the hash's firstaccess is the earlier; `replaced`: the event's is, and the event's
    // version is years old (an unversioned field is older than any event); `with_row`: the
    // platform's row too, whose cells are newer than the hash's unversioned fields.
    let kept = unique("kept");
    let replaced = unique("replaced");
    let with_row = unique("with_row");
    for device in [&kept, &replaced, &with_row] {
        let key = format!("{prefix}{device}");
        let _: () = redis
            .hset_multiple(
                &key,
                &[
                    ("city", "old-job".to_string()),
                    ("firstaccess", F0.to_string()),
                    ("country", "IN".to_string()),
                ],
            )
            .await
            .expect("HSET");
        let _: () = redis.expire(&key, 86_400).await.expect("EXPIRE");
    }
    insert_platform_row(&session, &keyspace, &with_row, F0, "platform-city").await;

    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(READY).await.unwrap();
    let producer = producer();
    for (device, version, first_access) in [
        (&kept, now_ms(), F0 + DAY_MS),
        (&replaced, 1_650_000_000_000, F0 - DAY_MS),
    ] {
        produce_json(
            &producer,
            &env,
            &json!({"device_id": device, "api_last_updated_on": version, "city": "new",
                    "first_access": first_access}),
        )
        .await;
    }
    produce_json(
        &producer,
        &env,
        &json!({"device_id": with_row, "api_last_updated_on": now_ms(),
                "district_custom": "new-district"}),
    )
    .await;

    for (device, first_access) in [(&kept, F0), (&replaced, F0 - DAY_MS)] {
        wait_for_city(&env, &session, device, "new", WAIT).await;
        let hash = redis_hash(&env, device).await;
        assert_eq!(hash["city"], "new", "{device}: {hash:?}");
        assert_eq!(
            hash.get("country").map(String::as_str),
            Some("IN"),
            "{device}: a field the event did not carry stays: {hash:?}"
        );
        assert_eq!(
            hash.get("firstaccess"),
            Some(&first_access.to_string()),
            "{device}: the smaller firstaccess: {hash:?}"
        );
    }
    wait_for_field(&env, &session, &with_row, "district_custom", "new-district").await;
    let hash = redis_hash(&env, &with_row).await;
    assert_eq!(hash["city"], "platform-city", "{hash:?}");
    assert_eq!(hash["country"], "India", "{hash:?}");
    assert_eq!(hash["state"], "Karnataka", "{hash:?}");
    assert_eq!(hash["firstaccess"], F0.to_string(), "{hash:?}");

    for device in [&kept, &replaced, &with_row] {
        let ttl: i64 = redis.ttl(format!("{prefix}{device}")).await.expect("TTL");
        assert_eq!(ttl, -1, "{device}: the old job's TTL is removed");
        delete_redis_device(&env, device).await;
    }
    assert!(service.terminate().await.unwrap().success());
    drop_keyspace(&session, &env).await;
}

#[tokio::test]
async fn rebuild_redis_and_verify_take_an_adopted_row_the_service_never_wrote() {
    let env = env_with_own_keyspace();
    let keyspace = env["CASSANDRA_KEYSPACE"].clone();
    let session = cassandra_session().await;
    create_platform_table(&session, &keyspace, "timestamp").await;
    let device = unique("d");
    insert_platform_row(&session, &keyspace, &device, F0, "platform-city").await;
    // The old job's hash of the device, with its TTL and older values.
    let key = format!("{}{device}", env["REDIS_DEVICE_KEY_PREFIX"]);
    let mut redis = redis_connection().await;
    let _: () = redis
        .hset_multiple(&key, &[("city", "old-job"), ("country", "IN")])
        .await
        .expect("HSET");
    let _: () = redis.expire(&key, 86_400).await.expect("EXPIRE");
    let platform_cells = platform_only_cells(&session, &keyspace, &device).await;
    starts_and_stops(&env).await;

    let (code, stdout, stderr) =
        run_command(&["profile", "rebuild-redis"], &env, COMMAND_TIMEOUT).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("rebuilt 1 devices"), "{stdout}");
    let hash = redis_hash(&env, &device).await;
    for (field, value) in [
        ("city", "platform-city"),
        ("country", "India"),
        ("state", "Karnataka"),
        ("country_code", "IN"),
        ("firstaccess", "1600000000000"),
        ("uaspec", r#"{"agent":"Chrome","version":"120"}"#),
        ("user_declared_state", "Karnataka"),
    ] {
        assert_eq!(hash.get(field).map(String::as_str), Some(value), "{hash:?}");
    }
    for column in PLATFORM_ONLY {
        assert!(!hash.contains_key(column), "{hash:?}");
    }
    let ttl: i64 = redis.ttl(&key).await.expect("TTL");
    assert_eq!(ttl, -1, "the old job's TTL is removed");
    let (code, stdout) = verify(&env).await;
    assert_eq!(
        (code, stdout.lines().next()),
        (0, Some("0 of 1 devices differ")),
        "{stdout}"
    );
    assert_eq!(
        platform_only_cells(&session, &keyspace, &device).await,
        platform_cells
    );
    delete_redis_device(&env, &device).await;
    drop_keyspace(&session, &env).await;
}
