//! The simulated Hawkeye/Ixia API: `POST /login` and paginated `GET /probes`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::state::{error, Fault, Route, Shared};

const SESSION_COOKIE: &str = "hawkeye_session";

pub(super) async fn login(State(sim): State<Arc<Shared>>, body: Bytes) -> Response {
    if let Some(answer) = sim.gate(Route::Login).await {
        return answer;
    }
    let Ok(credentials) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be JSON {\"username\",\"password\"}",
        );
    };
    let matches = credentials["username"] == sim.config.username.as_str()
        && credentials["password"] == sim.config.password.as_str();
    if !matches {
        return error(StatusCode::UNAUTHORIZED, "invalid username or password");
    }
    let session = sim.open_session();
    let cookie = format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly");
    (
        [(header::SET_COOKIE, cookie)],
        Json(json!({"message": "Login successful"})),
    )
        .into_response()
}

pub(super) async fn probes(
    State(sim): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(answer) = sim.gate(Route::Probes).await {
        return answer;
    }
    if !sim.session_is_valid(session_cookie(&headers)) {
        return error(StatusCode::UNAUTHORIZED, "not logged in or session expired");
    }
    let (Some(limit), Some(offset)) = (number(&query, "limit"), number(&query, "offset")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "limit and offset must be whole numbers",
        );
    };
    let limit = limit
        .unwrap_or(sim.config.page_limit)
        .clamp(1, sim.config.page_limit);
    let offset = offset.unwrap_or(0);
    if sim.faults().failing_probe_page == Some(offset / limit) {
        return sim.answer_fault(Fault::ServerError).await;
    }
    Json(page(&sim, limit, offset)).into_response()
}

fn page(sim: &Shared, limit: usize, offset: usize) -> serde_json::Value {
    let devices = &sim.fleet.devices;
    let records: Vec<&serde_json::Value> = devices
        .iter()
        .skip(offset)
        .take(limit)
        .map(|device| &device.probe)
        .collect();
    json!({
        "total_count": devices.len().to_string(),
        "count": records.len(),
        "limit": limit,
        "offset": offset,
        "has_more": offset + records.len() < devices.len(),
        "records": records,
    })
}

/// `Some(None)` when absent, `None` when present but not a number.
fn number(query: &HashMap<String, String>, name: &str) -> Option<Option<usize>> {
    match query.get(name) {
        None => Some(None),
        Some(text) => text.parse().ok().map(Some),
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}
