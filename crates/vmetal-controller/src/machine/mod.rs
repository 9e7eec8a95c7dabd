//! The `Machine` controller: claims a BareMetalHost per Machine, renders its user data, drives
//! the host through provisioning, watches the tenant cluster for the node, and gives the host
//! back on delete.
//!
//! Woken by Machine changes, by BareMetalHost changes (a host's `vmetal.io/machine` label names
//! its Machine; a host that becomes free wakes the unscheduled Machines of its namespace), by
//! the Secrets a Machine references, and by Nodes of the tenant clusters — never by a fixed poll.

pub mod claim;
mod reconcile;
mod release;
pub mod status;
pub mod userdata;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use vmetal_api::host::annotations::MACHINE_LABEL;
use vmetal_api::{BareMetalHost, Machine, MachinePhase};

pub use reconcile::reconcile;

/// Finalizer that keeps a Machine until its host is deprovisioned and released.
pub const FINALIZER: &str = "vmetal.io/release-host";
/// Label on the user-data Secret and on tenant Nodes naming the host.
pub const HOST_LABEL: &str = "vmetal.io/host";
/// Key of the join token in the token Secret when `tokenSecretRef.key` is unset.
pub const DEFAULT_TOKEN_KEY: &str = "token";
/// Key of the extra cloud-config in the `spec.userData` Secret when unset (Metal3's key).
pub const DEFAULT_USER_DATA_KEY: &str = "userData";

/// A tenant cluster the controller can see, to tell when a Machine's node joined.
#[derive(Clone)]
pub struct TenantCluster {
    /// The join endpoint Machines name for it (`host:port`, as in `spec.join.*.endpoint`).
    pub endpoint: String,
    /// A client with read access to its Nodes (and delete, to remove a released node).
    pub client: kube::Client,
}

/// Tunables of the machine controller.
#[derive(Debug, Clone)]
pub struct MachineControllerConfig {
    /// Reconciles running at once.
    pub concurrency: u16,
    /// Watch one namespace only (`None`: all).
    pub namespace: Option<String>,
}

impl Default for MachineControllerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            namespace: None,
        }
    }
}

/// Shared by all Machine reconciles.
pub struct MachineContext {
    /// Host-cluster client.
    pub client: kube::Client,
    /// Every BareMetalHost, as last seen by the watch; claims re-check with a CAS write.
    pub hosts: Store<BareMetalHost>,
    /// Tenant clusters whose Nodes are watched.
    pub tenants: Vec<TenantCluster>,
    /// Hosts being claimed by other reconciles of this controller (a hint, see [`claim`]).
    pub reservations: claim::Reservations,
}

impl MachineContext {
    /// The tenant cluster a join endpoint names, if this controller can see it.
    pub fn tenant(&self, endpoint: &str) -> Option<&TenantCluster> {
        self.tenants.iter().find(|t| t.endpoint == endpoint)
    }
}

/// A reconcile could not complete; the Machine is retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// Talking to the Kubernetes API failed.
    #[error("Kubernetes API call failed for {object}: {source}")]
    Kube {
        /// The object.
        object: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// An object could not be encoded.
    #[error("cannot encode {object}: {reason}")]
    Encode {
        /// The object.
        object: String,
        /// Why.
        reason: String,
    },
}

