//! Redfish over HTTP: authentication (sessions, falling back to basic auth), per-request
//! timeouts, bounded retries with backoff, and mapping of HTTP failures to [`BmcError`].

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, OnceCell};
use zeroize::Zeroizing;

use super::model::{ErrorResponse, ServiceRoot, SessionLogin};
use super::tls;
use crate::{BmcError, ConnectOptions, Credentials};

/// First retry delay; doubled per attempt up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between attempts, also the cap on a BMC's `Retry-After`.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The service root, which the standard lets anyone read.
pub(crate) const SERVICE_ROOT: &str = "/redfish/v1/";
/// Where sessions live when the service root does not say.
const DEFAULT_SESSIONS: &str = "/redfish/v1/SessionService/Sessions";

/// How requests are authenticated, decided at the first request.
enum Auth {
    /// Not decided yet (or the session was dropped).
    Unknown,
    /// The BMC has no usable SessionService: HTTP basic auth on every request.
    Basic,
    /// A session: its token and the URL that deletes it.
    Session {
        token: Zeroizing<String>,
        location: Option<String>,
    },
}

/// A response that arrived, any status. No `Debug`: the headers may hold a session token.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Reply {
    /// The `ETag` header, if any.
    pub fn etag(&self) -> Option<String> {
        header_str(&self.headers, "etag")
    }
}

/// An HTTP client for one BMC.
pub(crate) struct Client {
    http: reqwest::Client,
    base_url: String,
    address: String,
    credentials: Credentials,
    timeout: Duration,
    retries: u32,
    auth: Mutex<Auth>,
    root: OnceCell<ServiceRoot>,
}

