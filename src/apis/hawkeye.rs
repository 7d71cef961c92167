//! The Hawkeye/Ixia API: `POST /login` sets a session cookie, `GET /probes` pages through every
//! probe (`CONTRACT.md` §4 step 1).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Url;
use serde::Deserialize;

use super::retry::with_retries;
use super::{api, endpoint_url, send, ApiError, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRY_POLICY};
use crate::config::{HawkeyeSettings, Secret};
use crate::observe::Metrics;
use crate::retry::RetryPolicy;

/// Largest page answer read (a page of a few thousand probes is a few MiB).
const MAX_PAGE_BYTES: usize = 64 * 1024 * 1024;
/// Probes asked for per page; the server may send fewer (it caps `limit`).
const PAGE_LIMIT: usize = 500;

/// One probe as Hawkeye sends it; the fields the cache uses keep their JSON types.
#[derive(Debug, Clone, Deserialize)]
pub struct Probe {
    #[serde(rename = "probeId")]
    pub probe_id: serde_json::Value,
    pub uid: serde_json::Value,
    #[serde(rename = "probeGroup")]
    pub probe_group: serde_json::Value,
    #[serde(rename = "typeName")]
    pub type_name: serde_json::Value,
    #[serde(rename = "serialNumber")]
    pub serial_number: String,
    pub nodetonode: Option<LastUpdate>,
    pub realservice: Option<LastUpdate>,
}

/// The `nodetonode` / `realservice` objects: `lastUpdate` is RFC 3339 UTC or `"never"`.
#[derive(Debug, Clone, Deserialize)]
pub struct LastUpdate {
    #[serde(rename = "lastUpdate")]
    pub last_update: Option<String>,
}

impl Probe {
    /// The later of the two `lastUpdate` values, as sent; `None` when the probe was never
    /// contacted (both `"never"`, missing or unreadable).
    pub fn last_contact(&self) -> Option<&str> {
        [&self.nodetonode, &self.realservice]
            .into_iter()
            .filter_map(|object| object.as_ref()?.last_update.as_deref())
            .filter_map(|text| {
                Some((
                    DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc),
                    text,
                ))
            })
            .max_by_key(|(instant, _)| *instant)
            .map(|(_, text)| text)
    }
}

#[derive(Deserialize)]
struct ProbePage {
    /// A number in a string (`"2500"`); a plain number is accepted too.
    total_count: serde_json::Value,
    has_more: Option<bool>,
    records: Vec<Probe>,
}

impl ProbePage {
    fn total(&self) -> Result<usize, ApiError> {
        let parsed = match &self.total_count {
            serde_json::Value::String(text) => text.trim().parse().ok(),
            serde_json::Value::Number(number) => {
                number.as_u64().and_then(|n| usize::try_from(n).ok())
            }
            _ => None,
        };
        parsed
            .ok_or_else(|| bad_response(format!("total_count {} is not a count", self.total_count)))
    }
}

pub struct HawkeyeClient {
    http: reqwest::Client,
    login_url: Url,
    probes_url: Url,
    username: String,
    password: Secret,
    metrics: Arc<Metrics>,
    retry: RetryPolicy,
    request_timeout: Duration,
    /// Whether the cookie store holds a session; cleared when a call answers 401.
    logged_in: AtomicBool,
}

impl HawkeyeClient {
    pub fn new(settings: &HawkeyeSettings, metrics: Arc<Metrics>) -> Result<Self, ApiError> {
        let http = super::client_builder()
            .cookie_store(true)
            .build()
            .map_err(super::setup_error)?;
        Ok(HawkeyeClient {
            http,
            login_url: endpoint_url(&settings.base_url, "login")?,
            probes_url: endpoint_url(&settings.base_url, "probes")?,
            username: settings.username.clone(),
            password: settings.password.clone(),
            metrics,
            retry: DEFAULT_RETRY_POLICY,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            logged_in: AtomicBool::new(false),
        })
    }

    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Every probe, all pages: one complete fetch or an error, never a partial list. Logs in
    /// when needed and again once when a call answers 401; each page gets the retry policy.
    pub async fn fetch_probes(&self) -> Result<Vec<Probe>, ApiError> {
        let mut probes: Vec<Probe> = Vec::new();
        loop {
            let offset = probes.len();
            let page = with_retries(&self.retry, api::HAWKEYE, &self.metrics, || {
                self.page_with_session(offset)
            })
            .await?;
            let total = page.total()?;
            let received = page.records.len();
            probes.extend(page.records);
            if !page.has_more.unwrap_or(probes.len() < total) {
                return complete(probes, total);
            }
            if received == 0 {
                return Err(bad_response(format!(
                    "has_more with an empty page at offset {offset} of {total}"
                )));
            }
        }
    }

