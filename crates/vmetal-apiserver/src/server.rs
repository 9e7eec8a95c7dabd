//! The HTTP front of the API server: routes discovery, OpenAPI and health, and answers anything
//! it does not serve with a Kubernetes `Status` so clients get errors they understand.
//!
//! Handlers are thin: each one reads the registry and returns a document built elsewhere.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::access::{self, Access};
use crate::error::ApiError;
use crate::objects::Objects;
use crate::registry::Registry;
use crate::store::Store;
use crate::{discovery, http, openapi};

/// Shared state of a running server.
#[derive(Clone)]
pub struct AppState {
    objects: Objects,
    address: String,
    access: Option<Arc<Access>>,
}

impl AppState {
    fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.objects
            .registry()
            .read()
            .unwrap_or_else(|p| p.into_inner())
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

/// The router over `objects`; `address` is what `/api` advertises (`host:port`). With
/// `access`, every request but the health probes needs its bearer token.
pub fn router(objects: Objects, address: String, access: Option<Arc<Access>>) -> Router {
    let state = AppState {
        objects,
        address,
        access,
    };
    Router::new()
        .route(
            "/version",
            get(|| async { Json(discovery::version_info()) }),
        )
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
        .fallback(objects_or_not_found)
        .layer(DefaultBodyLimit::max(http::MAX_BODY_BYTES + 1))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

async fn authenticate(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let open = matches!(path, "/healthz" | "/livez" | "/readyz");
    if let Some(access) = &s.access
        && !open
    {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !access.authorizes(header) {
            let presented = header
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(str::trim);
            match presented.and_then(access::bootstrap::parse) {
                Some((id, secret)) if bootstrap_token_valid(&s, id, secret) => {
                    if !access::bootstrap::permits(req.method().as_str(), path) {
                        return status_error(
                            StatusCode::FORBIDDEN,
                            "Forbidden",
                            format!(
                                "bootstrap token {id} may only register nodes and renew their \
                                 leases, not {} {path}",
                                req.method()
                            ),
                        );
                    }
                }
                _ => return ApiError::Unauthorized.into_response(),
            }
        }
    }
    next.run(req).await
}

/// Whether bootstrap token `id` exists in `kube-system` and accepts `secret`.
fn bootstrap_token_valid(s: &AppState, id: &str, secret: &str) -> bool {
    let Some(info) = s.objects.find("", "v1", "secrets") else {
        return false;
    };
    let target = crate::objects::Target {
        info,
        namespace: Some(access::bootstrap::NAMESPACE.into()),
        name: Some(access::bootstrap::secret_name(id)),
        subresource: None,
    };
    s.objects
        .get(&target)
        .is_ok_and(|obj| access::bootstrap::accepts(&obj, id, secret, jiff::Timestamp::now()))
}

async fn objects_or_not_found(
    State(s): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    if path.starts_with("/api/") || path.starts_with("/apis/") {
        return http::handle(s.objects.clone(), method, uri, headers, body).await;
    }
    not_found(uri).await
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
            format!(
                "no OpenAPI document for {}",
                openapi::gv_key(group, version)
            ),
        ),
    }
}

async fn not_found(uri: Uri) -> Response {
    status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "the server could not find the requested resource ({})",
            uri.path()
        ),
    )
}

/// How to run an API server.
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    /// Address to listen on (port 0 picks a free port).
    pub bind: SocketAddr,
    /// Where objects, certificates, the token and the kubeconfig live; `None` keeps objects in
    /// memory and serves plain HTTP without authentication (tests only).
    pub data_dir: Option<PathBuf>,
}

