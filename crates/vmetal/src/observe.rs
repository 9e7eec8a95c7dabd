//! What every vmetal server process exposes for operators: `/metrics`, `/healthz`, `/readyz`,
//! and a layer that counts agent API requests by route and status.

use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use vmetal_controller::metrics::Metrics;

/// Answers `/readyz`: `Ok` when ready, otherwise what is missing.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
struct ObserveState {
    metrics: Metrics,
    ready: Readiness,
}

/// `/metrics` (Prometheus text), `/healthz` (the process serves) and `/readyz` (`ready` says).
pub fn routes(metrics: Metrics, ready: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ObserveState { metrics, ready })
}

/// Readiness that is always ready (a process with nothing to wait for).
pub fn always_ready() -> Readiness {
    Arc::new(|| Ok(()))
}

async fn metrics_text(State(state): State<ObserveState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(state): State<ObserveState>) -> Response {
    match (state.ready)() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// Count every request of `router` in `metrics.agent_requests` by route template (not the
/// raw path, so label values stay few), method and status.
pub fn count_agent_requests(router: Router, metrics: Metrics) -> Router {
    router.layer(axum::middleware::from_fn_with_state(metrics, count))
}

async fn count(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let response = next.run(request).await;
    metrics.agent_request(&path, &method, response.status().as_u16());
    response
}
