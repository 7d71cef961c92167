//! The Bruin API (`CONTRACT.md` §4 steps 3–4): an OAuth client-credentials token shared by every
//! concurrent call, the inventory of a serial and its management status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Url;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::retry::with_retries;
use super::{
    api, endpoint_url, send, ApiError, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRY_POLICY,
    MAX_SMALL_ANSWER_BYTES,
};
use crate::config::{BruinSettings, Secret};
use crate::observe::Metrics;
use crate::retry::RetryPolicy;

/// One inventory document of `GET /api/Inventory`, fields as Bruin sends them.
#[derive(Debug, Clone, Deserialize)]
pub struct InventoryDocument {
    #[serde(rename = "clientID")]
    pub client_id: serde_json::Value,
    #[serde(rename = "clientName")]
    pub client_name: serde_json::Value,
    #[serde(rename = "siteId")]
    pub site_id: serde_json::Value,
    pub status: Option<String>,
    #[serde(rename = "serviceNumber")]
    pub service_number: Option<String>,
}

#[derive(Deserialize)]
struct InventoryAnswer {
    #[serde(default)]
    documents: Vec<InventoryDocument>,
}

#[derive(Deserialize)]
struct AttributeAnswer {
    #[serde(default)]
    attributes: Vec<Attribute>,
}

#[derive(Deserialize)]
struct Attribute {
    key: Option<String>,
    value: Option<serde_json::Value>,
}

const MANAGEMENT_STATUS_KEY: &str = "Management Status";

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Clone)]
struct AccessToken {
    value: Secret,
    /// When to stop using it: a little before the server's expiry.
    renew_at: Instant,
}

/// The shared token, or the last failure to get one (so concurrent callers do not each hammer
/// a token server that just failed).
#[derive(Default)]
struct TokenState {
    token: Option<AccessToken>,
    failure: Option<(Instant, String)>,
}

/// Safe for many concurrent calls; clones share one token.
#[derive(Clone)]
pub struct BruinClient {
    http: reqwest::Client,
    token_url: Url,
    inventory_url: Url,
    attribute_url: Url,
    client_id: String,
    client_secret: Secret,
    metrics: Arc<Metrics>,
    retry: RetryPolicy,
    request_timeout: Duration,
    token: Arc<Mutex<TokenState>>,
}

impl BruinClient {
    pub fn new(settings: &BruinSettings, metrics: Arc<Metrics>) -> Result<Self, ApiError> {
        let http = super::client_builder()
            .build()
            .map_err(super::setup_error)?;
        Ok(BruinClient {
            http,
            token_url: endpoint_url(&settings.login_url, "identity/connect/token")?,
            inventory_url: endpoint_url(&settings.base_url, "api/Inventory")?,
            attribute_url: endpoint_url(&settings.base_url, "api/Inventory/Attribute")?,
            client_id: settings.client_id.clone(),
            client_secret: settings.client_secret.clone(),
            metrics,
            retry: DEFAULT_RETRY_POLICY,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            token: Arc::default(),
        })
    }

    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// `GET /api/Inventory?ServiceNumber={serial}`: every document, as sent.
    pub async fn inventory(&self, serial: &str) -> Result<Vec<InventoryDocument>, ApiError> {
        let mut url = self.inventory_url.clone();
        url.query_pairs_mut().append_pair("ServiceNumber", serial);
        let answer: InventoryAnswer = self.get_json(api::BRUIN_INVENTORY, url).await?;
        Ok(answer.documents)
    }

