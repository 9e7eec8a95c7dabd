//! The simulated OS's cluster join: find the join step in the user data's `runcmd`, then
//! register a `Node` with the bootstrap token and keep its `Lease` in `kube-node-lease` renewed.
//!
//! Simulated: there is no kubelet or `sh`; the OS parses the join line instead of running it.
//! Real: the user data, the token and the HTTPS API calls against the target cluster. The
//! test OS (`vmetal-testos kubeadm join ...`) runs the same registration from a real VM.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{Value, json};
use vmetal_agent::FixtureSpec;
use vmetal_api::hardware::HardwareDetails;

/// How often the Lease is renewed (the kubelet's default).
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// `leaseDurationSeconds` written on the Lease (the kubelet's default).
pub const LEASE_DURATION_SECONDS: u32 = 40;
/// Label naming the BareMetalHost a Node runs on.
pub const HOST_LABEL: &str = "vmetal.io/host";
/// Standard instance-type label.
pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";

/// Which join line the user data carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// `curl -fsSLk "https://<endpoint>/node/join?token=<token>" | sh -`.
    VCluster,
    /// `kubeadm join <endpoint> --token <token> --discovery-token-ca-cert-hash <hash>`.
    Kubeadm,
}

/// A parsed join step.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinCommand {
    /// Which form.
    pub kind: JoinKind,
    /// `host:port` of the cluster API.
    pub endpoint: String,
    /// The bootstrap token.
    pub token: String,
    /// kubeadm's `--discovery-token-ca-cert-hash` (`sha256:<hex>`), when given.
    pub ca_cert_hash: Option<String>,
}

impl std::fmt::Debug for JoinCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinCommand")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint)
            .field("token", &"<redacted>")
            .field("ca_cert_hash", &self.ca_cert_hash)
            .finish()
    }
}

/// Why the join failed; never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The cluster could not be reached.
    #[error("cannot reach the cluster at {endpoint}: {reason}")]
    Unreachable {
        /// Endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The cluster answered with an error.
    #[error("the cluster at {endpoint} answered {status} to {what}: {message}")]
    Rejected {
        /// Endpoint.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The request.
        what: String,
        /// The Status message.
        message: String,
    },
    /// `--discovery-token-ca-cert-hash` is not `sha256:<64 hex digits>`.
    #[error(
        "--discovery-token-ca-cert-hash {value:?} is not sha256:<64 hex digits>; take it from \
         `kubeadm token create --print-join-command` or the cluster CA (see the test OS README)"
    )]
    InvalidCaCertHash {
        /// The value given.
        value: String,
    },
    /// The cluster's CA is not the one the join command pins.
    #[error(
        "the cluster at {endpoint} presented CA {found}, but the join command pins {expected}; \
         the endpoint is not the cluster the token was made for (or the hash is stale)"
    )]
    CaCertHashMismatch {
        /// Endpoint.
        endpoint: String,
        /// The pinned hash.
        expected: String,
        /// Hashes of the self-signed certificates the server presented.
        found: String,
    },
}

/// The join step from cloud-config user data, if its `runcmd` has one.
pub fn parse_join(user_data: &[u8]) -> Option<JoinCommand> {
    let doc: Value = serde_yaml::from_slice(user_data).ok()?;
    let runcmd = doc.get("runcmd")?.as_array()?;
    runcmd.iter().find_map(|entry| {
        let line = match entry {
            Value::String(s) => s.clone(),
            Value::Array(argv) => argv
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            _ => return None,
        };
        parse_line(&line)
    })
}

