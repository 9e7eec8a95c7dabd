//! The agent API server: lookup by MAC hands out a per-cycle token, heartbeats store progress
//! and get the next command, derived from the host's current state and its cycle Secret.
//!
//! All state lives in Kubernetes: the token's hash and the last report sit in the cycle Secret
//! (see [`crate::cycle`]), so a restarted controller accepts running agents. Requests without
//! the right token get 401/403 and change nothing. Tokens never reach logs or error bodies.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use vmetal_api::agent::{
    AgentCommand, CommandResult, DeployCommand, Heartbeat, HeartbeatResponse, HostIdentity,
    LookupRequest, LookupResponse, WipeMode,
};
use vmetal_api::mac::normalize_mac;
use vmetal_api::states::ChecksumType;
use vmetal_api::{BareMetalHost, ProvisioningState};

use crate::configdrive::config_drive_for;
use crate::cycle::{CycleState, KEY_REPORT, KEY_TOKEN_SHA256, Operation, hex, secret_name};
use crate::error::ProvisionerError;

/// Path of the lookup call.
pub const LOOKUP_PATH: &str = "/v1/lookup";
/// Path of the heartbeat call.
pub const HEARTBEAT_PATH: &str = "/v1/heartbeat";
/// A report that only moved progress counters is stored at most this often.
pub const REPORT_WRITE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a lookup waits for the host cache to fill after start.
const CACHE_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at a resourceVersion-checked Secret write before giving up.
const WRITE_ATTEMPTS: usize = 5;

/// The agent API's shared state; cheap to clone.
#[derive(Clone)]
pub struct AgentApi {
    inner: Arc<Inner>,
}

/// (namespace, name) of a host.
type HostKey = (String, String);

struct Inner {
    client: Client,
    namespace: Option<String>,
    heartbeat_interval: Duration,
    /// BareMetalHosts by watch, filled on the first lookup.
    hosts: OnceCell<Store<BareMetalHost>>,
    reflector_task: Mutex<Option<JoinHandle<()>>>,
    /// When each host's report was last written, for throttling.
    report_writes: Mutex<HashMap<HostKey, Instant>>,
    /// Base64 config drive per host for its current deploy cycle.
    drives: Mutex<HashMap<HostKey, (String, Arc<str>)>>,
    /// How long agents wait for image data before giving up (`None`: the agent's default).
    download_stall_timeout: Option<Duration>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut task) = self.reflector_task.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }
}

impl std::fmt::Debug for AgentApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentApi")
            .field("namespace", &self.inner.namespace)
            .field("heartbeat_interval", &self.inner.heartbeat_interval)
            .finish_non_exhaustive()
    }
}