impl Client {
    /// A client for `base_url` (`scheme://host:port`); `address` names the BMC in errors.
    pub fn new(
        base_url: String,
        address: String,
        credentials: Credentials,
        options: &ConnectOptions,
    ) -> Result<Self, BmcError> {
        let tls = tls::client_config(
            options.disable_certificate_verification,
            &options.ca_certificates_pem,
        )
        .map_err(|e| BmcError::Unreachable {
            address: address.clone(),
            reason: e.0,
        })?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(options.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| BmcError::Unreachable {
                address: address.clone(),
                reason: format!("cannot build the HTTP client: {}", chain(&e)),
            })?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            address,
            credentials,
            timeout: options.timeout,
            retries: options.retries,
            auth: Mutex::new(Auth::Unknown),
            root: OnceCell::new(),
        })
    }

    /// The BMC address, for errors.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The service root, read once.
    pub async fn service_root(&self) -> Result<&ServiceRoot, BmcError> {
        self.root
            .get_or_try_init(|| async {
                let reply = self
                    .send_with_retries(Method::GET, SERVICE_ROOT, None, None, None, "discovery")
                    .await?;
                let reply = self.check(reply, "discovery")?;
                self.parse(&reply, "discovery")
            })
            .await
    }

    /// GET a resource; also returns its ETag (header, else `@odata.etag` is up to the caller).
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        operation: &'static str,
    ) -> Result<(T, Option<String>), BmcError> {
        let reply = self
            .request(Method::GET, path, None, None, operation)
            .await?;
        let reply = self.check(reply, operation)?;
        Ok((self.parse(&reply, operation)?, reply.etag()))
    }

    /// POST a JSON body; success is any 2xx.
    pub async fn post<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        operation: &'static str,
    ) -> Result<Reply, BmcError> {
        let body = self.encode(body, operation)?;
        let reply = self
            .request(Method::POST, path, Some(body), None, operation)
            .await?;
        self.check(reply, operation)
    }

    /// PATCH a JSON body, with `If-Match` when an ETag is known. Returns the reply whatever the
    /// status so the caller can react to 412 Precondition Failed.
    pub async fn patch<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        etag: Option<&str>,
        operation: &'static str,
    ) -> Result<Reply, BmcError> {
        let body = self.encode(body, operation)?;
        self.request(Method::PATCH, path, Some(body), etag, operation)
            .await
    }

    /// Map a non-2xx reply to the error it means.
    pub fn check(&self, reply: Reply, operation: &'static str) -> Result<Reply, BmcError> {
        if reply.status.is_success() {
            return Ok(reply);
        }
        let address = self.address.clone();
        let status = reply.status;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(BmcError::AuthenticationFailed { address });
        }
        let text = error_text(&reply.body);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return Err(BmcError::Busy {
                address,
                message: text.unwrap_or_else(|| "HTTP 503 Service Unavailable".into()),
            });
        }
        let message = match text {
            Some(text) => format!("HTTP {}: {text}", status.as_u16()),
            None => format!("HTTP {status}"),
        };
        Err(BmcError::Rejected {
            address,
            operation,
            message,
        })
    }

    /// Parse a reply body as JSON.
    pub fn parse<T: DeserializeOwned>(
        &self,
        reply: &Reply,
        operation: &'static str,
    ) -> Result<T, BmcError> {
        serde_json::from_slice(&reply.body).map_err(|e| BmcError::MalformedResponse {
            address: self.address.clone(),
            operation,
            detail: format!("invalid JSON: {e}"),
        })
    }

    /// Log out: delete the session, if there is one. Later requests log in again.
    pub async fn logout(&self) -> Result<(), BmcError> {
        let mut auth = self.auth.lock().await;
        let Auth::Session { token, location } = std::mem::replace(&mut *auth, Auth::Unknown) else {
            return Ok(());
        };
        drop(auth);
        let Some(location) = location else {
            return Ok(());
        };
        let reply = self
            .send_with_retries(
                Method::DELETE,
                &location,
                None,
                None,
                Some(Credential::Token(&token)),
                "logout",
            )
            .await?;
        // An expired session is as good as a deleted one.
        if reply.status == StatusCode::UNAUTHORIZED || reply.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        self.check(reply, "logout").map(|_| ())
    }

    /// The session to delete when the driver is dropped without `close()`: its location and
    /// token, taken out of the client. `None` when there is no session or it is in use.
    pub fn take_session(&self) -> Option<(String, Zeroizing<String>)> {
        let mut auth = self.auth.try_lock().ok()?;
        match std::mem::replace(&mut *auth, Auth::Unknown) {
            Auth::Session {
                token,
                location: Some(location),
            } => Some((self.url(&location), token)),
            _ => None,
        }
    }

    /// A detached DELETE of a session, for use from `Drop`.
    pub fn delete_session_detached(&self, url: String, token: Zeroizing<String>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let request = self
            .http
            .delete(url)
            .header("X-Auth-Token", token.as_str())
            .timeout(self.timeout);
        runtime.spawn(async move {
            let _ = request.send().await;
        });
    }

    /// Send one authenticated request (with retries), logging in again once if the session
    /// was rejected.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        if_match: Option<&str>,
        operation: &'static str,
    ) -> Result<Reply, BmcError> {
        let mut relogged = false;
        loop {
            let token = self.ensure_auth().await?;
            let credential = match &token {
                Some(t) => Credential::Token(t),
                None => Credential::Basic,
            };
            let reply = self
                .send_with_retries(
                    method.clone(),
                    path,
                    body.clone(),
                    if_match,
                    Some(credential),
                    operation,
                )
                .await?;
            if reply.status == StatusCode::UNAUTHORIZED && token.is_some() && !relogged {
                // The session expired or the BMC restarted: log in once more.
                relogged = true;
                self.forget_session(token.as_deref().map(|t| t.as_str()))
                    .await;
                continue;
            }
            return Ok(reply);
        }
    }

    /// Make sure authentication is decided; returns the session token when sessions are used.
    async fn ensure_auth(&self) -> Result<Option<Zeroizing<String>>, BmcError> {
        let mut auth = self.auth.lock().await;
        match &*auth {
            Auth::Basic => return Ok(None),
            Auth::Session { token, .. } => return Ok(Some(token.clone())),
            Auth::Unknown => {}
        }
        let root = self.service_root().await?;
        let sessions = root
            .links
            .sessions
            .as_ref()
            .map_or(DEFAULT_SESSIONS, |l| l.odata_id.as_str())
            .to_string();
        let login = SessionLogin {
            user_name: self.credentials.username(),
            password: self.credentials.password(),
        };
        let body = self.encode(&login, "login")?;
        let reply = self
            .send_with_retries(Method::POST, &sessions, Some(body), None, None, "login")
            .await?;
        let token = header_str(&reply.headers, "x-auth-token");
        match (reply.status, token) {
            (status, Some(token)) if status.is_success() => {
                let location = header_str(&reply.headers, "location").or_else(|| {
                    serde_json::from_slice::<super::model::Link>(&reply.body)
                        .ok()
                        .map(|l| l.odata_id)
                        .filter(|id| !id.is_empty())
                });
                let token = Zeroizing::new(token);
                *auth = Auth::Session {
                    token: token.clone(),
                    location,
                };
                Ok(Some(token))
            }
            (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _) => {
                Err(BmcError::AuthenticationFailed {
                    address: self.address.clone(),
                })
            }
            (status, _) if status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED => {
                self.check(reply, "login").map(|_| None)
            }
            // No SessionService, or one that hands out no token: basic auth it is.
            _ => {
                tracing::debug!(address = %self.address, "Redfish sessions unavailable, using basic auth");
                *auth = Auth::Basic;
                Ok(None)
            }
        }
    }

    /// Drop the session whose token was rejected (unless another request already replaced it).
    async fn forget_session(&self, rejected: Option<&str>) {
        let mut auth = self.auth.lock().await;
        if let Auth::Session { token, .. } = &*auth
            && Some(token.as_str()) == rejected
        {
            *auth = Auth::Unknown;
        }
    }

    /// One request with bounded retries on connection errors and 5xx (never on 4xx). Timeouts
    /// are retried only for idempotent methods, as a POST may have taken effect.
    async fn send_with_retries(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        if_match: Option<&str>,
        credential: Option<Credential<'_>>,
        operation: &'static str,
    ) -> Result<Reply, BmcError> {
        let url = self.url(path);
        let idempotent = method != Method::POST;
        let mut attempt = 0;
        loop {
            let outcome = self
                .send_once(method.clone(), &url, body.clone(), if_match, credential)
                .await;
            let retry_after = match &outcome {
                Ok(reply) if retryable_status(reply.status) => {
                    Some(retry_after(&reply.headers).unwrap_or_default())
                }
                Ok(_) => None,
                Err(SendError::Connect(_)) => Some(Duration::ZERO),
                Err(SendError::Timeout) if idempotent => Some(Duration::ZERO),
                Err(_) => None,
            };
            match retry_after {
                Some(hint) if attempt < self.retries => {
                    let wait = backoff(attempt).max(hint.min(MAX_BACKOFF));
                    tracing::debug!(
                        address = %self.address, operation, attempt, ?wait,
                        "Redfish request failed transiently, retrying"
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => return outcome.map_err(|e| self.transport_error(e)),
            }
        }
    }

    async fn send_once(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        if_match: Option<&str>,
        credential: Option<Credential<'_>>,
    ) -> Result<Reply, SendError> {
        let mut request = self
            .http
            .request(method, url)
            .timeout(self.timeout)
            .header("Accept", "application/json")
            .header("OData-Version", "4.0");
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body);
        }
        if let Some(etag) = if_match {
            request = request.header("If-Match", etag);
        }
        request = match credential {
            Some(Credential::Token(token)) => {
                let mut value = HeaderValue::from_str(token)
                    .map_err(|_| SendError::Other("bad token".into()))?;
                value.set_sensitive(true);
                request.header("X-Auth-Token", value)
            }
            Some(Credential::Basic) => request.basic_auth(
                self.credentials.username(),
                Some(self.credentials.password()),
            ),
            None => request,
        };
        let response = request.send().await.map_err(SendError::from_reqwest)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(SendError::from_reqwest)?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    fn transport_error(&self, error: SendError) -> BmcError {
        let address = self.address.clone();
        match error {
            SendError::Timeout => BmcError::Timeout {
                address,
                after: self.timeout,
            },
            SendError::Connect(reason) | SendError::Other(reason) => {
                BmcError::Unreachable { address, reason }
            }
        }
    }

    fn encode<B: Serialize>(&self, body: &B, operation: &'static str) -> Result<Vec<u8>, BmcError> {
        serde_json::to_vec(body).map_err(|e| BmcError::Rejected {
            address: self.address.clone(),
            operation,
            message: format!("cannot encode the request: {e}"),
        })
    }

    /// The URL of `path` on this BMC. Absolute URLs a BMC hands back are reduced to their path,
    /// so credentials are only ever sent to the configured host.
    fn url(&self, path: &str) -> String {
        let path = strip_origin(path);
        if path.starts_with('/') {
            format!("{}{path}", self.base_url)
        } else {
            format!("{}/{path}", self.base_url)
        }
    }
}

