//! The agent callback proxy: `/v1/*` on the provisioning network forwarded to the controller's
//! agent API, with a body limit and timeouts; tokens pass through and are never logged.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::error::BootError;

/// Largest request body forwarded (agent inventories are a few KiB).
pub const BODY_LIMIT: usize = 1024 * 1024;
/// Time allowed for the controller to answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed to connect to the controller.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers passed to the controller; everything else (hop-by-hop, cookies) stays here.
const FORWARDED: [header::HeaderName; 4] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::USER_AGENT,
];

/// Forwards agent API calls to one upstream.
#[derive(Debug, Clone)]
pub struct CallbackProxy {
    client: reqwest::Client,
    upstream: Arc<str>,
}

impl CallbackProxy {
    /// A proxy to `upstream` (`http://controller:6385`).
    pub fn new(upstream: &str) -> Result<Self, BootError> {
        let invalid = |reason| BootError::InvalidConfig {
            field: "--agent-api",
            value: upstream.to_owned(),
            reason,
        };
        let trimmed = upstream.trim_end_matches('/');
        if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) {
            return Err(invalid("expected an http:// or https:// URL"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|_| invalid("no TLS protocol version available"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(UPSTREAM_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|_| invalid("cannot build an HTTP client for it"))?;
        Ok(Self {
            client,
            upstream: Arc::from(trimmed),
        })
    }
}

fn problem(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response()
}

/// The axum handler for `/v1/{*path}`.
pub async fn forward(
    State(proxy): State<CallbackProxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("{}{path}", proxy.upstream);
    let Ok(method) = reqwest::Method::from_bytes(method.as_str().as_bytes()) else {
        return problem(StatusCode::METHOD_NOT_ALLOWED, "unsupported method");
    };
    let mut request = proxy.client.request(method.clone(), &url).body(body);
    for name in &FORWARDED {
        for value in headers.get_all(name) {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    let upstream = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            // The error may carry the URL, never headers; log only the path.
            let (status, msg) = if e.is_timeout() {
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    "the controller's agent API did not answer in time",
                )
            } else {
                (
                    StatusCode::BAD_GATEWAY,
                    "the controller's agent API is unreachable",
                )
            };
            tracing::warn!(%method, path = uri.path(), status = status.as_u16(), "callback proxy: {msg}");
            return problem(status, msg);
        }
    };
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = upstream
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match upstream.bytes().await {
        Ok(b) => b,
        Err(_) => {
            return problem(
                StatusCode::BAD_GATEWAY,
                "the controller's answer was cut short",
            );
        }
    };
    tracing::debug!(%method, path = uri.path(), status = status.as_u16(), "callback proxy");
    let mut response = (status, body).into_response();
    if let Some(ct) = content_type.and_then(|ct| ct.parse().ok()) {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    response
}
