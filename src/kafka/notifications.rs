//! Operational events on `TOPIC_NOTIFICATIONS` (`CONTRACT.md` §6), for operators and alerting.
//! Each event carries `at` (RFC 3339) and `environment`; the record key is the event name so
//! that one kind of event stays in order on one partition.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use crate::cache::rules::ClientInfo;

/// How long one notification may wait for delivery before it is logged as lost.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Notification {
    RefreshSucceeded {
        devices: usize,
        probes: usize,
        duration_ms: u64,
        #[serde(flatten)]
        requests: Requests,
    },
    RefreshFailed {
        reason: String,
        attempts: u32,
        #[serde(flatten)]
        requests: Requests,
    },
    MultipleInventories {
        serials: BTreeMap<String, Vec<ClientInfo>>,
    },
}

/// The trigger messages a run served. Several triggers that arrive during a run coalesce into
/// one follow-up run: `request_id` is the first of them (the contract's field), `request_ids`
/// lists all of them so that no requester is left without an answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Requests {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_ids: Vec<String>,
}

impl Requests {
    pub fn new(request_ids: Vec<String>) -> Self {
        Requests {
            request_id: request_ids.first().cloned(),
            request_ids,
        }
    }
}

impl Notification {
    pub fn event(&self) -> &'static str {
        match self {
            Notification::RefreshSucceeded { .. } => "refresh_succeeded",
            Notification::RefreshFailed { .. } => "refresh_failed",
            Notification::MultipleInventories { .. } => "multiple_inventories",
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(flatten)]
    notification: &'a Notification,
    at: String,
    environment: &'a str,
}

/// Publishes notifications through the service's shared producer.
#[derive(Clone)]
pub struct Notifier {
    producer: FutureProducer,
    topic: String,
    environment: String,
}

impl Notifier {
    pub fn new(producer: FutureProducer, topic: &str, environment: &str) -> Self {
        Notifier {
            producer,
            topic: topic.to_string(),
            environment: environment.to_string(),
        }
    }

    /// Sends one event. A notification that cannot be delivered is logged, never an error of
    /// the work it reports on.
    pub async fn send(&self, notification: &Notification) {
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
    notification: &Notification,
    environment: &str,
    at: DateTime<Utc>,
) -> serde_json::Result<String> {
    serde_json::to_string(&Envelope {
        notification,
        at: at.to_rfc3339_opts(SecondsFormat::Millis, true),
        environment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn encoded(notification: &Notification) -> Value {
        let at = DateTime::parse_from_rfc3339("2024-05-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        serde_json::from_str(&envelope(notification, "prod", at).unwrap()).unwrap()
    }

    #[test]
    fn refresh_succeeded_echoes_the_requests() {
        let notification = Notification::RefreshSucceeded {
            devices: 3,
            probes: 5,
            duration_ms: 1200,
            requests: Requests::new(vec!["r1".into(), "r2".into()]),
        };
        assert_eq!(
            encoded(&notification),
            json!({"event": "refresh_succeeded", "devices": 3, "probes": 5, "duration_ms": 1200,
                   "request_id": "r1", "request_ids": ["r1", "r2"],
                   "at": "2024-05-01T10:00:00.000Z", "environment": "prod"})
        );
    }

    #[test]
    fn a_run_without_trigger_message_has_no_request_fields() {
        let notification = Notification::RefreshFailed {
            reason: "probes unavailable".into(),
            attempts: 10,
            requests: Requests::new(Vec::new()),
        };
        assert_eq!(
            encoded(&notification),
            json!({"event": "refresh_failed", "reason": "probes unavailable", "attempts": 10,
                   "at": "2024-05-01T10:00:00.000Z", "environment": "prod"})
        );
    }

    #[test]
    fn multiple_inventories_list_every_client_per_serial() {
        let client = |id: i64| ClientInfo {
            client_id: json!(id),
            client_name: json!("ACME"),
            site_id: json!(7),
        };
        let notification = Notification::MultipleInventories {
            serials: BTreeMap::from([("S1".to_string(), vec![client(1), client(2)])]),
        };
        assert_eq!(notification.event(), "multiple_inventories");
        assert_eq!(
            encoded(&notification)["serials"],
            json!({"S1": [{"client_id": 1, "client_name": "ACME", "site_id": 7},
                          {"client_id": 2, "client_name": "ACME", "site_id": 7}]})
        );
    }
}
