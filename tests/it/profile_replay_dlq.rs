//! `profile replay-dlq`: the dead letters a running service wrote go back to the profile topic
//! with their original key and bytes and headers naming the letter; `--dry-run` sends nothing;
//! letters without a value are skipped and counted; `--from-offset` starts later.

use std::collections::HashMap;
use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::{header, produce, producer, records_in, TopicReader};
use hawkeye_devtools::testkit::service::{binary, isolated_env, run_command};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;

const WAIT: Duration = Duration::from_secs(60);

/// Runs `profile replay-dlq` with `args` to its end: exit code, stdout lines, stderr.
async fn replay_dlq(env: &HashMap<String, String>, args: &[&str]) -> (i32, Vec<String>, String) {
    let command: Vec<&str> = ["profile", "replay-dlq"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let (code, stdout, stderr) = run_command(&command, env, WAIT).await;
    (code, stdout.lines().map(str::to_string).collect(), stderr)
}

#[tokio::test]
async fn dead_letters_are_replayed_with_their_bytes_and_a_header_naming_them() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(WAIT).await.unwrap();
    let env = service.env.clone();
    let producer = producer();
    let poison: [(&str, &[u8]); 2] = [("not-json", b"{not json"), ("no-id", br#"{"city":"Pune"}"#)];
    for (key, value) in poison {
        produce(&producer, &env, Some(key), value).await;
    }
    // Without a key: dead-lettered (a keyed tombstone deletes its device).
    let tombstone: FutureRecord<'_, str, [u8]> = FutureRecord::to(&env["TOPIC_PROFILE_UPDATES"]);
    producer
        .send(tombstone, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .expect("cannot produce a tombstone");
    let letters = TopicReader::from_beginning(&env["TOPIC_PROFILE_DLQ"])
        .take(3, WAIT)
        .await;
    // Stopped, so that replayed poison is not dead-lettered again while the test reads.
    assert!(service.terminate().await.unwrap().success());
    let profile_topic = &env["TOPIC_PROFILE_UPDATES"];
    assert_eq!(records_in(profile_topic), 3);

    let (code, lines, stderr) = replay_dlq(&env, &["--dry-run"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines.len(), 4, "{lines:?}");
    for letter in &letters {
        let at = format!("{}/{} ", letter.partition(), letter.offset());
        let line = lines
            .iter()
            .find(|line| line.starts_with(&at))
            .unwrap_or_else(|| panic!("no line for {at}: {lines:?}"));
        let reason = header(letter, "error.reason").expect("error.reason");
        assert!(line.contains(&format!("reason={reason:?}")), "{line}");
        let expected = if letter.payload().is_some() {
            format!(
                "would send {} bytes to {profile_topic}",
                letter.payload().unwrap().len()
            )
        } else {
            "would skip".to_string()
        };
        assert!(line.contains(&expected), "{line}");
    }
    assert!(
        lines[3].starts_with("would replay 2 dead letters (1 skipped) in "),
        "{lines:?}"
    );
    assert_eq!(records_in(profile_topic), 3, "the dry run sent nothing");

    let (code, lines, stderr) = replay_dlq(&env, &[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        lines[0].starts_with("replayed 2 dead letters (1 skipped) in "),
        "{lines:?}"
    );
    let replayed: Vec<_> = TopicReader::from_beginning(profile_topic)
        .take(5, WAIT)
        .await
        .into_iter()
        .filter(|event| header(event, "replayed.from.offset").is_some())
        .collect();
    assert_eq!(replayed.len(), 2);
    for event in &replayed {
        let partition: i32 = header(event, "replayed.from.partition")
            .expect("replayed.from.partition")
            .parse()
            .unwrap();
        let offset: i64 = header(event, "replayed.from.offset")
            .unwrap()
            .parse()
            .unwrap();
        let letter = letters
            .iter()
            .find(|l| l.partition() == partition && l.offset() == offset)
            .expect("the header names a dead letter");
        assert_eq!(event.key(), letter.key());
        assert_eq!(event.payload(), letter.payload());
        assert!(event.payload().is_some());
    }

    // From offset 1 on: only the letters at offsets >= 1 of their partition.
    let later = letters.iter().filter(|l| l.offset() >= 1).count();
    let (code, lines, stderr) = replay_dlq(&env, &["--dry-run", "--from-offset", "1"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines.len(), later + 1, "{lines:?}");
}
