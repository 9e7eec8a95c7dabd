//! The HTTP side of the agent: the rustls/ring reqwest client, and the agent API calls
//! (lookup, heartbeat) with their status codes mapped to [`AgentError`]s.

use std::sync::Arc;
use std::time::Duration;

use vmetal_api::agent::{Heartbeat, HeartbeatResponse, LookupRequest, LookupResponse};

use crate::error::{AgentError, redact_url};

/// How long to wait for a TCP/TLS connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an agent API call may take.
const API_TIMEOUT: Duration = Duration::from_secs(30);

/// A reqwest client on rustls with the ring provider and Mozilla's roots.
pub fn http_client() -> Result<reqwest::Client, AgentError> {
    let fail = |reason: String| AgentError::Api {
        url: String::new(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(format!("TLS protocol versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| fail(format!("cannot build the HTTP client: {e}")))
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// This agent's host and token for the current cycle.
    Found(LookupResponse),
    /// 404 (no host, or nothing to do yet) or 403 (token of this cycle already issued):
    /// ask again later.
    NotYet {
        /// The HTTP status.
        status: u16,
    },
}

/// The agent API of one controller.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
}

impl ApiClient {
    /// A client for the agent API at `api_url` (`http://host:port`, with or without `/`).
    pub fn new(api_url: &str) -> Result<Self, AgentError> {
        Ok(Self {
            http: http_client()?,
            base: api_url.trim_end_matches('/').to_string(),
        })
    }

    /// `POST /v1/lookup` with this machine's MACs.
    pub async fn lookup(&self, mac_addresses: &[String]) -> Result<Lookup, AgentError> {
        let url = format!("{}/v1/lookup", self.base);
        let body = LookupRequest {
            mac_addresses: mac_addresses.to_vec(),
        };
        let resp = self
            .http
            .post(&url)
            .timeout(API_TIMEOUT)
            .json(&body)
            .send()
            .await
            .map_err(|e| api_error(&url, &e))?;
        match resp.status().as_u16() {
            200 => resp
                .json::<LookupResponse>()
                .await
                .map(Lookup::Found)
                .map_err(|e| api_error(&url, &e)),
            status @ (403 | 404) => Ok(Lookup::NotYet { status }),
            status => Err(AgentError::Api {
                url: redact_url(&url),
                reason: format!("HTTP {status}"),
            }),
        }
    }

    /// `POST /v1/heartbeat` with the cycle's bearer token.
    pub async fn heartbeat(
        &self,
        token: &str,
        hb: &Heartbeat,
    ) -> Result<HeartbeatResponse, AgentError> {
        let url = format!("{}/v1/heartbeat", self.base);
        let resp = self
            .http
            .post(&url)
            .timeout(API_TIMEOUT)
            .bearer_auth(token)
            .json(hb)
            .send()
            .await
            .map_err(|e| api_error(&url, &e))?;
        match resp.status().as_u16() {
            200 => resp
                .json::<HeartbeatResponse>()
                .await
                .map_err(|e| api_error(&url, &e)),
            status @ (401 | 403) => Err(AgentError::TokenRejected {
                url: redact_url(&url),
                status,
            }),
            status => Err(AgentError::Api {
                url: redact_url(&url),
                reason: format!("HTTP {status}"),
            }),
        }
    }
}

fn api_error(url: &str, e: &reqwest::Error) -> AgentError {
    let mut reason = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        src = cause.source();
    }
    AgentError::Api {
        url: redact_url(url),
        reason,
    }
}
