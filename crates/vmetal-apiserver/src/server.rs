//! The HTTP front of the API server: routes discovery, OpenAPI and health, and answers anything
//! it does not serve with a Kubernetes `Status` so clients get errors they understand.
//!
//! Handlers are thin: each one reads the registry and returns a document built elsewhere.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::registry::Registry;
use crate::{discovery, openapi};

/// Shared state of a running server.
#[derive(Clone)]
pub struct AppState {
    registry: Arc<RwLock<Registry>>,
    address: String,
}

impl AppState {
    fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// A Kubernetes `Status` failure response.
pub fn status_error(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

/// The router over `registry`; `address` is what `/api` advertises (`host:port`).
pub fn router(registry: Arc<RwLock<Registry>>, address: String) -> Router {
    let state = AppState { registry, address };
    Router::new()
        .route("/version", get(|| async { Json(discovery::version_info()) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/api", get(api_versions))
        .route("/api/{version}", get(core_resources))
        .route("/apis", get(api_groups))
        .route("/apis/{group}", get(api_group))
        .route("/apis/{group}/{version}", get(group_resources))
        .route("/openapi/v3", get(openapi_index))
        .route("/openapi/v3/api/{version}", get(openapi_core))
        .route("/openapi/v3/apis/{group}/{version}", get(openapi_group))
        .fallback(not_found)
        .with_state(state)
}

async fn api_versions(State(s): State<AppState>) -> Json<Value> {
    Json(discovery::api_versions(&s.address))
}

async fn api_groups(State(s): State<AppState>) -> Json<Value> {
    Json(discovery::api_group_list(&s.registry()))
}

async fn api_group(State(s): State<AppState>, Path(group): Path<String>) -> Response {
    match discovery::api_group(&s.registry(), &group) {
        Some(doc) => Json(doc).into_response(),
        None => status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource (API group {group})"),
        ),
    }
}

async fn core_resources(State(s): State<AppState>, Path(version): Path<String>) -> Response {
    resources(&s, "", &version)
}

async fn group_resources(
    State(s): State<AppState>,
    Path((group, version)): Path<(String, String)>,
) -> Response {
    resources(&s, &group, &version)
}

fn resources(s: &AppState, group: &str, version: &str) -> Response {
    match discovery::api_resource_list(&s.registry(), group, version) {
        Some(doc) => Json(doc).into_response(),
        None => status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "the server could not find the requested resource ({})",
                openapi::gv_key(group, version)
            ),
        ),
    }
}

async fn openapi_index(State(s): State<AppState>) -> Json<Value> {
    Json(openapi::index(&s.registry()))
}

async fn openapi_core(
    State(s): State<AppState>,
    Path(version): Path<String>,
    Query(_q): Query<Vec<(String, String)>>,
) -> Response {
    openapi_doc(&s, "", &version)
}

async fn openapi_group(
    State(s): State<AppState>,
    Path((group, version)): Path<(String, String)>,
) -> Response {
    openapi_doc(&s, &group, &version)
}

fn openapi_doc(s: &AppState, group: &str, version: &str) -> Response {
    match openapi::group_version_document(&s.registry(), group, version) {
        Some(doc) => Json(doc).into_response(),
        None => status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no OpenAPI document for {}", openapi::gv_key(group, version)),
        ),
    }
}

async fn not_found(uri: Uri) -> Response {
    status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("the server could not find the requested resource ({})", uri.path()),
    )
}

/// A server running on a background task; stops when dropped.
pub struct RunningApiServer {
    addr: SocketAddr,
    registry: Arc<RwLock<Registry>>,
    task: JoinHandle<()>,
}

impl RunningApiServer {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port`, for kubeconfigs and `kubectl -s`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The registry it serves (add CRDs here).
    pub fn registry(&self) -> Arc<RwLock<Registry>> {
        self.registry.clone()
    }
}

impl Drop for RunningApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bind `bind` (port 0 for a random port) and serve `registry` until dropped.
pub async fn start(bind: SocketAddr, registry: Registry) -> std::io::Result<RunningApiServer> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let registry = Arc::new(RwLock::new(registry));
    let app = router(registry.clone(), addr.to_string());
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "API server stopped");
        }
    });
    Ok(RunningApiServer {
        addr,
        registry,
        task,
    })
}