/// The join step in one `runcmd` line (`kubeadm join ...` or the vCluster `curl ... | sh -`).
pub fn parse_line(line: &str) -> Option<JoinCommand> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.first() == Some(&"kubeadm") && words.get(1) == Some(&"join") {
        let endpoint = words.get(2)?.to_string();
        let value_of = |flag: &str| {
            let at = words.iter().position(|w| *w == flag)?;
            words
                .get(at + 1)
                .map(|v| v.trim_matches(|c| c == '"' || c == '\'').to_string())
        };
        return Some(JoinCommand {
            kind: JoinKind::Kubeadm,
            endpoint,
            token: value_of("--token")?,
            ca_cert_hash: value_of("--discovery-token-ca-cert-hash"),
        });
    }
    if words.first() != Some(&"curl") {
        return None;
    }
    let url = words
        .iter()
        .map(|w| w.trim_matches(|c| c == '"' || c == '\''))
        .find(|w| w.starts_with("https://") && w.contains("/node/join?"))?;
    let rest = url.strip_prefix("https://")?;
    let (endpoint, query) = rest.split_once("/node/join?")?;
    let token = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))?
        .to_string();
    Some(JoinCommand {
        kind: JoinKind::VCluster,
        endpoint: endpoint.to_string(),
        token,
        ca_cert_hash: None,
    })
}

/// What the Node reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// Node name (the host name from the config drive).
    pub name: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// GPUs.
    pub gpus: usize,
}

impl NodeFacts {
    /// Facts of a server with `spec` hardware named `name`.
    pub fn new(name: &str, spec: &FixtureSpec) -> Self {
        Self {
            name: name.to_string(),
            cpus: spec.cpus,
            memory_mib: spec.ram_mib,
            gpus: spec.gpus.len(),
        }
    }

    /// Facts of a real machine from its inventory: logical CPUs, memory (`MemTotal` rounded
    /// up to whole GiB, as the BareMetalHost inventory reports it) and GPUs.
    pub fn from_details(name: &str, details: &HardwareDetails) -> Self {
        Self {
            name: name.to_string(),
            cpus: u32::try_from(details.cpu_count()).unwrap_or(0),
            memory_mib: u64::try_from(details.ram_mebibytes).unwrap_or(0),
            gpus: usize::try_from(details.gpu_count()).unwrap_or(0),
        }
    }

    /// Facts of the machine whose `/proc` and `/sys` are under `root` (`/` on the test OS).
    pub fn from_machine(name: &str, root: &Path) -> Result<Self, vmetal_agent::AgentError> {
        Ok(Self::from_details(name, &vmetal_agent::collect(root)?))
    }

    /// `node.kubernetes.io/instance-type`: `bm.c<cpus>.m<GiB>` plus `.gpu<n>` with GPUs.
    pub fn instance_type(&self) -> String {
        let mut t = format!("bm.c{}.m{}", self.cpus, self.memory_mib / 1024);
        if self.gpus > 0 {
            t.push_str(&format!(".gpu{}", self.gpus));
        }
        t
    }

    fn capacity(&self) -> Value {
        let mut c = json!({
            "cpu": self.cpus.to_string(),
            "memory": format!("{}Mi", self.memory_mib),
            "pods": "110",
        });
        if self.gpus > 0 {
            c["nvidia.com/gpu"] = json!(self.gpus.to_string());
        }
        c
    }

    /// The Node object to register.
    pub fn node(&self, now: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": self.labels()},
            "spec": {},
            "status": self.status(now),
        })
    }

    fn labels(&self) -> Value {
        json!({
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            INSTANCE_TYPE_LABEL: self.instance_type(),
            HOST_LABEL: self.name,
        })
    }

    fn status(&self, now: &str) -> Value {
        json!({
            "capacity": self.capacity(),
            "allocatable": self.capacity(),
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "vmetal lab OS is posting ready status",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }],
        })
    }

    /// The Lease in `kube-node-lease`.
    pub fn lease(&self, now: &str) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.name,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": now,
            },
        })
    }
}

fn now_micro() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

fn now_seconds() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Where a join stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum JoinState {
    /// Registering.
    #[default]
    Joining,
    /// The Node is registered; its Lease is being renewed.
    Joined {
        /// Node name.
        node: String,
        /// Lease renewals so far.
        renewals: u64,
    },
    /// Registration failed (retried every few seconds).
    Failed(String),
}

/// A running join; dropping it stops the lease renewal (the server lost power).
pub struct JoinTask {
    handle: tokio::task::JoinHandle<()>,
    state: Arc<Mutex<JoinState>>,
}

