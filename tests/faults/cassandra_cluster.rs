//! Scale-out (issue 13): a Cassandra ring of two nodes of the test's own
//! (`STACK_CASSANDRA_NODES=2`: 127.0.0.1 and 127.0.0.2), a keyspace of replication factor 2 that
//! the service creates (`CASSANDRA_REPLICATION`), and the second node stopped mid-stream, then
//! started again on its data. Every write needs `CASSANDRA_CONSISTENCY` replicas of the two:
//! * `ONE`: the live node is enough, so the push goes on while the other is down: events
//!   produced after the stop are in both stores and committed before the node returns;
//! * `QUORUM` (both of RF 2): every write is `Unavailable` while a node is down, a transient
//!   failure: the push pauses (retries counted, nothing committed past the stop, nothing of it in
//!   Cassandra), then resumes when the node is back.
//!
//! Either way every device ends at its latest version in Redis and in Cassandra.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::{eventually, producer};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency;

use crate::harness::{
    assert_all_latest_in, committed_records, count_latest, produce_all, produce_paced, size,
    topic_records, Figures, VersionedStream,
};
use crate::own_cassandra::{OwnCassandra, SECOND_NODE};

const WAIT: Duration = Duration::from_secs(120);
const CASSANDRA_RETRIES: &str =
    "hawkeye_customer_cache_store_write_retries_total{store=\"cassandra\"}";

/// A session to the nodes of `env` reading at `ONE`: with a node down, the live one answers.
async fn reader(env: &HashMap<String, String>) -> Session {
    let nodes: Vec<&str> = env["CASSANDRA_NODES"].split(',').collect();
    let profile = ExecutionProfile::builder()
        .consistency(Consistency::One)
        .build()
        .into_handle();
    SessionBuilder::new()
        .known_nodes(nodes)
        .default_execution_profile_handle(profile)
        .build()
        .await
        .expect("CQL session to the two nodes")
}

/// What the scenario saw while the second node was down.
struct Outage {
    /// Records of the topic once the node was down (nothing later may be committed at QUORUM).
    produced_at_stop: i64,
    /// Cassandra write retries before the stop.
    retries_before: f64,
    /// When the last event (version 3) was produced.
    produced_all_at: Instant,
}

