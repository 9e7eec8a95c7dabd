//! The HTTP boot server: per-MAC iPXE scripts, the agent kernel and initramfs (with Range),
//! the iPXE binaries for UEFI HTTP boot, metrics, and the agent callback proxy under `/v1`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tower::ServiceExt;
use tower_http::services::ServeDir;
use vmetal_api::mac::MacAddress;
use vmetal_provisioner::ipxe::{BootConfig, render_exit_script, render_script};

use crate::callback::{self, BODY_LIMIT, CallbackProxy};
use crate::hosts::HostsHandle;
use crate::metrics::Metrics;

/// What the HTTP boot server serves.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Kernel, initramfs and agent API URLs put into the scripts.
    pub boot: BootConfig,
    /// Directory behind `/boot/<file>` (vmlinuz, initramfs, images), if any.
    pub artifacts_dir: Option<PathBuf>,
    /// Directory behind `/ipxe/<file>` (the TFTP root), if any.
    pub ipxe_dir: Option<PathBuf>,
    /// Whether MACs of no BareMetalHost get the agent script (discovery).
    pub allow_unknown: bool,
}

#[derive(Debug, Clone)]
struct AppState {
    config: Arc<HttpConfig>,
    hosts: HostsHandle,
    metrics: Metrics,
}

/// The router; `/v1/*` is forwarded when `proxy` is set.
pub fn router(
    config: HttpConfig,
    hosts: HostsHandle,
    metrics: Metrics,
    proxy: Option<CallbackProxy>,
) -> Router {
    let ipxe_dir = config.ipxe_dir.clone();
    let state = AppState {
        config: Arc::new(config),
        hosts,
        metrics,
    };
    let mut app = Router::new()
        .route("/boot/{file}", get(boot_file))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    if let Some(dir) = ipxe_dir {
        app = app.nest_service("/ipxe", ServeDir::new(dir));
    }
    if let Some(proxy) = proxy {
        app = app.merge(
            Router::new()
                .route("/v1/{*path}", any(callback::forward))
                .layer(DefaultBodyLimit::max(BODY_LIMIT))
                .with_state(proxy),
        );
    }
    app
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The script for a MAC: the agent for a known host that needs it, else boot from disk.
pub fn script_for(
    config: &HttpConfig,
    hosts: &crate::hosts::KnownHosts,
    mac: &MacAddress,
) -> (String, &'static str) {
    let runs_agent = match hosts.get(mac) {
        Some(host) => host.runs_agent(),
        None => config.allow_unknown,
    };
    if runs_agent {
        (render_script(&config.boot, &mac.to_string()), "agent")
    } else {
        (render_exit_script(), "exit")
    }
}

async fn boot_file(
    State(state): State<AppState>,
    Path(file): Path<String>,
    request: Request,
) -> Response {
    if let Some(mac) = file.strip_suffix(".ipxe") {
        let Ok(mac) = MacAddress::parse(mac) else {
            return (StatusCode::NOT_FOUND, "not a MAC address\n").into_response();
        };
        let hosts = state.hosts.snapshot();
        let (script, kind) = script_for(&state.config, &hosts, &mac);
        tracing::info!(%mac, script = kind, "HTTP: iPXE script");
        Metrics::inc(&state.metrics.http_scripts, "kind", kind);
        return (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            script,
        )
            .into_response();
    }
    let Some(dir) = state.config.artifacts_dir.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // ServeDir resolves the path safely (no `..`) and answers Range requests.
    let (mut parts, body) = request.into_parts();
    let Ok(uri) = format!("/{file}").parse() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    parts.uri = uri;
    match ServeDir::new(dir)
        .oneshot(Request::from_parts(parts, body))
        .await
    {
        Ok(response) => response.map(Body::new),
        Err(infallible) => match infallible {},
    }
}