    async fn page_with_session(&self, offset: usize) -> Result<ProbePage, ApiError> {
        if !self.logged_in.load(Ordering::SeqCst) {
            self.login().await?;
        }
        match self.page(offset).await {
            Err(ApiError::Unauthorized { .. }) => {
                self.logged_in.store(false, Ordering::SeqCst);
                self.login().await?;
                self.page(offset).await
            }
            other => other,
        }
    }

    async fn login(&self) -> Result<(), ApiError> {
        let body =
            serde_json::json!({"username": self.username, "password": self.password.expose()});
        let request = self
            .http
            .post(self.login_url.clone())
            .timeout(self.request_timeout)
            .json(&body);
        match send(api::HAWKEYE, request, super::MAX_SMALL_ANSWER_BYTES).await {
            Ok(_) => {
                self.logged_in.store(true, Ordering::SeqCst);
                tracing::debug!("logged in to Hawkeye");
                Ok(())
            }
            Err(ApiError::Unauthorized { api }) => {
                Err(ApiError::CredentialsRefused { api, status: 401 })
            }
            Err(ApiError::Status {
                api, status: 403, ..
            }) => Err(ApiError::CredentialsRefused { api, status: 403 }),
            Err(other) => Err(other),
        }
    }

    async fn page(&self, offset: usize) -> Result<ProbePage, ApiError> {
        let request = self
            .http
            .get(self.probes_url.clone())
            .query(&[("limit", PAGE_LIMIT), ("offset", offset)])
            .timeout(self.request_timeout);
        let body = send(api::HAWKEYE, request, MAX_PAGE_BYTES).await?;
        serde_json::from_slice(&body)
            .map_err(|e| bad_response(format!("probe page at offset {offset}: {e}")))
    }
}

/// A fetch that ended (`has_more` false) must hold every probe `total_count` announced.
fn complete(probes: Vec<Probe>, total: usize) -> Result<Vec<Probe>, ApiError> {
    if probes.len() < total {
        return Err(bad_response(format!(
            "the pages ended after {} of {total} probes",
            probes.len()
        )));
    }
    Ok(probes)
}

fn bad_response(reason: String) -> ApiError {
    ApiError::BadResponse {
        api: api::HAWKEYE,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(nodetonode: serde_json::Value, realservice: serde_json::Value) -> Probe {
        let mut record = serde_json::json!({
            "probeId": "27", "uid": "b8:27:eb:76:a8:de", "probeGroup": "FIS",
            "typeName": "xr_pi", "serialNumber": "B827EB76A8DE", "os": "Linux",
        });
        if !nodetonode.is_null() {
            record["nodetonode"] = nodetonode;
        }
        if !realservice.is_null() {
            record["realservice"] = realservice;
        }
        serde_json::from_value(record).unwrap()
    }

    fn at(last_update: &str) -> serde_json::Value {
        serde_json::json!({"status": 0, "lastUpdate": last_update})
    }

    #[test]
    fn last_contact_is_the_later_last_update() {
        let p = probe(at("2020-11-05T13:57:07Z"), at("2020-10-15T02:18:28Z"));
        assert_eq!(p.last_contact(), Some("2020-11-05T13:57:07Z"));
        let p = probe(at("2020-10-15T02:18:28Z"), at("2020-11-05T13:57:07Z"));
        assert_eq!(p.last_contact(), Some("2020-11-05T13:57:07Z"));
    }

    #[test]
    fn last_contact_compares_instants_not_text() {
        // 12:00+02:00 is 10:00Z: earlier than 11:00Z although it sorts later as text.
        let p = probe(at("2021-01-01T12:00:00+02:00"), at("2021-01-01T11:00:00Z"));
        assert_eq!(p.last_contact(), Some("2021-01-01T11:00:00Z"));
    }

    #[test]
    fn never_and_missing_values_are_ignored() {
        let p = probe(at("never"), at("2020-10-15T02:18:28Z"));
        assert_eq!(p.last_contact(), Some("2020-10-15T02:18:28Z"));
        assert_eq!(probe(at("never"), at("never")).last_contact(), None);
        assert_eq!(
            probe(at("never"), serde_json::Value::Null).last_contact(),
            None
        );
        assert_eq!(
            probe(serde_json::json!({"status": 1}), serde_json::Value::Null).last_contact(),
            None
        );
    }

    #[test]
    fn total_count_is_read_from_a_string_or_a_number() {
        let page: ProbePage = serde_json::from_str(
            r#"{"total_count":"2500","count":0,"has_more":true,"records":[]}"#,
        )
        .unwrap();
        assert_eq!(page.total().unwrap(), 2500);
        let page: ProbePage = serde_json::from_str(r#"{"total_count":7,"records":[]}"#).unwrap();
        assert_eq!(page.total().unwrap(), 7);
        let page: ProbePage =
            serde_json::from_str(r#"{"total_count":"many","records":[]}"#).unwrap();
        assert!(page.total().is_err());
    }
}
