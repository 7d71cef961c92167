//! `/health` (the process is alive), `/ready` (Kafka, Redis and Cassandra all answer) and
//! `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use futures::future::{join_all, BoxFuture};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Metrics;

/// One dependency that `/ready` checks. Errors are short texts without secrets.
pub trait ReadinessCheck: Send + Sync {
    fn name(&self) -> &'static str;
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// Each check gets this long before the dependency counts as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    checks: Arc<Vec<Box<dyn ReadinessCheck>>>,
}

/// Binds `addr` (a start-up error when it cannot) and returns the bound address (useful with
/// port 0) and the server, to run until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    checks: Vec<Box<dyn ReadinessCheck>>,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, BoxFuture<'static, ()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on HTTP_ADDR {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let state = AppState {
        metrics,
        checks: Arc::new(checks),
    };
    let app = Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    let server = Box::pin(async move {
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    tracing::info!(%bound, "serving /health, /ready and /metrics");
    Ok((bound, server))
}

async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let results = join_all(state.checks.iter().map(|check| async move {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check.check()).await {
            Ok(Ok(())) => "ok".to_string(),
            Ok(Err(reason)) => reason,
            Err(_) => format!("no answer within {}s", CHECK_TIMEOUT.as_secs()),
        };
        (check.name(), outcome)
    }))
    .await;
    let all_ok = results.iter().all(|(_, outcome)| outcome == "ok");
    let body: serde_json::Map<String, Value> = results
        .into_iter()
        .map(|(name, outcome)| (name.to_string(), Value::String(outcome)))
        .collect();
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": all_ok, "checks": body})))
}

async fn metrics_text(
    State(state): State<AppState>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
