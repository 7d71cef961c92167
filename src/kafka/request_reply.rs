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
}

impl RouteError {
    /// The `reason` label of the failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            RouteError::InvalidTopic(_) => "invalid_reply_topic",
            RouteError::InvalidPartition(_) => "invalid_reply_partition",
        }
    }
}

impl ReplyRoute {
    pub fn of(headers: &RequestHeaders, default_topic: &str) -> Result<Self, RouteError> {
        let topic = match &headers.reply_topic {
            None => default_topic.to_string(),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(name) if is_valid_topic_name(name) => name.to_string(),
                _ => {
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

    #[test]
    fn replies_go_to_the_default_topic_unless_the_request_names_one() {
        assert_eq!(
            ReplyRoute::of(&headers(None, None), "reply").unwrap(),
            ReplyRoute {
                topic: "reply".into(),
                partition: None
            }
        );
        assert_eq!(
            ReplyRoute::of(&headers(Some(b"mine"), Some(&[0, 0, 1, 2])), "reply").unwrap(),
            ReplyRoute {
                topic: "mine".into(),
                partition: Some(258)
            }
        );
    }

    #[test]
    fn bad_reply_headers_are_refused() {
        let err = ReplyRoute::of(&headers(Some(b"bad topic"), None), "reply").unwrap_err();
        assert_eq!(err.reason(), "invalid_reply_topic");
        assert!(err.to_string().contains("\"bad topic\""));
        for partition in [&[0, 1][..], &[0xff, 0xff, 0xff, 0xff], &[0, 0, 0, 0, 1]] {
            let err = ReplyRoute::of(&headers(None, Some(partition)), "reply").unwrap_err();
            assert_eq!(err.reason(), "invalid_reply_partition");
        }
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