/// The service at `consistency` on a fresh two-node ring with RF 2: version 1 lands, version 2
/// is being produced when the second node stops, version 3 is produced while it is down; then
/// `while_down` checks the push, the node starts again, and every device must end at version 3.
/// Returns the service's log.
async fn second_node_stopped_mid_stream(
    consistency: &str,
    while_down: impl AsyncFnOnce(&ServiceProcess, &Session, &VersionedStream, &Outage),
) -> Vec<String> {
    let started = Instant::now();
    let cluster = OwnCassandra::start_two_nodes(&[]);
    let mut env = isolated_env();
    env.extend(cluster.service_env());
    assert_eq!(env["CASSANDRA_NODES"].split(',').count(), 2);
    env.insert("CASSANDRA_CONSISTENCY".into(), consistency.into());
    env.insert(
        "CASSANDRA_REPLICATION".into(),
        "{'class': 'SimpleStrategy', 'replication_factor': 2}".into(),
    );
    let stream = VersionedStream::new("cluster", size(1_000, 10_000), 3);
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(WAIT).await.unwrap();
    let session = reader(&env).await;
    let replication = cluster.cql(&format!(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = '{}'",
        env["CASSANDRA_KEYSPACE"]
    ));
    assert!(
        replication.contains("replication_factor: 2"),
        "the service created the keyspace with RF 2: {replication}"
    );
    let topic = env["TOPIC_PROFILE_UPDATES"].clone();
    let group = format!("{}.profiles", env["KAFKA_GROUP_ID"]);
    let producer = producer();

    produce_all(&producer, &topic, &stream.version_events(1)).await;
    assert_all_latest_in(&env, &stream.up_to(1), WAIT, &session).await;
    let retries_before = service.metric(CASSANDRA_RETRIES).await.unwrap();

    let mid_stream = {
        let (producer, topic, events) = (producer.clone(), topic.clone(), stream.version_events(2));
        tokio::spawn(async move {
            produce_paced(&producer, &topic, &events, 10, Duration::from_millis(300)).await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("fault: stopping {SECOND_NODE}");
    cluster.stop(SECOND_NODE);
    let produced_at_stop = topic_records(&topic).await;
    mid_stream.await.expect("the events produced mid-stream");
    produce_all(&producer, &topic, &stream.version_events(3)).await;
    let outage = Outage {
        produced_at_stop,
        retries_before,
        produced_all_at: Instant::now(),
    };
    while_down(&service, &session, &stream, &outage).await;
    let retries_down = service.metric(CASSANDRA_RETRIES).await.unwrap();

    println!("fault: starting {SECOND_NODE} again");
    cluster.restart(SECOND_NODE);
    let stored = assert_all_latest_in(&env, &stream, WAIT, &session).await;
    let produced = topic_records(&topic).await;
    assert_eq!(produced, stream.len() as i64);
    eventually(WAIT, "every event committed", || async {
        (committed_records(&group, &topic).await == produced).then_some(())
    })
    .await;
    assert_eq!(topic_records(&env["TOPIC_PROFILE_DLQ"]).await, 0);
    assert!(service.terminate().await.unwrap().success());
    println!(
        "{consistency}: Cassandra write retries {retries_before} before the stop, \
         {retries_down} once the node was down"
    );
    Figures {
        scenario: &format!(
            "2 Cassandra nodes, RF 2, CASSANDRA_CONSISTENCY={consistency}: one stopped mid-stream, restarted"
        ),
        produced: stream.len(),
        stored,
        dead_lettered: 0,
        lost: 0,
        faults: 1,
        started,
    }
    .print();
    std::mem::take(&mut service.log)
}

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn at_one_a_stopped_node_of_two_neither_pauses_nor_loses_the_push() {
    second_node_stopped_mid_stream("ONE", async |service, session, stream, outage| {
        let env = &service.env;
        let topic = &env["TOPIC_PROFILE_UPDATES"];
        let group = format!("{}.profiles", env["KAFKA_GROUP_ID"]);
        // Everything, also what was produced after the stop, is written and committed while
        // the node is still down: read at ONE from the live node.
        assert_all_latest_in(env, stream, WAIT, session).await;
        let produced = topic_records(topic).await;
        eventually(WAIT, "every event committed with a node down", || async {
            (committed_records(&group, topic).await == produced).then_some(())
        })
        .await;
        println!(
            "ONE: all {produced} events stored and committed {:.1} s after the last was \
             produced, with {SECOND_NODE} down",
            outage.produced_all_at.elapsed().as_secs_f64()
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn at_quorum_a_stopped_node_of_two_pauses_the_push_until_it_returns() {
    let log = second_node_stopped_mid_stream("QUORUM", async |service, session, stream, outage| {
        let env = &service.env;
        let topic = &env["TOPIC_PROFILE_UPDATES"];
        let group = format!("{}.profiles", env["KAFKA_GROUP_ID"]);
        // Every write is Unavailable: retried with the partitions paused.
        eventually(WAIT, "Cassandra writes retried", || async {
            (service.metric(CASSANDRA_RETRIES).await.unwrap() > outage.retries_before).then_some(())
        })
        .await;
        let paused_at = service.metric(CASSANDRA_RETRIES).await.unwrap();
        tokio::time::sleep(Duration::from_secs(8)).await;
        let paused_until = service.metric(CASSANDRA_RETRIES).await.unwrap();
        assert!(
            paused_until > paused_at,
            "still retrying 8 s later ({paused_at} then {paused_until} retries)"
        );
        let committed = committed_records(&group, topic).await;
        assert!(
            committed <= outage.produced_at_stop,
            "{committed} records committed with a node down, but only {} were produced before \
             it stopped",
            outage.produced_at_stop
        );
        let count = count_latest(env, stream, session).await;
        assert_eq!(
            count.cassandra_latest, 0,
            "no version produced after the stop is in Cassandra"
        );
        println!(
            "QUORUM: {committed} of {} committed, {} devices at the latest version in Redis, \
             0 in Cassandra, retries {paused_until}",
            outage.produced_at_stop, count.redis_latest
        );
    })
    .await;
    // What the operator sees: one error line when the pause starts (its error is the driver's
    // last attempt; in our runs the stopped node's broken pool), one warning when it ends.
    for sign in ["pausing partitions", "partitions resumed"] {
        assert!(
            log.iter().any(|line| line.contains(sign)),
            "a line with {sign:?}: {log:#?}"
        );
    }
}