    /// `GET /api/Inventory/Attribute?ClientId=..&ServiceNumber=..&Status=A`: the value of the
    /// `"Management Status"` attribute, `None` when there is none.
    pub async fn management_status(
        &self,
        client_id: &serde_json::Value,
        serial: &str,
    ) -> Result<Option<String>, ApiError> {
        let client_id = match client_id {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let mut url = self.attribute_url.clone();
        url.query_pairs_mut()
            .append_pair("ClientId", &client_id)
            .append_pair("ServiceNumber", serial)
            .append_pair("Status", "A");
        let answer: AttributeAnswer = self.get_json(api::BRUIN_ATTRIBUTE, url).await?;
        Ok(answer
            .attributes
            .into_iter()
            .find(|attribute| attribute.key.as_deref() == Some(MANAGEMENT_STATUS_KEY))
            .and_then(|attribute| match attribute.value {
                Some(serde_json::Value::String(status)) => Some(status),
                _ => None,
            }))
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        api: &'static str,
        url: Url,
    ) -> Result<T, ApiError> {
        let body = with_retries(&self.retry, api, &self.metrics, || {
            self.get_with_token(api, &url)
        })
        .await?;
        serde_json::from_slice(&body).map_err(|e| ApiError::BadResponse {
            api,
            reason: e.to_string(),
        })
    }

    /// One call with the shared token; on 401 the token is dropped (once for all callers that
    /// used it), a new one fetched and the call repeated once.
    async fn get_with_token(&self, api: &'static str, url: &Url) -> Result<Vec<u8>, ApiError> {
        let token = self.token().await?;
        match self.get_once(api, url, &token).await {
            Err(ApiError::Unauthorized { .. }) => {
                self.forget(&token).await;
                let token = self.token().await?;
                self.get_once(api, url, &token).await
            }
            other => other,
        }
    }

    async fn get_once(
        &self,
        api: &'static str,
        url: &Url,
        token: &AccessToken,
    ) -> Result<Vec<u8>, ApiError> {
        let request = self
            .http
            .get(url.clone())
            .bearer_auth(token.value.expose())
            .timeout(self.request_timeout);
        send(api, request, MAX_SMALL_ANSWER_BYTES).await
    }

    /// The shared token, fetched by one caller while the others wait for it (single flight).
    async fn token(&self) -> Result<AccessToken, ApiError> {
        let mut state = self.token.lock().await;
        if let Some(token) = state.token.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(token.clone());
        }
        if let Some((failed_at, reason)) = &state.failure {
            if failed_at.elapsed() < self.retry.max_delay {
                return Err(ApiError::TokenUnavailable {
                    reason: reason.clone(),
                });
            }
        }
        match with_retries(&self.retry, api::BRUIN_TOKEN, &self.metrics, || {
            self.request_token()
        })
        .await
        {
            Ok(token) => {
                state.failure = None;
                state.token = Some(token.clone());
                Ok(token)
            }
            Err(error) => {
                state.failure = Some((Instant::now(), error.to_string()));
                Err(error)
            }
        }
    }

    /// Drops `rejected` unless another caller already replaced it.
    async fn forget(&self, rejected: &AccessToken) {
        let mut state = self.token.lock().await;
        if state
            .token
            .as_ref()
            .is_some_and(|t| t.value == rejected.value)
        {
            state.token = None;
        }
    }

    async fn request_token(&self) -> Result<AccessToken, ApiError> {
        let request = self
            .http
            .post(self.token_url.clone())
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "public_api"),
            ])
            .timeout(self.request_timeout);
        let body = match send(api::BRUIN_TOKEN, request, MAX_SMALL_ANSWER_BYTES).await {
            Err(ApiError::Unauthorized { api }) => {
                return Err(ApiError::CredentialsRefused { api, status: 401 })
            }
            Err(ApiError::Status {
                api,
                status: status @ (400 | 403),
                ..
            }) => return Err(ApiError::CredentialsRefused { api, status }),
            other => other?,
        };
        // serde's message could quote the token itself, so it is not passed on.
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|_| ApiError::BadResponse {
                api: api::BRUIN_TOKEN,
                reason: "the token answer lacks access_token or has fields of the wrong type"
                    .into(),
            })?;
        tracing::debug!(expires_in = answer.expires_in, "got a Bruin access token");
        Ok(AccessToken {
            value: Secret::new(answer.access_token),
            renew_at: Instant::now() + usable_lifetime(answer.expires_in),
        })
    }
}

/// How long a token is used: its lifetime minus a margin (a tenth, at most a minute) so that
/// calls in flight do not reach the server with a token that just expired. Without
/// `expires_in` the token is used until a call answers 401.
fn usable_lifetime(expires_in: Option<u64>) -> Duration {
    match expires_in {
        Some(seconds) => {
            let lifetime = Duration::from_secs(seconds);
            lifetime - (lifetime / 10).min(Duration::from_secs(60))
        }
        None => Duration::from_secs(365 * 24 * 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        assert_eq!(usable_lifetime(Some(3600)), Duration::from_secs(3540));
        assert_eq!(usable_lifetime(Some(10)), Duration::from_secs(9));
        assert_eq!(usable_lifetime(Some(0)), Duration::ZERO);
    }

    #[test]
    fn documents_keep_the_types_bruin_sent() {
        let answer: InventoryAnswer = serde_json::from_str(
            r#"{"documents":[{"clientID":9994,"clientName":"METTEL/NEW YORK","siteId":"2048",
                "status":"A","serviceNumber":"B827EB76A8DE","extra":true}]}"#,
        )
        .unwrap();
        let document = &answer.documents[0];
        assert_eq!(document.client_id, serde_json::json!(9994));
        assert_eq!(document.site_id, serde_json::json!("2048"));
        assert_eq!(document.status.as_deref(), Some("A"));
    }
}