impl AgentApi {
    /// An agent API over the hosts in `namespace` (all namespaces when `None`), telling agents
    /// to heartbeat every `heartbeat_interval`. Nothing runs until the first request.
    pub fn new(client: Client, namespace: Option<String>, heartbeat_interval: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                namespace,
                heartbeat_interval,
                hosts: OnceCell::new(),
                reflector_task: Mutex::new(None),
                report_writes: Mutex::new(HashMap::new()),
                drives: Mutex::new(HashMap::new()),
                download_stall_timeout: None,
            }),
        }
    }

    /// Tell agents to give up on an image download that sends nothing for `timeout` (the
    /// agent's default is 120 s). Call before the API serves requests.
    pub fn with_download_stall_timeout(mut self, timeout: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.download_stall_timeout = Some(timeout);
        }
        self
    }

    fn hosts_api(&self) -> Api<BareMetalHost> {
        match &self.inner.namespace {
            Some(ns) => Api::namespaced(self.inner.client.clone(), ns),
            None => Api::all(self.inner.client.clone()),
        }
    }

    /// The host cache, started on first use and waited for until it has listed once.
    async fn host_cache(&self) -> Result<&Store<BareMetalHost>, ApiError> {
        let store = self
            .inner
            .hosts
            .get_or_init(|| async {
                let (reader, writer) = reflector::store();
                let stream = reflector::reflector(
                    writer,
                    watcher(self.hosts_api(), watcher::Config::default()).default_backoff(),
                )
                .applied_objects()
                .for_each(|event| async move {
                    if let Err(e) = event {
                        tracing::warn!(error = %e, "agent API: watching BareMetalHosts failed; retrying");
                    }
                });
                let task = tokio::spawn(stream);
                if let Ok(mut slot) = self.inner.reflector_task.lock() {
                    *slot = Some(task);
                }
                reader
            })
            .await;
        // Poll readiness instead of awaiting one long-lived waiter: a waiter registered while
        // the first list was in flight was seen to miss its wake-up under concurrent lookups.
        let deadline = tokio::time::Instant::now() + CACHE_READY_TIMEOUT;
        loop {
            match futures::FutureExt::now_or_never(store.wait_until_ready()) {
                Some(Ok(())) => return Ok(store),
                Some(Err(_)) => break,
                None if tokio::time::Instant::now() >= deadline => break,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        Err(ApiError::unavailable(
            "the BareMetalHost cache is not ready yet; retry",
        ))
    }

    fn in_scope(&self, namespace: &str) -> bool {
        self.inner
            .namespace
            .as_deref()
            .is_none_or(|ns| ns == namespace)
    }

    async fn lookup(&self, request: LookupRequest) -> Result<LookupResponse, ApiError> {
        let macs: BTreeSet<String> = request
            .mac_addresses
            .iter()
            .filter_map(|m| normalize_mac(m).ok())
            .collect();
        if macs.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "macAddresses holds no valid MAC address",
            ));
        }
        let cached = self.host_cache().await?.state();
        let candidates: Vec<(String, String)> = cached
            .iter()
            .filter(|h| host_has_mac(h, &macs))
            .filter_map(|h| Some((h.namespace()?, h.name_any())))
            .collect();
        if candidates.is_empty() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no BareMetalHost has any of these MAC addresses",
            ));
        }
        // The cache may lag a state change by a moment; the decision uses fresh objects.
        let mut busy = Vec::new();
        for (namespace, name) in &candidates {
            let hosts: Api<BareMetalHost> = Api::namespaced(self.inner.client.clone(), namespace);
            let host = hosts
                .get_opt(name)
                .await
                .map_err(|e| ApiError::kube("get", "BareMetalHost", namespace, name, e))?;
            if let Some(host) = host.filter(|h| runs_agent(h.provisioning_state())) {
                busy.push(host);
            }
        }
        let host = match busy.len() {
            0 => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "BareMetalHost {} has no provisioning cycle in progress",
                        names(&candidates)
                    ),
                ));
            }
            1 => busy.remove(0),
            _ => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "these MAC addresses belong to several busy hosts: {}",
                        names(&candidates)
                    ),
                ));
            }
        };
        self.issue_token(host).await
    }

    /// Stores a fresh token's hash in the host's cycle Secret, unless one was already issued.
    async fn issue_token(&self, host: BareMetalHost) -> Result<LookupResponse, ApiError> {
        let namespace = host.namespace().unwrap_or_default();
        let name = host.name_any();
        let secret_name = secret_name(&name);
        let secrets: Api<Secret> = Api::namespaced(self.inner.client.clone(), &namespace);
        let no_cycle = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("BareMetalHost {namespace}/{name} has no provisioning cycle in progress"),
            )
        };
        for _ in 0..WRITE_ATTEMPTS {
            let Some(mut secret) = secrets
                .get_opt(&secret_name)
                .await
                .map_err(|e| ApiError::kube("get", "Secret", &namespace, &secret_name, e))?
            else {
                return Err(no_cycle());
            };
            let cycle = CycleState::from_secret(&secret).map_err(ApiError::internal)?;
            if !owned_by(&secret, &host)
                || cycle.operation.host_state() != host.provisioning_state()
            {
                return Err(no_cycle());
            }
            if cycle.token_sha256.is_some() {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "token already issued for this cycle",
                ));
            }
            let token = new_token().map_err(ApiError::internal)?;
            secret.data.get_or_insert_default().insert(
                KEY_TOKEN_SHA256.to_owned(),
                ByteString(token_sha256(&token).into_bytes()),
            );
            // The Secret carries its resourceVersion: of two concurrent lookups one conflicts.
            match secrets
                .replace(&secret_name, &PostParams::default(), &secret)
                .await
            {
                Ok(_) => {
                    tracing::info!(host = %format!("{namespace}/{name}"), cycle = %cycle.cycle,
                        operation = %cycle.operation, "agent looked up; token issued");
                    return Ok(LookupResponse {
                        host: HostIdentity { namespace, name },
                        cycle: cycle.cycle,
                        token,
                        heartbeat_interval_ms: u64::try_from(
                            self.inner.heartbeat_interval.as_millis(),
                        )
                        .unwrap_or(u64::MAX),
                    });
                }
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(e) => {
                    return Err(ApiError::kube(
                        "replace",
                        "Secret",
                        &namespace,
                        &secret_name,
                        e,
                    ));
                }
            }
        }
        Err(ApiError::unavailable(
            "the cycle Secret kept changing; retry the lookup",
        ))
    }

    async fn heartbeat(
        &self,
        token: &str,
        heartbeat: Heartbeat,
    ) -> Result<HeartbeatResponse, ApiError> {
        let HostIdentity { namespace, name } = heartbeat.host.clone();
        if namespace.is_empty() || name.is_empty() || !self.in_scope(&namespace) {
            return Err(ApiError::forbidden());
        }
        let secret_name = secret_name(&name);
        let secrets: Api<Secret> = Api::namespaced(self.inner.client.clone(), &namespace);
        let hosts: Api<BareMetalHost> = Api::namespaced(self.inner.client.clone(), &namespace);
        let key = (namespace.clone(), name.clone());

        for _ in 0..WRITE_ATTEMPTS {
            let Some(mut secret) = secrets
                .get_opt(&secret_name)
                .await
                .map_err(|e| ApiError::kube("get", "Secret", &namespace, &secret_name, e))?
            else {
                return Err(ApiError::forbidden());
            };
            let mut cycle = CycleState::from_secret(&secret).map_err(ApiError::internal)?;
            let authorised = cycle.cycle == heartbeat.cycle
                && cycle
                    .token_sha256
                    .as_deref()
                    .is_some_and(|want| token_matches(token, want));
            if !authorised {
                return Err(ApiError::forbidden());
            }

            // From here on the agent is who it says it is.
            let host = hosts
                .get_opt(&name)
                .await
                .map_err(|e| ApiError::kube("get", "BareMetalHost", &namespace, &name, e))?;
            let Some(host) = host.filter(|h| owned_by(&secret, h)) else {
                self.forget(&key);
                return Ok(HeartbeatResponse {
                    command: AgentCommand::Finish,
                });
            };

            let report = merge_report(cycle.report.as_ref(), heartbeat.clone());
            let since_write = self
                .inner
                .report_writes
                .lock()
                .ok()
                .and_then(|w| w.get(&key).map(Instant::elapsed));
            if should_store(cycle.report.as_ref(), &report, since_write) {
                let json = serde_json::to_vec(&report).map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("encoding the report: {e}"),
                    )
                })?;
                secret
                    .data
                    .get_or_insert_default()
                    .insert(KEY_REPORT.to_owned(), ByteString(json));
                match secrets
                    .replace(&secret_name, &PostParams::default(), &secret)
                    .await
                {
                    Ok(_) => {
                        if let Ok(mut w) = self.inner.report_writes.lock() {
                            w.insert(key.clone(), Instant::now());
                        }
                    }
                    // The controller or a parallel heartbeat wrote first: verify again.
                    Err(kube::Error::Api(status)) if status.code == 409 => continue,
                    Err(e) => {
                        return Err(ApiError::kube(
                            "replace",
                            "Secret",
                            &namespace,
                            &secret_name,
                            e,
                        ));
                    }
                }
            }
            cycle.report = Some(report);

            let drive = if wants_config_drive(&host, &cycle) {
                Some(self.config_drive(&host, &cycle.cycle).await)
            } else {
                None
            };
            let mut command = next_command(&host, &cycle, || drive.unwrap_or(Ok(None)));
            if let AgentCommand::Deploy(deploy) = &mut command {
                deploy.download_stall_timeout_seconds = self
                    .inner
                    .download_stall_timeout
                    .map(|d| d.as_secs().max(1));
            }
            if command == AgentCommand::Finish {
                self.forget(&key);
            }
            return Ok(HeartbeatResponse { command });
        }
        Err(ApiError::unavailable(
            "the cycle Secret kept changing; retry the heartbeat",
        ))
    }

    /// The host's config drive for this cycle, built once per cycle.
    async fn config_drive(
        &self,
        host: &BareMetalHost,
        cycle: &str,
    ) -> Result<Option<String>, ProvisionerError> {
        let key = (host.namespace().unwrap_or_default(), host.name_any());
        let cached = self.inner.drives.lock().ok().and_then(|d| {
            d.get(&key)
                .filter(|(c, _)| c == cycle)
                .map(|(_, drive)| drive.clone())
        });
        if let Some(drive) = cached {
            return Ok(Some(drive.to_string()));
        }
        let drive = config_drive_for(&self.inner.client, host).await?;
        if let (Some(d), Ok(mut drives)) = (&drive, self.inner.drives.lock()) {
            drives.insert(key, (cycle.to_owned(), Arc::from(d.as_str())));
        }
        Ok(drive)
    }

    fn forget(&self, key: &HostKey) {
        if let Ok(mut d) = self.inner.drives.lock() {
            d.remove(key);
        }
        if let Ok(mut w) = self.inner.report_writes.lock() {
            w.remove(key);
        }
    }
}