impl Drop for JoinTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl JoinTask {
    /// Where the join stands.
    pub fn state(&self) -> JoinState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Start joining on the current tokio runtime (`None` without one). The simulated OS accepts
/// any serving certificate, as the vCluster join's `curl -k` does.
pub fn spawn(cmd: JoinCommand, facts: NodeFacts) -> Option<JoinTask> {
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let state = Arc::new(Mutex::new(JoinState::default()));
    let shared = state.clone();
    let handle = rt.spawn(async move {
        let set = |s: JoinState| *shared.lock().unwrap_or_else(|p| p.into_inner()) = s;
        let client = match Cluster::connect(&cmd, &CaCheck::AcceptAny) {
            Ok(c) => c,
            Err(e) => {
                set(JoinState::Failed(e.to_string()));
                return;
            }
        };
        loop {
            match client.register(&facts).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(node = %facts.name, %e, "join failed; retrying");
                    set(JoinState::Failed(e.to_string()));
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        let mut renewals = 0;
        loop {
            set(JoinState::Joined {
                node: facts.name.clone(),
                renewals,
            });
            tokio::time::sleep(LEASE_RENEW).await;
            match client.renew_lease(&facts).await {
                Ok(()) => renewals += 1,
                Err(e) => tracing::debug!(node = %facts.name, %e, "lease renewal failed"),
            }
        }
    });
    Some(JoinTask { handle, state })
}

/// How the joining node checks the cluster's serving certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaCheck {
    /// Accept any certificate: `curl -k`, kubeadm's
    /// `--discovery-token-unsafe-skip-ca-verification`, and the simulated lab.
    AcceptAny,
    /// kubeadm's `--discovery-token-ca-cert-hash sha256:<hex>`: the served chain must contain a
    /// certificate with this public-key hash that issued the serving certificate. A server that
    /// presents only its own certificate cannot be checked this way (see [`PinStatus`]).
    Pinned(String),
}

/// What became of a pinned CA hash on the connections made so far.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PinStatus {
    /// [`CaCheck::AcceptAny`]: nothing is pinned.
    #[default]
    NotPinned,
    /// No TLS handshake yet.
    Pending,
    /// The served chain holds the pinned CA and it issued the serving certificate.
    Verified,
    /// The server presented no self-signed (CA) certificate, so the pin could not be checked
    /// and the connection went ahead unverified, like `--discovery-token-unsafe-skip-ca-verification`.
    Unchecked,
    /// The served chain's CA is another one (or did not issue the serving certificate); the
    /// connection was refused.
    Mismatch(String),
}

/// The target cluster, spoken to with the bootstrap token.
pub struct Cluster {
    http: reqwest::Client,
    base: String,
    endpoint: String,
    token: String,
    pin: Option<(String, Arc<Mutex<PinStatus>>)>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("endpoint", &self.endpoint)
            .field("token", &"<redacted>")
            .field("pin", &self.pin_status())
            .finish()
    }
}

