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

use crate::node::{Shared, health as health_of, metrics_text, status};

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/v1/status", get(v1_status))
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
