//! What a cache request is answered (`CONTRACT.md` §5), and how the answer is cut into reply
//! values no larger than `REPLY_MAX_BYTES`. No I/O here.
//!
//! | case | status | body |
//! |---|---|---|
//! | value over [`MAX_REQUEST_BYTES`] (not parsed) | 400 | a line giving the size and the limit |
//! | value missing, not JSON, not an object, or no `body` object | 400 | [`MISSING_BODY`] |
//! | `last_contact_filter` present (not `null`) but not a datetime | 400 | a line naming the value |
//! | no refresh has ever succeeded | 202 | [`STILL_BUILDING`] |
//! | filter leaves no device, or the cache is empty | 404 | [`NO_DEVICES`] |
//! | otherwise | 200 | the entries whose `last_contact` is strictly after the filter |
//!
//! `request_id` is echoed as the request sent it (any JSON value); a request without one, or
//! whose value could not be read, is answered with `"request_id": null`.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use super::filter::{parse_filter, BadFilter};
use super::snapshot::{Entry, Snapshot};

pub const MISSING_BODY: &str = r#"You must specify {.."body":{...}} in the request"#;
pub const STILL_BUILDING: &str = "Cache is still being built";
pub const NO_DEVICES: &str = "No devices were found for the specified filters";
/// Not in the contract's table: the cache store could not be read (the request may be retried).
pub const UNAVAILABLE: &str = "The customer cache cannot be read right now; try again later";

/// A request is a few hundred bytes; a larger one is refused before it is parsed, so that
/// neither its parse nor an echoed `request_id` can grow without bound.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A request that can be answered from the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub request_id: Value,
    pub filter: Option<DateTime<Utc>>,
}

/// A request answered 400 without looking at the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub request_id: Value,
    pub reason: String,
}

/// Reads a request value; naive filter datetimes are read in `zone`.
pub fn parse_request(value: Option<&[u8]>, zone: Tz) -> Result<Request, Rejected> {
    let missing_body = |request_id: Value| Rejected {
        request_id,
        reason: MISSING_BODY.to_string(),
    };
    if let Some(bytes) = value.map(<[u8]>::len).filter(|&n| n > MAX_REQUEST_BYTES) {
        return Err(Rejected {
            request_id: Value::Null,
            reason: format!(
                "the request is {bytes} bytes, larger than the limit of {MAX_REQUEST_BYTES} bytes"
            ),
        });
    }
    let Some(Value::Object(mut request)) = value.and_then(|v| serde_json::from_slice(v).ok())
    else {
        return Err(missing_body(Value::Null));
    };
    let request_id = request.remove("request_id").unwrap_or(Value::Null);
    let Some(Value::Object(body)) = request.get("body") else {
        return Err(missing_body(request_id));
    };
    match read_filter(body.get("last_contact_filter"), zone) {
        Ok(filter) => Ok(Request { request_id, filter }),
        Err(bad) => Err(Rejected {
            request_id,
            reason: bad.to_string(),
        }),
    }
}

/// An absent or `null` filter means no filter.
fn read_filter(value: Option<&Value>, zone: Tz) -> Result<Option<DateTime<Utc>>, BadFilter> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => parse_filter(text, zone).map(Some),
        Some(other) => Err(BadFilter::new(other, zone)),
    }
}

/// The status and body of a reply, before it is rendered.
#[derive(Debug)]
pub struct Reply<'a> {
    pub status: u16,
    body: Body<'a>,
}

#[derive(Debug)]
enum Body<'a> {
    Message(String),
    Entries(&'a [Entry]),
}

impl<'a> Reply<'a> {
    /// The answer to a readable request; `cache` is `None` while no refresh has succeeded.
    pub fn answer(request: &Request, cache: Option<&'a Snapshot>) -> Reply<'a> {
        let Some(cache) = cache else {
            return Reply::message(202, STILL_BUILDING);
        };
        match cache.after(request.filter) {
            [] => Reply::message(404, NO_DEVICES),
            entries => Reply {
                status: 200,
                body: Body::Entries(entries),
            },
        }
    }

    pub fn rejected(rejected: &Rejected) -> Reply<'static> {
        Reply::message(400, &rejected.reason)
    }