impl Cluster {
    /// A client for the cluster of `cmd`, checking its certificate as `check` says.
    pub fn connect(cmd: &JoinCommand, check: &CaCheck) -> Result<Self, JoinError> {
        let unreachable = |reason: String| JoinError::Unreachable {
            endpoint: cmd.endpoint.clone(),
            reason,
        };
        let (tls, pin) = match check {
            // The token is what proves the node may join; the certificate is not checked.
            CaCheck::AcceptAny => (
                vmetal_bmc::redfish::tls::client_config(true, &[]).map_err(|e| unreachable(e.0))?,
                None,
            ),
            CaCheck::Pinned(hash) => {
                let pin = parse_pin(hash)?;
                let verifier_pin = pin.clone();
                let status = Arc::new(Mutex::new(PinStatus::Pending));
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let verifier = PinnedCa {
                    pin,
                    algorithms: provider.signature_verification_algorithms,
                    status: status.clone(),
                };
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| unreachable(format!("TLS protocol versions: {e}")))?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth();
                (tls, Some((verifier_pin, status)))
            }
        };
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Self {
            http,
            base: format!("https://{}", cmd.endpoint),
            endpoint: cmd.endpoint.clone(),
            token: cmd.token.clone(),
            pin,
        })
    }

    /// What became of the pinned CA hash so far.
    pub fn pin_status(&self) -> PinStatus {
        match &self.pin {
            None => PinStatus::NotPinned,
            Some((_, status)) => status.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// The error for a failed request: a pin mismatch when the verifier refused the server.
    fn request_error(&self, e: reqwest::Error) -> JoinError {
        if let Some((expected, _)) = &self.pin
            && let PinStatus::Mismatch(found) = self.pin_status()
        {
            return JoinError::CaCertHashMismatch {
                endpoint: self.endpoint.clone(),
                expected: expected.clone(),
                found,
            };
        }
        JoinError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason: error_chain(&e.without_url()),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
        content_type: &str,
    ) -> Result<u16, JoinError> {
        let response = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| self.request_error(e))?;
        let status = response.status().as_u16();
        if response.status().is_success() || status == 409 {
            return Ok(status);
        }
        let message = response
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(String::from))
            .unwrap_or_default();
        Err(JoinError::Rejected {
            endpoint: self.endpoint.clone(),
            status,
            what: format!("{method} {path}"),
            message,
        })
    }

    /// Create the Node (or take over an existing one of the same name), post Ready status,
    /// and create the Lease.
    pub async fn register(&self, facts: &NodeFacts) -> Result<(), JoinError> {
        use reqwest::Method;
        const JSON: &str = "application/json";
        const MERGE: &str = "application/merge-patch+json";
        let now = now_seconds();
        let node_path = format!("/api/v1/nodes/{}", facts.name);
        let created = self
            .send(Method::POST, "/api/v1/nodes", &facts.node(&now), JSON)
            .await?;
        if created == 409 {
            let labels = json!({"metadata": {"labels": facts.labels()}});
            self.send(Method::PATCH, &node_path, &labels, MERGE).await?;
        }
        self.post_ready(facts, &now).await?;
        self.renew_lease(facts).await
    }

    /// Post the Node's Ready condition with a fresh heartbeat (the kubelet's status update);
    /// `since` is when it became Ready.
    pub async fn post_ready(&self, facts: &NodeFacts, since: &str) -> Result<(), JoinError> {
        let mut status = facts.status(since);
        status["conditions"][0]["lastHeartbeatTime"] = json!(now_seconds());
        self.send(
            reqwest::Method::PATCH,
            &format!("/api/v1/nodes/{}/status", facts.name),
            &json!({ "status": status }),
            "application/merge-patch+json",
        )
        .await
        .map(drop)
    }

    /// Whether Node `name` exists in the cluster.
    pub async fn node_exists(&self, name: &str) -> Result<bool, JoinError> {
        let path = format!("/api/v1/nodes/{name}");
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.request_error(e))?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => Err(JoinError::Rejected {
                endpoint: self.endpoint.clone(),
                status,
                what: format!("GET {path}"),
                message: String::new(),
            }),
        }
    }

    /// Create or renew the Node's Lease in `kube-node-lease`.
    pub async fn renew_lease(&self, facts: &NodeFacts) -> Result<(), JoinError> {
        use reqwest::Method;
        let now = now_micro();
        let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
        let created = self
            .send(Method::POST, leases, &facts.lease(&now), "application/json")
            .await?;
        if created == 409 {
            let patch = json!({"spec": {"holderIdentity": facts.name, "renewTime": now}});
            self.send(
                Method::PATCH,
                &format!("{leases}/{}", facts.name),
                &patch,
                "application/merge-patch+json",
            )
            .await?;
        }
        Ok(())
    }
}

/// An error with its sources (reqwest's own message hides the TLS or socket cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The pin in canonical form (`sha256:` and 64 lower-case hex digits).
fn parse_pin(value: &str) -> Result<String, JoinError> {
    let ok = value
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(JoinError::InvalidCaCertHash {
            value: value.to_string(),
        });
    }
    Ok(value.to_ascii_lowercase())
}

fn spki_hash(cert: &CertificateDer<'_>) -> Option<String> {
    vmetal_api::ca_hash::ca_cert_hash(cert).ok()
}