impl MachineError {
    /// Wrap a kube error with the object it concerns.
    pub fn kube(object: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            object: object.into(),
            source,
        }
    }

    fn is_conflict(&self) -> bool {
        matches!(self, Self::Kube { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// What to do after a failed reconcile.
pub fn error_policy(_m: Arc<Machine>, err: &MachineError, _ctx: Arc<MachineContext>) -> Action {
    if err.is_conflict() {
        return Action::requeue(crate::backoff::jittered(Duration::from_millis(50), 1.0));
    }
    tracing::warn!(%err, "machine reconcile failed");
    Action::requeue(crate::backoff::jittered(Duration::from_secs(1), 1.0))
}

/// Run the machine controller until `shutdown` resolves.
pub async fn run(
    client: kube::Client,
    tenants: Vec<TenantCluster>,
    config: MachineControllerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    fn api<K>(client: &kube::Client, ns: &Option<String>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let machines: Api<Machine> = api(&client, &config.namespace);
    let hosts: Api<BareMetalHost> = api(&client, &config.namespace);
    let secrets: Api<Secret> = api(&client, &config.namespace);

    let controller = Controller::new(machines, watcher::Config::default());
    let machine_store = controller.store();

    // One host watch feeds both the claim cache and the wake-ups, so a Machine woken by a host
    // event always sees at least that event in the cache.
    let (host_store, writer) = reflector::store::<BareMetalHost>();
    let store_for_map = machine_store.clone();
    let host_triggers = reflector::reflector(
        writer,
        watcher(hosts, watcher::Config::default()).default_backoff(),
    )
    .touched_objects()
    .filter_map(|r| async move { r.ok() })
    .flat_map(move |host| futures::stream::iter(host_to_machines(&host, &store_for_map)));

    let ctx = Arc::new(MachineContext {
        client: client.clone(),
        hosts: host_store,
        tenants: tenants.clone(),
        reservations: Default::default(),
    });

    let store_for_secrets = machine_store.clone();
    let mut controller = controller
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
        .reconcile_on(host_triggers)
        .watches(secrets, watcher::Config::default(), move |s: Secret| {
            secret_to_machines(&s, &store_for_secrets)
        });
    for tenant in &tenants {
        let store = machine_store.clone();
        let nodes: Api<Node> = Api::all(tenant.client.clone());
        controller = controller.watches(nodes, watcher::Config::default(), move |n: Node| {
            node_to_machines(&n, &store)
        });
    }
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(%err, "machine controller event");
            }
        })
        .await;
}

/// Machines a host event matters to: the one named by its label, or, when the host is free,
/// every Machine of its namespace still waiting for a host.
fn host_to_machines(host: &BareMetalHost, machines: &Store<Machine>) -> Vec<ObjectRef<Machine>> {
    let ns = host.namespace().unwrap_or_default();
    if let Some(name) = host.labels().get(MACHINE_LABEL) {
        return vec![ObjectRef::new(name).within(&ns)];
    }
    if !claim::is_free(host) {
        return Vec::new();
    }
    machines
        .state()
        .iter()
        .filter(|m| m.namespace().unwrap_or_default() == ns)
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .filter(|m| {
            m.status.as_ref().is_none_or(|s| {
                s.host_ref.is_none()
                    && !(s.phase == MachinePhase::Failed
                        && s.observed_generation == m.metadata.generation)
            })
        })
        .map(|m| ObjectRef::from(m.as_ref()))
        .collect()
}

/// Machines that reference a Secret (join token or extra user data).
fn secret_to_machines(secret: &Secret, machines: &Store<Machine>) -> Vec<ObjectRef<Machine>> {
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    machines
        .state()
        .iter()
        .filter(|m| m.namespace().unwrap_or_default() == ns)
        .filter(|m| {
            let spec = &m.spec;
            let join = spec.join.as_ref();
            spec.user_data.as_ref().is_some_and(|r| r.name == name)
                || join
                    .and_then(|j| j.vcluster.as_ref())
                    .is_some_and(|v| v.token_secret_ref.name == name)
                || join
                    .and_then(|j| j.kubeadm.as_ref())
                    .is_some_and(|k| k.token_secret_ref.name == name)
        })
        .map(|m| ObjectRef::from(m.as_ref()))
        .collect()
}

/// The Machine whose host a tenant Node was named after.
fn node_to_machines(node: &Node, machines: &Store<Machine>) -> Vec<ObjectRef<Machine>> {
    let host = node
        .labels()
        .get(HOST_LABEL)
        .cloned()
        .unwrap_or_else(|| node.name_any());
    machines
        .state()
        .iter()
        .filter(|m| {
            m.status
                .as_ref()
                .and_then(|s| s.host_ref.as_ref())
                .is_some_and(|r| r.name == host)
        })
        .map(|m| ObjectRef::from(m.as_ref()))
        .collect()
}
