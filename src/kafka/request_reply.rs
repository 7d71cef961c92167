//! The request/reply headers of the Spring Kafka convention (`CONTRACT.md` §5): where a reply
//! goes and how the requester recognises it.

use rdkafka::message::{Header, Headers, OwnedHeaders};
use serde_json::Value;

use crate::config::is_valid_topic_name;

/// Topic to reply on instead of `TOPIC_REPLY`.
pub const REPLY_TOPIC: &str = "kafka_replyTopic";
/// Partition to reply on, a 4-byte big-endian int.
pub const REPLY_PARTITION: &str = "kafka_replyPartition";
/// Opaque bytes copied from the request to its replies.
pub const CORRELATION_ID: &str = "kafka_correlationId";

/// The headers of a request that shape its reply, copied out of the message. When a header
/// appears more than once the last one counts (as Spring reads them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHeaders {
    pub reply_topic: Option<Vec<u8>>,
    pub reply_partition: Option<Vec<u8>>,
    pub correlation_id: Option<Vec<u8>>,
}

impl RequestHeaders {
    pub fn read(headers: Option<&impl Headers>) -> Self {
        let mut read = RequestHeaders::default();
        for header in headers.into_iter().flat_map(|headers| headers.iter()) {
            let slot = match header.key {
                REPLY_TOPIC => &mut read.reply_topic,
                REPLY_PARTITION => &mut read.reply_partition,
                CORRELATION_ID => &mut read.correlation_id,
                _ => continue,
            };
            *slot = header.value.map(<[u8]>::to_vec);
        }
        read
    }
}

/// Where the replies of one request go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRoute {
    pub topic: String,
    /// `None`: the producer's partitioner picks one from the key.
    pub partition: Option<i32>,
}

/// Headers that make a reply impossible to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("header kafka_replyTopic {0:?} is not a Kafka topic name")]
    InvalidTopic(String),
    #[error(
        "header kafka_replyPartition must be a non-negative 4-byte big-endian int, got {0:02x?}"
    )]
    InvalidPartition(Vec<u8>),
    #[error("header kafka_replyTopic {0:?} is not a topic replies may go to (REPLY_TOPICS_ALLOWED, or an input topic of the service)")]
    ForbiddenTopic(String),
}

impl RouteError {
    /// The `reason` label of the failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            RouteError::InvalidTopic(_) => "invalid_reply_topic",
            RouteError::InvalidPartition(_) => "invalid_reply_partition",
            RouteError::ForbiddenTopic(_) => "reply_topic_not_allowed",
        }
    }
}

/// Where replies may go. Never into a topic the service itself reads: a reply on the refresh
/// topic would be a refresh trigger, on a profile topic a profile event, on the request topic a
/// request; a client allowed to write only cache requests could otherwise make the service
/// write where the client may not. Operators may narrow it further with a pattern.
#[derive(Debug, Clone)]
pub struct ReplyTopics {
    /// `TOPIC_REPLY`, for requests without `kafka_replyTopic`.
    pub default: String,
    /// The service's input topics.
    pub inputs: Vec<String>,
    /// `REPLY_TOPICS_ALLOWED`: a reply topic must match it whole.
    pub allowed: Option<regex::Regex>,
}

impl ReplyTopics {
    fn permits(&self, topic: &str) -> bool {
        !self.inputs.iter().any(|input| input == topic)
            && self.allowed.as_ref().is_none_or(|allowed| {
                allowed
                    .find(topic)
                    .is_some_and(|found| found.range() == (0..topic.len()))
            })
    }
}

impl ReplyRoute {
    pub fn of(headers: &RequestHeaders, topics: &ReplyTopics) -> Result<Self, RouteError> {
        let topic = match &headers.reply_topic {
            None => topics.default.clone(),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(name) if !is_valid_topic_name(name) => {
                    return Err(RouteError::InvalidTopic(name.into()))
                }
                Ok(name) if !topics.permits(name) => {
                    return Err(RouteError::ForbiddenTopic(name.into()))
                }
                Ok(name) => name.to_string(),
                Err(_) => {
                    return Err(RouteError::InvalidTopic(
                        String::from_utf8_lossy(bytes).into(),
                    ))
                }
            },
        };
        let partition = match &headers.reply_partition {
            None => None,
            Some(bytes) => match <[u8; 4]>::try_from(bytes.as_slice()).map(i32::from_be_bytes) {
                Ok(partition) if partition >= 0 => Some(partition),
                _ => return Err(RouteError::InvalidPartition(bytes.clone())),
            },
        };
        Ok(ReplyRoute { topic, partition })
    }
}

