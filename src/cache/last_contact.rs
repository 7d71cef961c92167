//! The writer side of the customer cache's `changes` stream: a newer `last_contact` of a cached
//! device is written into its entry and recorded on the stream, so every instance's snapshot
//! picks it up on its next request (`CONTRACT.md` §4: a newer last contact is reflected at once).

use std::fmt;
use std::sync::LazyLock;

use crate::stores::redis::RedisConnection;
use futures::{StreamExt, TryStreamExt};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::filter::parse_last_contact;
use super::keys::CacheKeys;
use super::snapshot::CHANGES_MAX_LEN;
use crate::profile::{LastContact, ProfileUpdate};
use crate::stores::{RedisStore, StoreError};

/// Compare-and-set rounds before `push_last_contact` gives up on a serial others keep changing.
const PUSH_MAX_ATTEMPTS: u32 = 16;
/// Pushes of one batch of profile updates in flight at once.
const PUSHES_IN_FLIGHT: usize = 32;

/// What `push_last_contact` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The entry now holds the new `last_contact`; the change is on the stream.
    Updated,
    /// The serial is not in the customer cache.
    NotCached,
    /// The entry's `last_contact` is already as late or later.
    NotNewer,
    /// The stored entry is not a JSON object; left as it is.
    Unreadable,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cache entry of {serial} kept changing during {attempts} attempts to update it")]
    Contended { serial: String, attempts: u32 },
}

/// KEYS: live, changes. ARGV: serial, entry as read, new entry, stream bound. Writes the entry
/// only if it still holds the JSON that was read, and records the change on the stream.
static COMPARE_AND_SET: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
              return 0
          end
          redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
          redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'serial', ARGV[1], 'entry', ARGV[3])
          return 1",
    )
});

/// Sets a cached device's `last_contact` to `last_contact` if that is later than the one it
/// holds, keeping every other key and value of the entry as stored; readers see the change on
/// their next request.
pub async fn push_last_contact(
    redis: &mut RedisConnection,
    keys: &CacheKeys,
    serial: &str,
    last_contact: &LastContact,
) -> Result<PushOutcome, PushError> {
    for _ in 0..PUSH_MAX_ATTEMPTS {
        let stored: Option<String> = redis::cmd("HGET")
            .arg(keys.live())
            .arg(serial)
            .query_async(redis)
            .await
            .map_err(StoreError::from)?;
        let Some(stored) = stored else {
            return Ok(PushOutcome::NotCached);
        };
        let updated = match with_last_contact(&stored, last_contact) {
            Rewrite::Updated(updated) => updated,
            Rewrite::NotNewer => return Ok(PushOutcome::NotNewer),
            Rewrite::Unreadable => return Ok(PushOutcome::Unreadable),
        };
        let written: i64 = COMPARE_AND_SET
            .key(keys.live())
            .key(keys.changes())
            .arg(serial)
            .arg(&stored)
            .arg(&updated)
            .arg(CHANGES_MAX_LEN)
            .invoke_async(redis)
            .await
            .map_err(StoreError::from)?;
        if written == 1 {
            return Ok(PushOutcome::Updated);
        }
    }
    Err(PushError::Contended {
        serial: serial.to_string(),
        attempts: PUSH_MAX_ATTEMPTS,
    })
}

/// Pushes the `last_contact` of device profile updates into the customer cache, the device_id
/// being the serial (`CONTRACT.md` §4: a newer last contact is reflected at once).
#[derive(Clone)]
pub struct LastContactPusher {
    redis: RedisConnection,
    keys: CacheKeys,
}

impl LastContactPusher {
    pub fn new(redis: &RedisStore, keys: CacheKeys) -> Self {
        LastContactPusher {
            redis: redis.connection(),
            keys,
        }
    }

    /// Pushes every update that carries a `last_contact`. Fails on the first Redis error; a
    /// retry repeats the pushes harmlessly (only a later instant is ever written).
    pub async fn push(&self, updates: &[ProfileUpdate]) -> Result<(), StoreError> {
        let pushes: Vec<_> = updates
            .iter()
            .filter_map(|update| {
                let last_contact = update.last_contact.as_ref()?;
                Some(self.push_one(&update.device_id, last_contact))
            })
            .collect();
        futures::stream::iter(pushes)
            .buffer_unordered(PUSHES_IN_FLIGHT)
            .try_collect()
            .await
    }