    pub fn unavailable() -> Reply<'static> {
        Reply::message(503, UNAVAILABLE)
    }

    fn message(status: u16, text: &str) -> Reply<'static> {
        Reply {
            status,
            body: Body::Message(text.to_string()),
        }
    }

    /// Bytes of the body's entries: what rendering the reply will allocate, about.
    pub fn body_bytes(&self) -> usize {
        match &self.body {
            Body::Message(text) => text.len(),
            Body::Entries(entries) => entries.iter().map(|e| e.json().len() + 1).sum(),
        }
    }

    /// The reply values: one when it fits in `max_bytes`, else chunks that each hold a part of
    /// the list and `"chunk": {"index", "count"}`. A chunk is larger than `max_bytes` only when
    /// one entry alone does not fit. (The server renders the head and what follows it apart.)
    #[cfg(test)]
    pub fn render(&self, request_id: &Value, max_bytes: usize) -> Vec<Vec<u8>> {
        let head = self.head(request_id);
        with_head(&head, &self.render_after_head(head.len(), max_bytes))
    }

    /// The start of every reply value, the only part that depends on the request.
    pub fn head(&self, request_id: &Value) -> String {
        format!(
            r#"{{"request_id":{request_id},"status":{},"body":"#,
            self.status
        )
    }

    /// What follows the head in each reply value. It depends on the head only through its
    /// length, so the values for every request whose head is as long share it (the server
    /// puts the head in front of each).
    pub fn render_after_head(&self, head_bytes: usize, max_bytes: usize) -> Vec<Vec<u8>> {
        match &self.body {
            Body::Message(text) => vec![format!("{}}}", Value::String(text.clone())).into_bytes()],
            Body::Entries(entries) => render_entries(head_bytes, entries, max_bytes),
        }
    }
}

/// The reply values: `head` followed by each part rendered after it (the server makes each
/// value just before queueing it).
#[cfg(test)]
pub fn with_head(head: &str, parts: &[Vec<u8>]) -> Vec<Vec<u8>> {
    parts
        .iter()
        .map(|part| {
            let mut value = Vec::with_capacity(head.len() + part.len());
            value.extend_from_slice(head.as_bytes());
            value.extend_from_slice(part);
            value
        })
        .collect()
}

fn render_entries(head_bytes: usize, entries: &[Entry], max_bytes: usize) -> Vec<Vec<u8>> {
    // `[` + entries + commas + `]` + `}`: one byte per entry for its comma or the `]`.
    let whole_bytes =
        head_bytes + 1 + entries.iter().map(|e| e.json().len() + 1).sum::<usize>() + 1;
    if whole_bytes <= max_bytes {
        return vec![join(entries, "]}")];
    }
    // The chunk field's length depends on its numbers; budget for the widest possible ones.
    let widest = entries.len().to_string();
    let tail_max = chunk_tail(&widest, &widest).len();
    let budget = max_bytes.saturating_sub(head_bytes + 1 + tail_max);
    let parts = pack(entries, budget);
    let count = parts.len().to_string();
    parts
        .iter()
        .enumerate()
        .map(|(index, part)| join(part, &chunk_tail(&index.to_string(), &count)))
        .collect()
}

fn chunk_tail(index: &str, count: &str) -> String {
    format!(r#"],"chunk":{{"index":{index},"count":{count}}}}}"#)
}

/// `[` entries joined by `,` then `tail`.
fn join(entries: &[Entry], tail: &str) -> Vec<u8> {
    let size = 1 + tail.len() + entries.iter().map(|e| e.json().len() + 1).sum::<usize>();
    let mut value = Vec::with_capacity(size);
    value.push(b'[');
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            value.push(b',');
        }
        value.extend_from_slice(entry.json().as_bytes());
    }
    value.extend_from_slice(tail.as_bytes());
    value
}