/// The correlation id of the replies: the request's header if present, else the `request_id`
/// as UTF-8 (a string's text, any other JSON value's JSON text); none when both are missing.
pub fn reply_correlation_id(headers: &RequestHeaders, request_id: &Value) -> Option<Vec<u8>> {
    match (&headers.correlation_id, request_id) {
        (Some(bytes), _) => Some(bytes.clone()),
        (None, Value::Null) => None,
        (None, Value::String(text)) => Some(text.clone().into_bytes()),
        (None, other) => Some(other.to_string().into_bytes()),
    }
}

/// The headers of a reply (or of a request, on the client side).
pub fn correlation_headers(correlation_id: Option<&[u8]>) -> OwnedHeaders {
    let headers = OwnedHeaders::new();
    match correlation_id {
        Some(id) => headers.insert(Header {
            key: CORRELATION_ID,
            value: Some(id),
        }),
        None => headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(topic: Option<&[u8]>, partition: Option<&[u8]>) -> RequestHeaders {
        RequestHeaders {
            reply_topic: topic.map(<[u8]>::to_vec),
            reply_partition: partition.map(<[u8]>::to_vec),
            correlation_id: None,
        }
    }

    fn topics(allowed: Option<&str>) -> ReplyTopics {
        ReplyTopics {
            default: "reply".into(),
            inputs: vec!["get".into(), "refresh".into(), "profiles".into()],
            allowed: allowed.map(|pattern| regex::Regex::new(pattern).unwrap()),
        }
    }

    #[test]
    fn replies_go_to_the_default_topic_unless_the_request_names_one() {
        assert_eq!(
            ReplyRoute::of(&headers(None, None), &topics(None)).unwrap(),
            ReplyRoute {
                topic: "reply".into(),
                partition: None
            }
        );
        assert_eq!(
            ReplyRoute::of(&headers(Some(b"mine"), Some(&[0, 0, 1, 2])), &topics(None)).unwrap(),
            ReplyRoute {
                topic: "mine".into(),
                partition: Some(258)
            }
        );
    }

    #[test]
    fn bad_reply_headers_are_refused() {
        let err = ReplyRoute::of(&headers(Some(b"bad topic"), None), &topics(None)).unwrap_err();
        assert_eq!(err.reason(), "invalid_reply_topic");
        assert!(err.to_string().contains("\"bad topic\""));
        for partition in [&[0, 1][..], &[0xff, 0xff, 0xff, 0xff], &[0, 0, 0, 0, 1]] {
            let err = ReplyRoute::of(&headers(None, Some(partition)), &topics(None)).unwrap_err();
            assert_eq!(err.reason(), "invalid_reply_partition");
        }
    }

    #[test]
    fn replies_never_go_into_an_input_topic_nor_outside_the_allowed_pattern() {
        let route =
            |topic: &[u8], allowed| ReplyRoute::of(&headers(Some(topic), None), &topics(allowed));
        for input in [&b"get"[..], b"refresh", b"profiles"] {
            let err = route(input, None).unwrap_err();
            assert_eq!(err.reason(), "reply_topic_not_allowed");
        }
        assert!(route(b"team-a.replies", Some(r"team-a\..*")).is_ok());
        // The pattern must match the whole name.
        assert!(route(b"x.team-a.replies", Some(r"team-a\..*")).is_err());
        assert!(route(b"team-b.replies", Some(r"team-a\..*")).is_err());
        assert!(
            route(b"refresh", Some(".*")).is_err(),
            "inputs stay refused"
        );
    }

    #[test]
    fn the_correlation_id_falls_back_to_the_request_id() {
        let mut with_header = headers(None, None);
        with_header.correlation_id = Some(vec![0, 159, 146, 150]);
        assert_eq!(
            reply_correlation_id(&with_header, &json!("r")),
            Some(vec![0, 159, 146, 150])
        );
        let plain = headers(None, None);
        assert_eq!(
            reply_correlation_id(&plain, &json!("r-1")),
            Some(b"r-1".to_vec())
        );
        assert_eq!(
            reply_correlation_id(&plain, &json!(42)),
            Some(b"42".to_vec())
        );
        assert_eq!(reply_correlation_id(&plain, &Value::Null), None);
    }
}