    async fn push_one(&self, serial: &str, last_contact: &LastContact) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        match push_last_contact(&mut redis, &self.keys, serial, last_contact).await {
            Ok(PushOutcome::Unreadable) => {
                tracing::warn!(
                    serial,
                    "cache entry is not a JSON object; last_contact not pushed"
                );
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(PushError::Store(e)) => Err(e),
            // Lost the race to other writers every time: give up on this one device rather
            // than stall the whole pipeline.
            Err(contended @ PushError::Contended { .. }) => {
                tracing::warn!(error = %contended, "last_contact not pushed");
                Ok(())
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Rewrite {
    Updated(String),
    NotNewer,
    Unreadable,
}

/// The entry with `last_contact` replaced (or added), every other member byte for byte and in
/// its order. An entry whose `last_contact` does not parse counts as older than any instant.
fn with_last_contact(entry: &str, last_contact: &LastContact) -> Rewrite {
    let Ok(OrderedObject(members)) = serde_json::from_str::<OrderedObject>(entry) else {
        return Rewrite::Unreadable;
    };
    let stored_at = members
        .iter()
        .find(|(key, _)| key == "last_contact")
        .and_then(|(_, value)| serde_json::from_str::<String>(value.get()).ok())
        .and_then(|text| parse_last_contact(&text));
    if stored_at.is_some_and(|at| at >= last_contact.at) {
        return Rewrite::NotNewer;
    }
    let new_value = serde_json::Value::String(last_contact.text.clone()).to_string();
    let mut replaced = false;
    let mut parts: Vec<String> = members
        .iter()
        .map(|(key, value)| {
            let value = if key == "last_contact" {
                replaced = true;
                new_value.as_str()
            } else {
                value.get()
            };
            format!("{}:{value}", serde_json::Value::String(key.clone()))
        })
        .collect();
    if !replaced {
        parts.push(format!("\"last_contact\":{new_value}"));
    }
    Rewrite::Updated(format!("{{{}}}", parts.join(",")))
}

/// A JSON object's members in their order, values as their raw text.
struct OrderedObject<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for OrderedObject<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = OrderedObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(OrderedObject(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn at(text: &str) -> DateTime<Utc> {
        parse_last_contact(text).unwrap()
    }

    fn contact(text: &str) -> LastContact {
        LastContact {
            at: at(text),
            text: text.to_string(),
        }
    }

    #[test]
    fn last_contact_is_replaced_in_place_keeping_everything_else() {
        let stored = r#"{"probe_id":"27","last_contact":"2020-11-05T13:57:07Z","bruin_client_info":{"client_id":9994,"site_id":2048},"big":12345678901234567890123}"#;
        assert_eq!(
            with_last_contact(stored, &contact("2020-11-06T00:00:00+01:00")),
            Rewrite::Updated(
                r#"{"probe_id":"27","last_contact":"2020-11-06T00:00:00+01:00","bruin_client_info":{"client_id":9994,"site_id":2048},"big":12345678901234567890123}"#
                    .into()
            )
        );
    }

    #[test]
    fn only_a_later_instant_is_written() {
        let stored = r#"{"last_contact":"2020-11-05T13:57:07Z"}"#;
        assert_eq!(
            with_last_contact(stored, &contact("2020-11-05T13:57:07Z")),
            Rewrite::NotNewer
        );
        // Earlier in UTC although the text sorts later.
        assert_eq!(
            with_last_contact(stored, &contact("2020-11-05T14:00:00+02:00")),
            Rewrite::NotNewer
        );
        assert_eq!(
            with_last_contact("[1]", &contact("2020-11-05T13:57:07Z")),
            Rewrite::Unreadable
        );
    }

    #[test]
    fn a_missing_or_unreadable_last_contact_is_replaced() {
        assert_eq!(
            with_last_contact(r#"{"a":1}"#, &contact("2020-11-05T13:57:07Z")),
            Rewrite::Updated(r#"{"a":1,"last_contact":"2020-11-05T13:57:07Z"}"#.into())
        );
        assert_eq!(
            with_last_contact(
                r#"{"last_contact":"never"}"#,
                &contact("2020-11-05T13:57:07Z")
            ),
            Rewrite::Updated(r#"{"last_contact":"2020-11-05T13:57:07Z"}"#.into())
        );
    }
}