/// Failures starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Listening failed.
    #[error("cannot listen on {bind}: {reason}")]
    Bind {
        /// Address.
        bind: SocketAddr,
        /// OS error.
        reason: String,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Certificates, token or kubeconfig could not be set up.
    #[error(transparent)]
    Access(#[from] access::AccessError),
    /// Creating the standard namespaces failed.
    #[error("cannot create standard namespaces: {0}")]
    Namespaces(ApiError),
}

/// A server running on a background task; stops when dropped.
pub struct RunningApiServer {
    addr: SocketAddr,
    url: String,
    objects: Objects,
    access: Option<Arc<Access>>,
    kubeconfig: Option<PathBuf>,
    task: JoinHandle<()>,
}

impl RunningApiServer {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://host:port` (or `http://` without a data dir), for kubeconfigs and `kubectl -s`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The object API it serves.
    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// The registry it serves (add CRDs here).
    pub fn registry(&self) -> Arc<RwLock<Registry>> {
        self.objects.registry().clone()
    }

    /// The kubeconfig written for this server, when it has a data dir.
    pub fn kubeconfig_path(&self) -> Option<&std::path::Path> {
        self.kubeconfig.as_deref()
    }

    /// Certificates and token, when it has a data dir.
    pub fn access(&self) -> Option<&Access> {
        self.access.as_deref()
    }

    /// Stop serving.
    pub fn shutdown(self) {}
}

impl Drop for RunningApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start with `registry` as the built-in resources.
pub async fn start_with(
    config: ApiServerConfig,
    registry: Registry,
) -> Result<RunningApiServer, ServerError> {
    let store = match &config.data_dir {
        Some(dir) => Store::open(dir)?,
        None => Store::in_memory(),
    };
    let objects = Objects::new(Arc::new(store), Arc::new(RwLock::new(registry)));
    objects
        .ensure_namespaces(&["default", "kube-system", "kube-public", "kube-node-lease"])
        .map_err(ServerError::Namespaces)?;
    let bind_err = |e: std::io::Error| ServerError::Bind {
        bind: config.bind,
        reason: e.to_string(),
    };
    let listener = std::net::TcpListener::bind(config.bind).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    let Some(dir) = config.data_dir.clone() else {
        let app = router(objects.clone(), addr.to_string(), None);
        let listener = tokio::net::TcpListener::from_std(listener).map_err(bind_err)?;
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(%err, "API server stopped");
            }
        });
        return Ok(RunningApiServer {
            addr,
            url: format!("http://{addr}"),
            objects,
            access: None,
            kubeconfig: None,
            task,
        });
    };
    let mut hosts = vec![
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "localhost".to_string(),
    ];
    if !addr.ip().is_unspecified() && !hosts.contains(&addr.ip().to_string()) {
        hosts.push(addr.ip().to_string());
    }
    let access = Arc::new(access::load_or_create(&dir, &hosts)?);
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let url = format!("https://{host}:{}", addr.port());
    let kubeconfig = access.write_kubeconfig(&dir.join("kubeconfig"), &url)?;
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(access.server_config()?);
    let app = router(
        objects.clone(),
        format!("{host}:{}", addr.port()),
        Some(access.clone()),
    );
    let server = axum_server::from_tcp_rustls(listener, tls).map_err(bind_err)?;
    let task = tokio::spawn(async move {
        if let Err(err) = server.serve(app.into_make_service()).await {
            tracing::error!(%err, "API server stopped");
        }
    });
    Ok(RunningApiServer {
        addr,
        url,
        objects,
        access: Some(access),
        kubeconfig: Some(kubeconfig),
        task,
    })
}

/// Start with the standard built-in resources.
pub async fn start(config: ApiServerConfig) -> Result<RunningApiServer, ServerError> {
    start_with(config, Registry::with_builtins()).await
}

/// Create each CRD that does not exist yet (idempotent; used by `vmetal up` and tests).
pub fn install_crds(
    objects: &Objects,
    crds: &[k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition],
) -> Result<(), ApiError> {
    let Some(info) = objects.find("apiextensions.k8s.io", "v1", "customresourcedefinitions") else {
        return Err(ApiError::Internal(
            "CustomResourceDefinitions are not served".into(),
        ));
    };
    let target = crate::objects::Target {
        info,
        namespace: None,
        name: None,
        subresource: None,
    };
    for crd in crds {
        let value = serde_json::to_value(crd).map_err(|e| ApiError::Internal(e.to_string()))?;
        match objects.create(&target, value, false) {
            Ok(_) | Err(ApiError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
