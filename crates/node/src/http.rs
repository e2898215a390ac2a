//! The HTTP endpoints: `/metrics` (Prometheus text), `/health`, `/v1/status` (JSON).
//!
//! **Architecture Invariant:** only this module of the node knows HTTP.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::node::{Shared, metrics_text, status};

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/v1/status", get(v1_status))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "HTTP server stopped");
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics_text(&shared).await,
    )
}

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn v1_status(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(status(&shared).await)
}