/// The agent API routes: `POST /v1/lookup` and `POST /v1/heartbeat`.
pub fn router(state: AgentApi) -> Router {
    Router::new()
        .route(LOOKUP_PATH, post(lookup_handler))
        .route(HEARTBEAT_PATH, post(heartbeat_handler))
        .with_state(state)
}

async fn lookup_handler(State(api): State<AgentApi>, body: Bytes) -> Response {
    let result = match serde_json::from_slice::<LookupRequest>(&body) {
        Ok(request) => api.lookup(request).await,
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid lookup request: {e}"),
        )),
    };
    match result {
        Ok(response) => axum::Json(response).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn heartbeat_handler(
    State(api): State<AgentApi>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The token is checked before the body is even parsed.
    let Some(token) = bearer_token(&headers) else {
        return ApiError::unauthorized().into_response();
    };
    let result = match serde_json::from_slice::<Heartbeat>(&body) {
        Ok(heartbeat) => api.heartbeat(token, heartbeat).await,
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid heartbeat: {e}"),
        )),
    };
    match result {
        Ok(response) => axum::Json(response).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The next command for the agent of `cycle` on `host`, from the host's current state.
///
/// A host no longer in the operation's state (or with nothing left to do) gets `Finish`; an
/// operation gets its command until the agent reports a result for it. `config_drive` is
/// only called for a deploy; if it fails the agent is told to wait.
pub fn next_command(
    host: &BareMetalHost,
    cycle: &CycleState,
    config_drive: impl FnOnce() -> Result<Option<String>, ProvisionerError>,
) -> AgentCommand {
    let op = cycle.operation;
    if host.provisioning_state() != op.host_state() || cycle.result_of(op).is_some() {
        return AgentCommand::Finish;
    }
    let id = cycle.command_id();
    match op {
        Operation::Inspect => AgentCommand::Inspect { id },
        Operation::Wipe => AgentCommand::Wipe {
            id,
            mode: WipeMode::Metadata,
        },
        Operation::Deploy => {
            let Some(image) = host.spec.image.as_ref().filter(|i| !i.url.is_empty()) else {
                return AgentCommand::Finish;
            };
            let config_drive = match config_drive() {
                Ok(drive) => drive,
                Err(e) => {
                    tracing::warn!(host = %host_key(host), error = %e,
                        "cannot build the config drive; the agent waits");
                    return AgentCommand::Wait;
                }
            };
            AgentCommand::Deploy(Box::new(DeployCommand {
                id,
                image_url: image.url.clone(),
                checksum: image.checksum.clone(),
                checksum_type: image.checksum_type.filter(|t| *t != ChecksumType::Auto),
                format: image.format,
                root_device_hints: host.spec.root_device_hints.clone(),
                config_drive,
                download_stall_timeout_seconds: None,
            }))
        }
    }
}

/// Whether [`next_command`] would answer with a deploy, so the config drive is needed.
fn wants_config_drive(host: &BareMetalHost, cycle: &CycleState) -> bool {
    cycle.operation == Operation::Deploy
        && host.provisioning_state() == ProvisioningState::Provisioning
        && cycle.result_of(Operation::Deploy).is_none()
        && host.spec.image.as_ref().is_some_and(|i| !i.url.is_empty())
}

/// Whether a report is worth a Secret write: results or the running step changed, or
/// progress moved and the last write is [`REPORT_WRITE_INTERVAL`] old (or unknown).
pub fn should_store(
    previous: Option<&Heartbeat>,
    next: &Heartbeat,
    since_last_write: Option<Duration>,
) -> bool {
    let Some(previous) = previous else {
        return true;
    };
    if previous == next {
        return false;
    }
    let step = |h: &Heartbeat| h.running.as_ref().map(|r| (r.id.clone(), r.step.clone()));
    previous.results != next.results
        || previous.cycle != next.cycle
        || step(previous) != step(next)
        || since_last_write.is_none_or(|d| d >= REPORT_WRITE_INTERVAL)
}

/// The heartbeat to store: the new one, keeping results of this cycle the agent no longer
/// lists (so a result the controller has not read yet is never lost).
fn merge_report(previous: Option<&Heartbeat>, mut next: Heartbeat) -> Heartbeat {
    if let Some(previous) = previous.filter(|p| p.cycle == next.cycle) {
        let kept: Vec<CommandResult> = previous
            .results
            .iter()
            .filter(|old| next.results.iter().all(|r| r.id != old.id))
            .cloned()
            .collect();
        if !kept.is_empty() {
            next.results.splice(0..0, kept);
        }
    }
    next
}

fn runs_agent(state: ProvisioningState) -> bool {
    matches!(
        state,
        ProvisioningState::Inspecting
            | ProvisioningState::Provisioning
            | ProvisioningState::Deprovisioning
    )
}

fn host_has_mac(host: &BareMetalHost, macs: &BTreeSet<String>) -> bool {
    let matches = |m: &str| normalize_mac(m).is_ok_and(|m| macs.contains(&m));
    matches(&host.spec.boot_mac_address)
        || host
            .hardware()
            .is_some_and(|hw| hw.nics.iter().any(|n| matches(&n.mac)))
}

/// Whether the Secret belongs to this incarnation of the host (not to a deleted namesake).
fn owned_by(secret: &Secret, host: &BareMetalHost) -> bool {
    let controller = secret
        .owner_references()
        .iter()
        .find(|r| r.controller == Some(true));
    match (controller, host.uid()) {
        (Some(owner), Some(uid)) => owner.uid == uid,
        _ => true,
    }
}

fn names(hosts: &[(String, String)]) -> String {
    hosts
        .iter()
        .map(|(ns, n)| format!("{ns}/{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn host_key(host: &BareMetalHost) -> String {
    format!(
        "{}/{}",
        host.namespace().unwrap_or_default(),
        host.name_any()
    )
}

/// A new random token: 32 bytes, base64url without padding.
fn new_token() -> Result<String, ProvisionerError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ProvisionerError::Random(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Hex SHA-256 of a token, as stored in the cycle Secret.
pub fn token_sha256(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn token_matches(token: &str, want_sha256: &str) -> bool {
    token_sha256(token)
        .as_bytes()
        .ct_eq(want_sha256.as_bytes())
        .into()
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// An HTTP error answer with a JSON body `{"error": "..."}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token: send Authorization: Bearer <token from lookup>",
        )
    }

    fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "token is not valid for this host and cycle",
        )
    }

    fn unavailable(message: &str) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    fn internal(e: ProvisionerError) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }

    fn kube(
        action: &'static str,
        kind: &'static str,
        ns: &str,
        name: &str,
        e: kube::Error,
    ) -> Self {
        let e = ProvisionerError::kube(action, kind, ns, name, e);
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, error = %self.message, "agent API error");
        }
        let mut response = (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use vmetal_api::agent::CommandProgress;

    fn host(state: &str) -> BareMetalHost {
        serde_json::from_value(json!({
            "apiVersion": "metal3.io/v1alpha1",
            "kind": "BareMetalHost",
            "metadata": {"name": "h1", "namespace": "ns", "uid": "u1"},
            "spec": {
                "online": true,
                "bootMACAddress": "52:54:00:00:00:01",
                "image": {"url": "http://img/os.qcow2", "checksum": "abc", "checksumType": "auto",
                          "format": "qcow2"},
                "rootDeviceHints": {"deviceName": "/dev/vda"}
            },
            "status": {"provisioning": {"state": state, "ID": ""}, "errorMessage": "",
                       "poweredOn": true, "errorCount": 0, "operationalStatus": "OK"}
        }))
        .unwrap()
    }

    fn cycle(op: Operation, results: &[&str]) -> CycleState {
        CycleState {
            cycle: "c1".into(),
            operation: op,
            token_sha256: Some("x".into()),
            report: Some(beat(results, None)),
        }
    }

    fn beat(results: &[&str], running: Option<(&str, &str, u64)>) -> Heartbeat {
        Heartbeat {
            host: HostIdentity {
                namespace: "ns".into(),
                name: "h1".into(),
            },
            cycle: "c1".into(),
            running: running.map(|(id, step, done)| CommandProgress {
                id: id.into(),
                step: step.into(),
                done_bytes: done,
                total_bytes: None,
            }),
            results: results
                .iter()
                .map(|id| CommandResult {
                    id: (*id).into(),
                    error: None,
                    error_kind: None,
                    inventory: None,
                    root_device: None,
                    written_sha256: None,
                })
                .collect(),
        }
    }

    fn no_drive() -> Result<Option<String>, ProvisionerError> {
        panic!("config drive must not be built here")
    }

    #[test]
    fn inspect_until_a_result_then_finish() {
        let h = host("inspecting");
        assert_eq!(
            next_command(&h, &cycle(Operation::Inspect, &[]), no_drive),
            AgentCommand::Inspect {
                id: "c1/inspect".into()
            }
        );
        assert_eq!(
            next_command(&h, &cycle(Operation::Inspect, &["c0/inspect"]), no_drive),
            AgentCommand::Inspect {
                id: "c1/inspect".into()
            },
            "a result of another cycle does not count"
        );
        assert_eq!(
            next_command(&h, &cycle(Operation::Inspect, &["c1/inspect"]), no_drive),
            AgentCommand::Finish
        );
    }

    #[test]
    fn deploy_carries_image_hints_and_config_drive() {
        let h = host("provisioning");
        let cmd = next_command(&h, &cycle(Operation::Deploy, &[]), || {
            Ok(Some("Q0Q=".into()))
        });
        let AgentCommand::Deploy(d) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(d.id, "c1/deploy");
        assert_eq!(d.image_url, "http://img/os.qcow2");
        assert_eq!(d.checksum, "abc");
        assert_eq!(d.checksum_type, None, "auto is left to the agent");
        assert_eq!(d.format, Some(vmetal_api::states::ImageFormat::Qcow2));
        assert_eq!(d.root_device_hints.unwrap().device_name, "/dev/vda");
        assert_eq!(d.config_drive.as_deref(), Some("Q0Q="));

        let mut sha = host("provisioning");
        sha.spec.image.as_mut().unwrap().checksum_type = Some(ChecksumType::Sha512);
        let AgentCommand::Deploy(d) =
            next_command(&sha, &cycle(Operation::Deploy, &[]), || Ok(None))
        else {
            panic!()
        };
        assert_eq!(d.checksum_type, Some(ChecksumType::Sha512));
        assert_eq!(d.config_drive, None);

        assert_eq!(
            next_command(&h, &cycle(Operation::Deploy, &["c1/deploy"]), no_drive),
            AgentCommand::Finish
        );
    }

    #[test]
    fn deploy_waits_when_the_config_drive_cannot_be_built() {
        let cmd = next_command(
            &host("provisioning"),
            &cycle(Operation::Deploy, &[]),
            || {
                Err(ProvisionerError::SecretNotFound {
                    namespace: "ns".into(),
                    name: "user-data".into(),
                })
            },
        );
        assert_eq!(cmd, AgentCommand::Wait);
    }

    #[test]
    fn deploy_without_an_image_finishes() {
        let mut h = host("provisioning");
        h.spec.image = None;
        assert_eq!(
            next_command(&h, &cycle(Operation::Deploy, &[]), no_drive),
            AgentCommand::Finish
        );
    }

    #[test]
    fn wipe_is_a_metadata_wipe() {
        let h = host("deprovisioning");
        assert_eq!(
            next_command(&h, &cycle(Operation::Wipe, &[]), no_drive),
            AgentCommand::Wipe {
                id: "c1/wipe".into(),
                mode: WipeMode::Metadata
            }
        );
        assert_eq!(
            next_command(&h, &cycle(Operation::Wipe, &["c1/wipe"]), no_drive),
            AgentCommand::Finish
        );
    }

    #[test]
    fn a_host_in_another_state_finishes_the_agent() {
        for (state, op) in [
            ("available", Operation::Inspect),
            ("provisioned", Operation::Deploy),
            ("deprovisioning", Operation::Deploy),
            ("available", Operation::Wipe),
            ("inspecting", Operation::Wipe),
            ("", Operation::Inspect),
        ] {
            assert_eq!(
                next_command(&host(state), &cycle(op, &[]), no_drive),
                AgentCommand::Finish,
                "{state} / {op}"
            );
        }
    }

    #[test]
    fn report_writes_are_throttled() {
        let five = Some(REPORT_WRITE_INTERVAL);
        let soon = Some(Duration::from_millis(100));
        let a = beat(&[], Some(("c1/deploy", "writing", 10)));
        assert!(should_store(None, &a, soon), "first report");
        assert!(!should_store(Some(&a), &a, five), "nothing changed");
        let more = beat(&[], Some(("c1/deploy", "writing", 20)));
        assert!(
            !should_store(Some(&a), &more, soon),
            "progress only, too soon"
        );
        assert!(should_store(Some(&a), &more, five), "progress after 5 s");
        assert!(
            should_store(Some(&a), &more, None),
            "unknown last write (restart)"
        );
        let step = beat(&[], Some(("c1/deploy", "config drive", 20)));
        assert!(should_store(Some(&a), &step, soon), "step changed");
        let done = beat(&["c1/deploy"], None);
        assert!(should_store(Some(&a), &done, soon), "result arrived");
    }

    #[test]
    fn stored_results_are_never_dropped() {
        let old = beat(&["c1/inspect"], None);
        let merged = merge_report(Some(&old), beat(&[], Some(("c1/x", "y", 0))));
        assert_eq!(merged.results.len(), 1);
        let other_cycle = Heartbeat {
            cycle: "c2".into(),
            ..beat(&[], None)
        };
        assert!(merge_report(Some(&old), other_cycle).results.is_empty());
    }

    #[test]
    fn tokens_are_random_and_compared_by_hash() {
        let t = new_token().unwrap();
        assert_eq!(t.len(), 43);
        assert_ne!(t, new_token().unwrap());
        let h = token_sha256(&t);
        assert_eq!(h.len(), 64);
        assert!(token_matches(&t, &h));
        assert!(!token_matches("other", &h));
        assert!(!token_matches(&t, ""));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer tok"),
        );
        assert_eq!(bearer_token(&h), Some("tok"));
    }

    #[test]
    fn mac_matching_uses_boot_mac_and_inspected_nics() {
        let mut h = host("inspecting");
        let set = |m: &str| BTreeSet::from([m.to_owned()]);
        assert!(host_has_mac(&h, &set("52:54:00:00:00:01")));
        assert!(!host_has_mac(&h, &set("52:54:00:00:00:02")));
        h.status.as_mut().unwrap().hardware =
            Some(serde_json::from_value(json!({"nics": [{"mac": "52-54-00-00-00-02"}]})).unwrap());
        assert!(host_has_mac(&h, &set("52:54:00:00:00:02")));
    }
}
