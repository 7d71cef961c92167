//! HTTP clients of the two external APIs of the customer cache refresh (`CONTRACT.md` §4):
//! Hawkeye/Ixia (probes) and Bruin (inventory and management status).
//!
//! Both share one error type, one retry policy ([`retry::DEFAULT_RETRY_POLICY`], the
//! service's [`crate::retry::RetryPolicy`]) and one way of sending
//! a request: a per-request timeout and a cap on the size of every answer, so no reply can hang
//! a refresh or exhaust memory. Error texts never carry secrets: no passwords, client secrets,
//! tokens or cookies, and no URLs (which could carry credentials).

pub mod bruin;
pub mod hawkeye;
pub mod retry;

use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};

pub use bruin::{BruinClient, InventoryDocument};
pub use hawkeye::{HawkeyeClient, LastUpdate, Probe};
pub use retry::DEFAULT_RETRY_POLICY;

/// Label values of `api_requests_total{api=...}`, also the prefix of every error text.
pub mod api {
    pub const HAWKEYE: &str = "hawkeye";
    pub const BRUIN_TOKEN: &str = "bruin_token";
    pub const BRUIN_INVENTORY: &str = "bruin_inventory";
    pub const BRUIN_ATTRIBUTE: &str = "bruin_attribute";
}

/// Default time one HTTP call (connect, send, whole answer) may take.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer read from a login, token or Bruin call (they are a few hundred bytes).
const MAX_SMALL_ANSWER_BYTES: usize = 1024 * 1024;

/// A failed call to Hawkeye or Bruin. `api` is one of the names in [`api`].
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{api}: request timed out")]
    Timeout { api: &'static str },
    #[error("{api}: connection failed: {reason}")]
    Connection { api: &'static str, reason: String },
    #[error("{api}: answered HTTP {status}")]
    Status {
        api: &'static str,
        status: u16,
        /// The server's `Retry-After`, when it sent one in seconds.
        retry_after: Option<Duration>,
    },
    /// 401 to a call made with a session or token; the clients log in again once and repeat.
    #[error("{api}: answered HTTP 401 Unauthorized")]
    Unauthorized { api: &'static str },
    #[error("{api}: credentials refused (HTTP {status})")]
    CredentialsRefused { api: &'static str, status: u16 },
    /// The token server failed a moment ago; callers are not sent to it again until it cools down.
    #[error("bruin_token: no access token: {reason}")]
    TokenUnavailable { reason: String },
    #[error("{api}: unexpected answer: {reason}")]
    BadResponse { api: &'static str, reason: String },
    #[error("{api}: answer larger than the limit of {limit} bytes")]
    TooLarge { api: &'static str, limit: usize },
    #[error("cannot set up the HTTP client: {reason}")]
    Setup { reason: String },
}

impl ApiError {
    /// Worth trying again: timeouts, connection errors, 429 and 5xx. Everything else (other
    /// 4xx, refused credentials, malformed answers) would fail the same way again.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Timeout { .. } | ApiError::Connection { .. } => true,
            ApiError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// The `Retry-After` the server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Sends one request and reads its whole answer, at most `limit` bytes. Non-2xx answers
/// become errors (401 as [`ApiError::Unauthorized`]); their bodies are not read.
async fn send(
    api: &'static str,
    request: RequestBuilder,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let response = request.send().await.map_err(|e| transport_error(api, e))?;
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        return Err(ApiError::Unauthorized { api });
    }
    if !status.is_success() {
        return Err(ApiError::Status {
            api,
            status: status.as_u16(),
            retry_after: retry_after_seconds(&response),
        });
    }
    read_limited(api, response, limit).await
}

async fn read_limited(
    api: &'static str,
    mut response: Response,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(ApiError::TooLarge { api, limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(api, e))?
    {
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge { api, limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn retry_after_seconds(response: &Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    let seconds: u64 = value.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

/// Maps a reqwest failure without its URL; the cause chain says what went wrong.
fn transport_error(api: &'static str, error: reqwest::Error) -> ApiError {
    if error.is_timeout() {
        return ApiError::Timeout { api };
    }
    let error = error.without_url();
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    ApiError::Connection { api, reason }
}

/// `base` + `/path`, whether or not `base` ends with a slash (the base may carry a path).
fn endpoint_url(base: &reqwest::Url, path: &str) -> Result<reqwest::Url, ApiError> {
    let joined = format!("{}/{}", base.as_str().trim_end_matches('/'), path);
    reqwest::Url::parse(&joined).map_err(|e| ApiError::Setup {
        reason: format!("cannot build the URL of {path}: {e}"),
    })
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!(
            "hawkeye-customer-cache/",
            env!("CARGO_PKG_VERSION")
        ))
        .connect_timeout(Duration::from_secs(10))
}

fn setup_error(error: reqwest::Error) -> ApiError {
    ApiError::Setup {
        reason: error.without_url().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_timeouts_connections_429_and_5xx() {
        let status = |status| ApiError::Status {
            api: api::HAWKEYE,
            status,
            retry_after: None,
        };
        assert!(ApiError::Timeout { api: api::HAWKEYE }.is_transient());
        assert!(status(429).is_transient());
        assert!(status(503).is_transient());
        assert!(!status(404).is_transient());
        assert!(!ApiError::Unauthorized { api: api::HAWKEYE }.is_transient());
        assert!(!ApiError::CredentialsRefused {
            api: api::BRUIN_TOKEN,
            status: 401
        }
        .is_transient());
    }

    #[test]
    fn endpoint_urls_keep_the_base_path() {
        let base = reqwest::Url::parse("https://ixia.example.com/ixia/api/").unwrap();
        assert_eq!(
            endpoint_url(&base, "probes").unwrap().as_str(),
            "https://ixia.example.com/ixia/api/probes"
        );
        let bare = reqwest::Url::parse("http://127.0.0.1:8700").unwrap();
        assert_eq!(
            endpoint_url(&bare, "api/Inventory").unwrap().as_str(),
            "http://127.0.0.1:8700/api/Inventory"
        );
    }
}