/// Whether a chain certificate names itself as issuer (a root the server chose to send).
fn self_issued(cert: &CertificateDer<'_>) -> bool {
    webpki::EndEntityCert::try_from(cert).is_ok_and(|c| c.issuer() == c.subject())
}

/// Whether a serving certificate is its own issuer: it names itself and its signature verifies
/// with its own key (a same-named certificate from a CA does not).
fn self_signed(
    cert: &CertificateDer<'_>,
    algorithms: &WebPkiSupportedAlgorithms,
    now: UnixTime,
) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    if ee.issuer() != ee.subject() {
        return false;
    }
    let Ok(anchor) = webpki::anchor_from_trusted_cert(cert) else {
        return false;
    };
    ee.verify_for_usage(
        algorithms.all,
        &[anchor],
        &[],
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .is_ok()
}

/// Checks the served chain against a pinned CA public-key hash (kubeadm's discovery pin),
/// without host-name checks: the guest reaches the cluster at addresses its certificate does
/// not name (QEMU's 10.0.2.2).
#[derive(Debug)]
struct PinnedCa {
    pin: String,
    algorithms: WebPkiSupportedAlgorithms,
    status: Arc<Mutex<PinStatus>>,
}

impl PinnedCa {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> PinStatus {
        if spki_hash(end_entity).as_ref() == Some(&self.pin) {
            // The serving certificate is the pinned one; the handshake proves its key.
            return PinStatus::Verified;
        }
        let mut other_roots = Vec::new();
        for (i, cert) in intermediates.iter().enumerate() {
            let Some(hash) = spki_hash(cert) else {
                continue;
            };
            if hash == self.pin {
                let Ok(anchor) = webpki::anchor_from_trusted_cert(cert) else {
                    continue;
                };
                let rest: Vec<CertificateDer<'_>> = intermediates
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, c)| c.clone())
                    .collect();
                let issued = webpki::EndEntityCert::try_from(end_entity).and_then(|ee| {
                    ee.verify_for_usage(
                        self.algorithms.all,
                        &[anchor],
                        &rest,
                        now,
                        webpki::KeyUsage::server_auth(),
                        None,
                        None,
                    )
                    .map(drop)
                });
                return match issued {
                    Ok(()) => PinStatus::Verified,
                    Err(e) => PinStatus::Mismatch(format!(
                        "the pinned CA is in the chain but did not issue the serving \
                         certificate ({e})"
                    )),
                };
            }
            if self_issued(cert) {
                other_roots.push(hash);
            }
        }
        if self_signed(end_entity, &self.algorithms, now)
            && let Some(hash) = spki_hash(end_entity)
        {
            other_roots.push(hash);
        }
        if other_roots.is_empty() {
            PinStatus::Unchecked
        } else {
            PinStatus::Mismatch(other_roots.join(", "))
        }
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let outcome = self.check(end_entity, intermediates, now);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        // One verified connection is not undone by a later unchecked one, and a mismatch sticks.
        match (&*status, &outcome) {
            (PinStatus::Mismatch(_), _) | (PinStatus::Verified, PinStatus::Unchecked) => {}
            _ => *status = outcome.clone(),
        }
        match outcome {
            PinStatus::Mismatch(found) => Err(rustls::Error::General(format!(
                "the server's CA does not match --discovery-token-ca-cert-hash (found {found})"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_vcluster_join_line() {
        let ud = b"#cloud-config\nhostname: server-3\nruncmd:\n- echo hi\n- curl -fsSLk \"https://127.0.0.1:6444/node/join?token=abcdef.0123456789abcdef\" | sh -\n";
        let cmd = parse_join(ud).unwrap();
        assert_eq!(cmd.kind, JoinKind::VCluster);
        assert_eq!(cmd.endpoint, "127.0.0.1:6444");
        assert_eq!(cmd.token, "abcdef.0123456789abcdef");
        assert!(!format!("{cmd:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn finds_the_kubeadm_join_line_also_as_argv() {
        let ud = b"#cloud-config\nruncmd:\n- [kubeadm, join, '10.0.0.1:6443', --token, abcdef.0123456789abcdef, --discovery-token-ca-cert-hash, 'sha256:00']\n";
        let cmd = parse_join(ud).unwrap();
        assert_eq!(cmd.kind, JoinKind::Kubeadm);
        assert_eq!(cmd.endpoint, "10.0.0.1:6443");
        assert_eq!(cmd.token, "abcdef.0123456789abcdef");
    }

    #[test]
    fn kubeadm_line_keeps_the_ca_hash() {
        let hash = format!("sha256:{}", "0f".repeat(32));
        let cmd = parse_line(&format!(
            "kubeadm join 10.0.2.2:6443 --token abcdef.0123456789abcdef \
             --discovery-token-ca-cert-hash {hash}"
        ))
        .unwrap();
        assert_eq!(cmd.ca_cert_hash, Some(hash));
        assert_eq!(cmd.token, "abcdef.0123456789abcdef");
    }

    /// A CA and a serving certificate it issued: (CA DER, leaf DER).
    fn chain() -> (CertificateDer<'static>, CertificateDer<'static>) {
        let (ca, leaf, _) = chain_with_key();
        (ca, leaf)
    }

    /// [`chain`] plus the serving certificate's key.
    fn chain_with_key() -> (
        CertificateDer<'static>,
        CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        (ca.der().clone(), leaf.der().clone(), key)
    }

    /// An HTTPS server on loopback presenting `chain` and answering 404 to everything.
    fn tls_server(
        chain: Vec<CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> (String, axum_server::Handle<std::net::SocketAddr>) {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = axum_server::Handle::new();
        let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config));
        let server = axum_server::from_tcp_rustls(listener, tls)
            .unwrap()
            .handle(handle.clone());
        let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::NOT_FOUND });
        tokio::spawn(server.serve(app.into_make_service()));
        (addr.to_string(), handle)
    }

    #[tokio::test]
    async fn the_pin_is_enforced_in_real_handshakes() {
        let (ca, leaf, key) = chain_with_key();
        let (other_ca, _) = chain();
        let pin = vmetal_api::ca_hash::ca_cert_hash(&ca).unwrap();
        let other_pin = vmetal_api::ca_hash::ca_cert_hash(&other_ca).unwrap();
        let cmd = |endpoint: &str| JoinCommand {
            kind: JoinKind::Kubeadm,
            endpoint: endpoint.to_string(),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hash: None,
        };
        let (with_ca, _h1) = tls_server(vec![leaf.clone(), ca], key.clone_key());
        let good = Cluster::connect(&cmd(&with_ca), &CaCheck::Pinned(pin.clone())).unwrap();
        assert!(!good.node_exists("n").await.unwrap());
        assert_eq!(good.pin_status(), PinStatus::Verified);

        let bad = Cluster::connect(&cmd(&with_ca), &CaCheck::Pinned(other_pin.clone())).unwrap();
        let err = bad.node_exists("n").await.unwrap_err();
        let JoinError::CaCertHashMismatch {
            expected, found, ..
        } = &err
        else {
            panic!("a foreign CA was accepted: {err}")
        };
        assert_eq!((expected, found), (&other_pin, &pin));
        assert!(!err.to_string().contains("0123456789abcdef"));

        // A server presenting only its leaf cannot be checked: the join goes ahead, flagged.
        let (leaf_only, _h2) = tls_server(vec![leaf], key);
        let unchecked = Cluster::connect(&cmd(&leaf_only), &CaCheck::Pinned(pin)).unwrap();
        assert!(!unchecked.node_exists("n").await.unwrap());
        assert_eq!(unchecked.pin_status(), PinStatus::Unchecked);
    }

    fn verifier(pin: &str) -> PinnedCa {
        PinnedCa {
            pin: parse_pin(pin).unwrap(),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
            status: Arc::new(Mutex::new(PinStatus::Pending)),
        }
    }

    #[test]
    fn ca_pin_is_checked_against_the_served_chain() {
        let (ca, leaf) = chain();
        let (other_ca, _) = chain();
        let pin = vmetal_api::ca_hash::ca_cert_hash(&ca).unwrap();
        let now = UnixTime::now();
        let v = verifier(&pin.to_uppercase().replace("SHA256:", "sha256:"));
        // The CA served after the leaf: checked.
        assert_eq!(
            v.check(&leaf, std::slice::from_ref(&ca), now),
            PinStatus::Verified
        );
        // Another CA served: refused, and the error names what was found.
        let PinStatus::Mismatch(found) = v.check(&leaf, std::slice::from_ref(&other_ca), now)
        else {
            panic!("a foreign CA was accepted")
        };
        assert_eq!(found, vmetal_api::ca_hash::ca_cert_hash(&other_ca).unwrap());
        // The pinned CA served beside a leaf it did not issue: refused.
        let (_, foreign_leaf) = chain();
        assert!(matches!(
            v.check(&foreign_leaf, std::slice::from_ref(&ca), now),
            PinStatus::Mismatch(m) if m.contains("did not issue")
        ));
        // Only the leaf served (the vmetal API server today): cannot be checked...
        assert_eq!(v.check(&leaf, &[], now), PinStatus::Unchecked);
        // ...unless it is self-signed: then it is the root, and not the pinned one.
        let key = rcgen::KeyPair::generate().unwrap();
        let lone = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(matches!(
            v.check(lone.der(), &[], now),
            PinStatus::Mismatch(_)
        ));
        let lone_pin = vmetal_api::ca_hash::ca_cert_hash(lone.der()).unwrap();
        assert_eq!(
            verifier(&lone_pin).check(lone.der(), &[], now),
            PinStatus::Verified
        );
        // Through rustls' entry point: a mismatch is a handshake error and sticks.
        let name = ServerName::try_from("127.0.0.1").unwrap();
        assert!(
            v.verify_server_cert(&leaf, std::slice::from_ref(&ca), &name, &[], now)
                .is_ok()
        );
        assert!(
            v.verify_server_cert(&leaf, &[other_ca], &name, &[], now)
                .is_err()
        );
        assert!(v.verify_server_cert(&leaf, &[ca], &name, &[], now).is_ok());
        assert!(matches!(&*v.status.lock().unwrap(), PinStatus::Mismatch(_)));
    }

    #[test]
    fn malformed_pins_are_refused_up_front() {
        for bad in [
            "",
            "sha256:",
            "md5:00",
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            let cmd = JoinCommand {
                kind: JoinKind::Kubeadm,
                endpoint: "127.0.0.1:1".into(),
                token: "abcdef.0123456789abcdef".into(),
                ca_cert_hash: None,
            };
            let err = Cluster::connect(&cmd, &CaCheck::Pinned(bad.to_string())).unwrap_err();
            assert!(
                matches!(err, JoinError::InvalidCaCertHash { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn no_join_without_a_join_line() {
        assert_eq!(parse_join(b"#cloud-config\nhostname: a\n"), None);
        assert_eq!(parse_join(b"#cloud-config\nruncmd: [echo hi]\n"), None);
        assert_eq!(parse_join(b"\xff\xfe not yaml: ["), None);
    }

    #[test]
    fn node_carries_capacity_and_labels_from_the_hardware() {
        let spec = crate::rack::lab_spec(3);
        let facts = NodeFacts::new("server-3", &spec);
        let node = facts.node("2026-01-01T00:00:00Z");
        assert_eq!(node["status"]["capacity"]["cpu"], spec.cpus.to_string());
        assert_eq!(
            node["status"]["capacity"]["memory"],
            format!("{}Mi", spec.ram_mib)
        );
        assert_eq!(
            node["status"]["capacity"]["nvidia.com/gpu"],
            spec.gpus.len().to_string()
        );
        assert_eq!(node["metadata"]["labels"][HOST_LABEL], "server-3");
        assert!(
            node["metadata"]["labels"][INSTANCE_TYPE_LABEL]
                .as_str()
                .unwrap()
                .ends_with(&format!(".gpu{}", spec.gpus.len()))
        );
        assert_eq!(node["status"]["conditions"][0]["type"], "Ready");
        let lease = facts.lease(&now_micro());
        assert_eq!(lease["spec"]["holderIdentity"], "server-3");
    }
}
