//! The HTTP endpoints: `/metrics` (Prometheus text), `/health`, `/v1/status` (JSON).
//!
//! **Architecture Invariant:** only this module of the node knows HTTP.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::report::{health as health_of, metrics_text, status};
use crate::shared::Shared;

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/v1/status", get(v1_status))
        .route("/v1/verify", get(v1_verify))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %crate::words::chain(&e), "HTTP server stopped");
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics_text(&shared).await,
    )
}

/// 200 and `{"status": "ok", "missing": []}` while every configured peer has a
/// session up and capture works; 503 with the missing peers, or with the reason capture
/// is failing, otherwise (see [`health_of`] for what missing means for a peer that dials
/// in and one this node dials).
async fn health(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let health = health_of(&shared);
    let code = if health.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(health))
}

async fn v1_status(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(status(&shared).await)
}

/// What `/v1/verify` takes: `?peer=NAME`, and `&tables=T1,T2` (default: every tracked
/// table).
#[derive(serde::Deserialize)]
struct VerifyQuery {
    peer: String,
    #[serde(default)]
    tables: Option<String>,
}

/// Compares tables with a peer by values over its live session (range reconciliation)
/// and lists every key held differently: 200 with a [`crate::VerifyReport`], or an error
/// status with `{"error": ...}` saying why it could not run.
async fn v1_verify(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(query): axum::extract::Query<VerifyQuery>,
) -> axum::response::Response {
    let tables = query
        .tables
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    match crate::reconcile::verify(&shared, &query.peer, tables).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => {
            let code = match e {
                crate::VerifyError::UnknownPeer(_) | crate::VerifyError::UnknownTable(_) => {
                    StatusCode::NOT_FOUND
                }
                crate::VerifyError::NotConnected(_) | crate::VerifyError::Unsupported(_) => {
                    StatusCode::CONFLICT
                }
                crate::VerifyError::Session { .. } => StatusCode::BAD_GATEWAY,
            };
            (code, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
        }
    }
}