/// How one request proves who we are.
#[derive(Clone, Copy)]
enum Credential<'a> {
    Token(&'a str),
    Basic,
}

/// A transport failure of one attempt.
#[derive(Debug)]
enum SendError {
    Timeout,
    Connect(String),
    Other(String),
}

impl SendError {
    fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            Self::Timeout
        } else if is_tls_failure(&e) {
            // A certificate will not become trusted by asking again.
            Self::Other(chain(&e))
        } else if e.is_connect() {
            Self::Connect(chain(&e))
        } else {
            Self::Other(chain(&e))
        }
    }
}

/// Whether a rustls error (bad certificate, handshake failure) is behind `e`.
fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(error) = current {
        if error.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        // io::Error::source skips the error it wraps (often another io::Error), so unwrap
        // io errors by hand.
        current = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    false
}

/// Whether a status is worth retrying: server errors except "not implemented".
fn retryable_status(status: StatusCode) -> bool {
    status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED
}

/// Exponential backoff for retry number `attempt` (0-based).
fn backoff(attempt: u32) -> Duration {
    BASE_BACKOFF
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(MAX_BACKOFF)
}

/// `Retry-After` in seconds (the HTTP-date form is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    header_str(headers, "retry-after")?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The Redfish error message of a body, if it is a Redfish error.
fn error_text(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorResponse>(body)
        .ok()
        .and_then(|e| e.text())
}

/// `https://host:port/x/y` → `/x/y`; paths are returned unchanged.
fn strip_origin(path: &str) -> &str {
    for scheme in ["https://", "http://"] {
        if let Some(rest) = path.strip_prefix(scheme) {
            return rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    path
}

/// An error and its sources, for messages ("error sending request: invalid peer certificate").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn absolute_urls_from_the_bmc_keep_only_their_path() {
        assert_eq!(
            strip_origin("https://10.0.0.5/redfish/v1/SessionService/Sessions/7"),
            "/redfish/v1/SessionService/Sessions/7"
        );
        assert_eq!(strip_origin("https://evil.example"), "/");
        assert_eq!(strip_origin("/redfish/v1/"), "/redfish/v1/");
    }

    #[test]
    fn only_server_errors_are_retried() {
        assert!(retryable_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(retryable_status(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!retryable_status(StatusCode::NOT_IMPLEMENTED));
        assert!(!retryable_status(StatusCode::BAD_REQUEST));
        assert!(!retryable_status(StatusCode::UNAUTHORIZED));
    }
}