/// Consecutive runs of entries whose joined list (commas included) fits in `budget`; an entry
/// larger than `budget` forms a run of its own.
fn pack(entries: &[Entry], budget: usize) -> Vec<&[Entry]> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, entry) in entries.iter().enumerate() {
        let separator = usize::from(i > start);
        if i > start && used + separator + entry.json().len() > budget {
            parts.push(&entries[start..i]);
            start = i;
            used = entry.json().len();
        } else {
            used += separator + entry.json().len();
        }
    }
    parts.push(&entries[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::snapshot::ChangeId;
    use serde_json::json;

    fn cache(devices: usize) -> Snapshot {
        Snapshot::load(
            "g".into(),
            ChangeId::default(),
            (0..devices).map(|i| {
                let serial = format!("S{i:05}");
                let entry = json!({
                    "serial_number": serial,
                    "last_contact": format!("2020-01-01T00:{:02}:{:02}Z", i / 60 % 60, i % 60),
                    "bruin_client_info": {"client_id": i, "client_name": "X".repeat(i % 50)},
                });
                (serial, entry.to_string())
            }),
        )
    }

    fn request(value: Value) -> Result<Request, Rejected> {
        parse_request(Some(value.to_string().as_bytes()), Tz::UTC)
    }

    fn reply_of(value: Value, cache: Option<&Snapshot>) -> Value {
        let rendered = match request(value) {
            Ok(request) => Reply::answer(&request, cache).render(&request.request_id, 1 << 20),
            Err(rejected) => Reply::rejected(&rejected).render(&rejected.request_id, 1 << 20),
        };
        assert_eq!(rendered.len(), 1);
        serde_json::from_slice(&rendered[0]).unwrap()
    }

    #[test]
    fn unreadable_requests_are_400_with_the_contract_text() {
        for value in [&b"not json"[..], b"[1]", b"\"body\""] {
            let rejected = parse_request(Some(value), Tz::UTC).unwrap_err();
            assert_eq!(rejected.reason, MISSING_BODY);
            assert_eq!(rejected.request_id, Value::Null);
        }
        assert_eq!(
            parse_request(None, Tz::UTC).unwrap_err().reason,
            MISSING_BODY
        );
        for value in [
            json!({"request_id": "r"}),
            json!({"request_id": "r", "body": [1]}),
        ] {
            let rejected = request(value).unwrap_err();
            assert_eq!(
                (rejected.reason.as_str(), rejected.request_id),
                (MISSING_BODY, json!("r"))
            );
        }
        let reply = reply_of(json!({"request_id": "r1", "body": "x"}), Some(&cache(1)));
        assert_eq!(
            reply,
            json!({"request_id": "r1", "status": 400, "body": MISSING_BODY})
        );
    }

    #[test]
    fn an_oversized_request_is_400_without_being_parsed() {
        let padding = "x".repeat(MAX_REQUEST_BYTES);
        let reply = reply_of(
            json!({"request_id": "big", "body": {}, "pad": padding}),
            None,
        );
        assert_eq!(reply["status"], 400);
        assert_eq!(reply["request_id"], Value::Null);
        let reason = reply["body"].as_str().unwrap();
        assert!(
            reason.contains("larger than the limit of 65536 bytes"),
            "{reason}"
        );

        let just_fits = "x".repeat(MAX_REQUEST_BYTES - 100);
        let reply = reply_of(
            json!({"request_id": "ok", "body": {}, "pad": just_fits}),
            None,
        );
        assert_eq!(reply["status"], 202);
    }

    #[test]
    fn a_bad_filter_is_400_naming_the_value() {
        let reply = reply_of(
            json!({"request_id": "r", "body": {"last_contact_filter": "last tuesday"}}),
            Some(&cache(1)),
        );
        assert_eq!(reply["status"], 400);
        assert!(
            reply["body"]
                .as_str()
                .unwrap()
                .contains(r#""last tuesday""#),
            "{reply}"
        );
        let numeric = request(json!({"body": {"last_contact_filter": 5}})).unwrap_err();
        assert!(numeric.reason.contains("last_contact_filter 5 "));
    }

    #[test]
    fn before_any_refresh_it_is_202() {
        let reply = reply_of(json!({"request_id": "r", "body": {}}), None);
        assert_eq!(
            reply,
            json!({"request_id": "r", "status": 202, "body": STILL_BUILDING})
        );
    }

    #[test]
    fn nothing_left_is_404() {
        let empty = reply_of(json!({"request_id": "r", "body": {}}), Some(&cache(0)));
        assert_eq!(
            empty,
            json!({"request_id": "r", "status": 404, "body": NO_DEVICES})
        );
        let filtered = reply_of(
            json!({"request_id": "r", "body": {"last_contact_filter": "2030-01-01T00:00:00Z"}}),
            Some(&cache(3)),
        );
        assert_eq!(filtered["status"], 404);
    }

    #[test]
    fn found_entries_are_200_strictly_after_the_filter() {
        let cache = cache(3);
        let all = reply_of(json!({"request_id": 7, "body": {"other": 1}}), Some(&cache));
        assert_eq!(all["status"], 200);
        assert_eq!(all["request_id"], 7);
        assert_eq!(all["body"].as_array().unwrap().len(), 3);
        // S00001 has exactly 00:00:01: equal is not after.
        let after = reply_of(
            json!({"body": {"last_contact_filter": "2020-01-01 00:00:01", "x": null}}),
            Some(&cache),
        );
        assert_eq!(after["request_id"], Value::Null);
        assert_eq!(after["body"][0]["serial_number"], "S00002");
        assert_eq!(after["body"].as_array().unwrap().len(), 1);
        assert!(after.get("chunk").is_none());
        let null_filter = reply_of(json!({"body": {"last_contact_filter": null}}), Some(&cache));
        assert_eq!(null_filter["body"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn large_replies_are_chunked_within_the_limit_and_join_back() {
        let cache = cache(2000);
        let full: Value = serde_json::from_slice(
            &Reply::answer(
                &request(json!({"request_id": "r", "body": {}})).unwrap(),
                Some(&cache),
            )
            .render(&json!("r"), usize::MAX)[0],
        )
        .unwrap();
        for limit in [4096, 20_000, 100_000] {
            let chunks = Reply::answer(
                &request(json!({"request_id": "r", "body": {}})).unwrap(),
                Some(&cache),
            )
            .render(&json!("r"), limit);
            assert!(chunks.len() > 1);
            let mut joined = Vec::new();
            for (index, chunk) in chunks.iter().enumerate() {
                assert!(
                    chunk.len() <= limit,
                    "chunk {index} is {} bytes",
                    chunk.len()
                );
                let chunk: Value = serde_json::from_slice(chunk).unwrap();
                assert_eq!(chunk["request_id"], "r");
                assert_eq!(chunk["status"], 200);
                assert_eq!(
                    chunk["chunk"],
                    json!({"index": index, "count": chunks.len()})
                );
                joined.extend(chunk["body"].as_array().unwrap().iter().cloned());
            }
            assert_eq!(Value::Array(joined), full["body"]);
        }
    }

    #[test]
    fn the_parts_after_one_head_complete_any_head_of_the_same_length() {
        let cache = cache(2000);
        let reply = Reply::answer(&request(json!({"body": {}})).unwrap(), Some(&cache));
        for limit in [usize::MAX, 20_000] {
            let parts = reply.render_after_head(reply.head(&json!("aaaa")).len(), limit);
            assert_eq!(
                with_head(&reply.head(&json!("bbbb")), &parts),
                reply.render(&json!("bbbb"), limit)
            );
        }
    }

    #[test]
    fn an_entry_larger_than_the_limit_travels_alone() {
        let big = json!({"last_contact": "2020-01-01T00:00:00Z", "pad": "x".repeat(5000)});
        let small = json!({"last_contact": "2020-01-02T00:00:00Z"});
        let cache = Snapshot::load(
            "g".into(),
            ChangeId::default(),
            vec![
                ("A".into(), big.to_string()),
                ("B".into(), small.to_string()),
            ],
        );
        let chunks = Reply::answer(&request(json!({"body": {}})).unwrap(), Some(&cache))
            .render(&Value::Null, 4096);
        assert_eq!(chunks.len(), 2);
        let first: Value = serde_json::from_slice(&chunks[0]).unwrap();
        assert_eq!(first["body"], json!([big]));
        assert!(chunks[1].len() <= 4096);
    }

    #[test]
    fn the_unavailable_reply_is_503() {
        let rendered = Reply::unavailable().render(&json!("r"), 4096);
        let reply: Value = serde_json::from_slice(&rendered[0]).unwrap();
        assert_eq!(
            reply,
            json!({"request_id": "r", "status": 503, "body": UNAVAILABLE})
        );
    }
}
