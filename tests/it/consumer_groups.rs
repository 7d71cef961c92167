//! Each role of the service reads in its own consumer group named after `KAFKA_GROUP_ID`
//! (`.profiles`, `.requests`, `.refresh`), and the first start after the upgrade that split
//! the former single group takes over that group's committed offsets: nothing it had processed
//! is processed again, nothing after it is skipped.

use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::{produce_json, producer, redis_hash, wait_for_city};
use hawkeye_devtools::testkit::request_reply::{create_topic, run_get};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use hawkeye_devtools::testkit::{cassandra_session, stack, unique};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const PARTITIONS: i32 = 3;

fn group_member(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", stack().kafka_brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// The committed offset of `group` on each partition of `topic` (`None`: nothing committed).
fn committed(group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let offsets = group_member(group)
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    offsets
        .elements()
        .iter()
        .map(|element| match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        })
        .collect()
}

/// Commits, as `group`, the current end of every partition of `topic`: as if the former
/// service had processed everything produced so far.
fn commit_the_end(group: &str, topic: &str, partitions: i32) {
    let member = group_member(group);
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        let (_, end) = member
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .expect("watermarks");
        list.add_partition_offset(topic, partition, Offset::Offset(end))
            .expect("offset");
    }
    member.commit(&list, CommitMode::Sync).expect("commit");
}

#[tokio::test]
async fn each_role_commits_in_its_own_group() {
    let env = isolated_env();
    let group = env["KAFKA_GROUP_ID"].clone();
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(WAIT).await.unwrap();
    let device = unique("groups");
    let event = json!({"device_id": device, "city": "Pune"});
    produce_json(&producer(), &env, &event).await;
    wait_for_city(&env, &cassandra_session().await, &device, "Pune", WAIT).await;
    // Any reply will do (no refresh has run, so 503): the request is then acknowledged.
    run_get(&env, &[]).await;
    assert!(service.terminate().await.unwrap().success());

    // Each topic has the stack's 3 partitions; the one record of each went to one of them.
    let records_committed = |group: &str, topic: &str| -> i64 {
        committed(group, topic, PARTITIONS).iter().flatten().sum()
    };
    let profile_topic = &env["TOPIC_PROFILE_UPDATES"];
    assert_eq!(
        records_committed(&format!("{group}.profiles"), profile_topic),
        1,
        "the event, in the profiles group"
    );
    assert_eq!(
        records_committed(&format!("{group}.requests"), &env["TOPIC_GET"]),
        1,
        "the request, in the requests group"
    );
    assert_eq!(
        committed(&group, profile_topic, PARTITIONS),
        [None, None, None],
        "nothing in the former group"
    );
}

#[tokio::test]
async fn the_first_start_after_the_upgrade_continues_from_the_former_group() {
    let env = isolated_env();
    let group = env["KAFKA_GROUP_ID"].clone();
    let topic = env["TOPIC_PROFILE_UPDATES"].clone();
    create_topic(&topic, PARTITIONS).await;
    let producer = producer();
    let processed: Vec<String> = (0..6).map(|_| unique("before")).collect();
    for device in &processed {
        produce_json(
            &producer,
            &env,
            &json!({"device_id": device, "city": "Old"}),
        )
        .await;
    }
    // The former single group had processed those.
    commit_the_end(&group, &topic, PARTITIONS);
    let after: Vec<String> = (0..6).map(|_| unique("after")).collect();
    for device in &after {
        produce_json(
            &producer,
            &env,
            &json!({"device_id": device, "city": "New"}),
        )
        .await;
    }

    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(WAIT).await.unwrap();
    let session = cassandra_session().await;
    for device in &after {
        wait_for_city(&env, &session, device, "New", WAIT).await;
    }
    for device in &processed {
        assert!(
            redis_hash(&env, device).await.is_empty(),
            "{device} was processed by the former group already"
        );
    }
    assert!(service.terminate().await.unwrap().success());
    let log = service.log.join("\n");
    assert!(
        log.contains("took over the offsets committed by the former consumer group"),
        "{log}"
    );
}
