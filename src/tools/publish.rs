//! `profile publish`: an operator's producer of device profile events. Reads JSON objects, one
//! per line, and produces them to the first topic of `TOPIC_PROFILE_UPDATES` keyed by their
//! `device_id`.

use std::io::BufRead;
use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use rdkafka::producer::FutureRecord;
use serde_json::{Map, Value};

use crate::config::KafkaSettings;
use crate::kafka::{ensure_topics, producer};

/// Deliveries awaited at once.
const IN_FLIGHT: usize = 1000;
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// One line to send: its key (the `device_id`, when it is a string) and its text.
#[derive(Debug, PartialEq, Eq)]
struct Event {
    key: Option<String>,
    value: String,
}

/// Reads every line first, so that a malformed line stops the command before anything is sent.
fn read_events(input: impl BufRead) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    for (index, line) in input.lines().enumerate() {
        let line = line.context("cannot read the input")?;
        if line.trim().is_empty() {
            continue;
        }
        let object: Map<String, Value> = serde_json::from_str(&line)
            .with_context(|| format!("line {}: not a JSON object", index + 1))?;
        let key = object
            .get("device_id")
            .and_then(Value::as_str)
            .map(|id| id.trim().to_string());
        events.push(Event { key, value: line });
    }
    Ok(events)
}

/// Sends every event to `topic` and waits for each delivery; returns how many were sent.
pub async fn publish(
    settings: &KafkaSettings,
    topic: &str,
    input: impl BufRead,
) -> anyhow::Result<usize> {
    let events = read_events(input)?;
    ensure_topics(settings, &[topic]).await?;
    let producer = producer(settings)?;
    futures::stream::iter(&events)
        .map(|event| {
            let mut record = FutureRecord::to(topic).payload(&event.value);
            if let Some(key) = &event.key {
                record = record.key(key);
            }
            let producer = &producer;
            async move { producer.send(record, QUEUE_TIMEOUT).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .map_err(|(error, _)| anyhow::anyhow!("cannot deliver to {topic}: {error}"))
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok(events.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_keyed_by_device_id_and_blank_lines_skipped() {
        let input = "{\"device_id\":\" d1 \",\"city\":\"x\"}\n\n{\"city\":\"y\"}\n";
        let events = read_events(input.as_bytes()).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].key.as_deref(), Some("d1"));
        assert_eq!(events[0].value, "{\"device_id\":\" d1 \",\"city\":\"x\"}");
        assert_eq!(events[1].key, None);
    }

    #[test]
    fn a_line_that_is_not_an_object_names_its_number() {
        let error = read_events("{}\n[1]\n".as_bytes()).unwrap_err();
        assert_eq!(error.to_string(), "line 2: not a JSON object");
    }
}
