//! The simulated Bruin API: OAuth client credentials, inventory and its attributes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::Engine;
use serde_json::json;

use super::state::{error, Fault, InFlight, Route, Shared};

pub(super) async fn token(
    State(sim): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(answer) = sim.gate(Route::Token).await {
        return answer;
    }
    let expected = (
        sim.config.client_id.as_str(),
        sim.config.client_secret.as_str(),
    );
    if basic_credentials(&headers)
        .as_ref()
        .map(|(id, secret)| (id.as_str(), secret.as_str()))
        != Some(expected)
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    if form.get("scope").map(String::as_str) != Some("public_api") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_scope"})),
        )
            .into_response();
    }
    Json(json!({
        "access_token": sim.issue_token(),
        "expires_in": sim.config.token_ttl_secs,
        "token_type": "Bearer",
        "scope": "public_api",
    }))
    .into_response()
}

pub(super) async fn inventory(
    State(sim): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let _in_flight = InFlight::enter(&sim.stats);
    if let Some(answer) = authorized(&sim, Route::Inventory, &headers).await {
        return answer;
    }
    let Some(serial) = query.get("ServiceNumber") else {
        return error(StatusCode::BAD_REQUEST, "ServiceNumber is required");
    };
    if sim.faults().failing_serials.contains(serial) {
        return sim.answer_fault(Fault::ServerError).await;
    }
    let documents = sim
        .fleet
        .device(serial)
        .map(|d| d.documents.clone())
        .unwrap_or_default();
    Json(json!({"documents": documents})).into_response()
}

pub(super) async fn attribute(
    State(sim): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let _in_flight = InFlight::enter(&sim.stats);
    if let Some(answer) = authorized(&sim, Route::Attribute, &headers).await {
        return answer;
    }
    let (Some(client_id), Some(serial)) = (query.get("ClientId"), query.get("ServiceNumber"))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "ClientId and ServiceNumber are required",
        );
    };
    let status = sim
        .fleet
        .device(serial)
        .and_then(|d| d.management_status(client_id));
    let mut attributes = vec![json!({"key": "Site Contact", "value": "NOC"})];
    if let Some(status) = status {
        attributes.push(json!({"key": "Management Status", "value": status}));
    }
    Json(json!({
        "inventoryId": format!("{}{}", client_id, serial.len()),
        "serviceNumber": serial,
        "attributes": attributes,
    }))
    .into_response()
}

/// The gate of every data call, then the bearer token check.
async fn authorized(sim: &Shared, route: Route, headers: &HeaderMap) -> Option<Response> {
    if let Some(answer) = sim.gate(route).await {
        return Some(answer);
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    (!sim.token_is_valid(token))
        .then(|| error(StatusCode::UNAUTHORIZED, "invalid or expired token"))
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let encoded = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}
