//! The refresh's operational events (`CONTRACT.md` §6), sent through the service's
//! notification publisher (`kafka::notifications`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::rules::ClientInfo;
use crate::kafka::notifications::Event;

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

impl Event for Notification {
    fn event(&self) -> &'static str {
        match self {
            Notification::RefreshSucceeded { .. } => "refresh_succeeded",
            Notification::RefreshFailed { .. } => "refresh_failed",
            Notification::MultipleInventories { .. } => "multiple_inventories",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn encoded(notification: &Notification) -> Value {
        serde_json::to_value(notification).unwrap()
    }

    #[test]
    fn refresh_succeeded_echoes_the_requests() {
        let notification = Notification::RefreshSucceeded {
            devices: 3,
            probes: 5,
            duration_ms: 1200,
            requests: Requests::new(vec!["r1".into(), "r2".into()]),
        };
        assert_eq!(notification.event(), "refresh_succeeded");
        assert_eq!(
            encoded(&notification),
            json!({"event": "refresh_succeeded", "devices": 3, "probes": 5, "duration_ms": 1200,
                   "request_id": "r1", "request_ids": ["r1", "r2"]})
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
            json!({"event": "refresh_failed", "reason": "probes unavailable", "attempts": 10})
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
