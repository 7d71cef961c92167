//! Operational events on `TOPIC_NOTIFICATIONS` (`CONTRACT.md` §6), for operators and alerting.
//! Each event carries `event`, `at` (RFC 3339) and `environment`; the record key is the event
//! name so that one kind of event stays in order on one partition. What the events are is up to
//! the job that sends them (the refresh's are in `cache::notifications`).

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::producer::FutureRecord;
use serde::Serialize;

use super::ServiceProducer;

/// How long one notification may wait for delivery before it is logged as lost.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A notification: serializes to a JSON object holding its `event` name.
pub trait Event: Serialize {
    fn event(&self) -> &'static str;
}

#[derive(Serialize)]
struct Envelope<'a, E: Serialize> {
    #[serde(flatten)]
    event: &'a E,
    at: String,
    environment: &'a str,
}

/// Publishes notifications through the service's shared producer.
#[derive(Clone)]
pub struct Notifier {
    producer: ServiceProducer,
    topic: String,
    environment: String,
}

impl Notifier {
    pub fn new(producer: ServiceProducer, topic: &str, environment: &str) -> Self {
        Notifier {
            producer,
            topic: topic.to_string(),
            environment: environment.to_string(),
        }
    }

    /// Sends one event. A notification that cannot be delivered is logged, never an error of
    /// the work it reports on.
    pub async fn send(&self, notification: &impl Event) {
        let event = notification.event();
        let payload = match envelope(notification, &self.environment, Utc::now()) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::error!(event, error = %e, "cannot encode notification");
                return;
            }
        };
        let record = FutureRecord::to(&self.topic).key(event).payload(&payload);
        match self.producer.send(record, DELIVERY_TIMEOUT).await {
            Ok(_) => tracing::debug!(event, "notification sent"),
            Err((e, _)) => tracing::warn!(event, error = %e, "notification not delivered"),
        }
    }
}

fn envelope(
    event: &impl Event,
    environment: &str,
    at: DateTime<Utc>,
) -> serde_json::Result<String> {
    serde_json::to_string(&Envelope {
        event,
        at: at.to_rfc3339_opts(SecondsFormat::Millis, true),
        environment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[derive(Serialize)]
    #[serde(tag = "event", rename_all = "snake_case")]
    enum Sample {
        SomethingHappened { count: usize },
    }

    impl Event for Sample {
        fn event(&self) -> &'static str {
            "something_happened"
        }
    }

    #[test]
    fn the_envelope_adds_the_time_and_environment() {
        let at = DateTime::parse_from_rfc3339("2024-05-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let encoded = envelope(&Sample::SomethingHappened { count: 3 }, "prod", at).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&encoded).unwrap(),
            json!({"event": "something_happened", "count": 3,
                   "at": "2024-05-01T10:00:00.000Z", "environment": "prod"})
        );
    }
}
