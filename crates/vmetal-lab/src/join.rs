//! The simulated OS's cluster join: find the join step in the user data's `runcmd`, then
//! register a `Node` with the bootstrap token and keep its `Lease` in `kube-node-lease` renewed.
//!
//! Simulated: there is no kubelet or `sh`; the OS parses the join line instead of running it.
//! Real: the user data, the token and the HTTPS API calls against the target cluster.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use vmetal_agent::FixtureSpec;

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
}

impl std::fmt::Debug for JoinCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinCommand")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint)
            .field("token", &"<redacted>")
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

fn parse_line(line: &str) -> Option<JoinCommand> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.first() == Some(&"kubeadm") && words.get(1) == Some(&"join") {
        let endpoint = words.get(2)?.to_string();
        let at = words.iter().position(|w| *w == "--token")?;
        let token = words.get(at + 1)?.to_string();
        return Some(JoinCommand {
            kind: JoinKind::Kubeadm,
            endpoint,
            token,
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

/// Start joining on the current tokio runtime (`None` without one).
pub fn spawn(cmd: JoinCommand, facts: NodeFacts) -> Option<JoinTask> {
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let state = Arc::new(Mutex::new(JoinState::default()));
    let shared = state.clone();
    let handle = rt.spawn(async move {
        let set = |s: JoinState| *shared.lock().unwrap_or_else(|p| p.into_inner()) = s;
        let client = match Cluster::new(&cmd) {
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

/// The target cluster, spoken to with the bootstrap token.
struct Cluster {
    http: reqwest::Client,
    base: String,
    endpoint: String,
    token: String,
}

impl Cluster {
    fn new(cmd: &JoinCommand) -> Result<Self, JoinError> {
        let unreachable = |reason: String| JoinError::Unreachable {
            endpoint: cmd.endpoint.clone(),
            reason,
        };
        // `curl -k`: the join script's fetch does not verify the certificate; the token is
        // what proves the node may join. (kubeadm would pin the CA hash; see the README.)
        let tls =
            vmetal_bmc::redfish::tls::client_config(true, &[]).map_err(|e| unreachable(e.0))?;
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
        })
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
            .map_err(|e| JoinError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: e.to_string(),
            })?;
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
    async fn register(&self, facts: &NodeFacts) -> Result<(), JoinError> {
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
        let status = json!({"status": facts.status(&now)});
        self.send(
            Method::PATCH,
            &format!("{node_path}/status"),
            &status,
            MERGE,
        )
        .await?;
        self.renew_lease(facts).await
    }

    async fn renew_lease(&self, facts: &NodeFacts) -> Result<(), JoinError> {
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
