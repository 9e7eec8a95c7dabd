//! The `BareMetalHost` controller: a kube-rs `Controller` over hosts, woken also by changes to
//! their credentials and agent-cycle Secrets, driving the state machine in [`machine`].
//!
//! Status-only updates do not wake it (the generation and annotations predicate), so its own
//! status writes cost nothing.

pub mod conditions;
mod machine;
mod work;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use vmetal_api::BareMetalHost;

use crate::context::Context;
use crate::error::ControllerError;

pub use machine::reconcile;

/// Label the agent-cycle Secrets carry (value: host name).
const CYCLE_LABEL: &str = "vmetal.io/agent-cycle";

/// What to do after a failed reconcile (a Kubernetes API failure, not a host error).
pub fn error_policy(
    _host: Arc<BareMetalHost>,
    err: &ControllerError,
    _ctx: Arc<Context>,
) -> Action {
    if err.is_conflict() {
        return Action::requeue(Duration::from_millis(50));
    }
    tracing::warn!(%err, "reconcile failed");
    Action::requeue(crate::backoff::jittered(Duration::from_secs(2), 0.5))
}

/// Run the host controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let hosts: Api<BareMetalHost> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let secrets: Api<Secret> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let controller = Controller::new(hosts, watcher::Config::default());
    let store = controller.store();
    ctx.metrics.watch_hosts(store.clone());
    let concurrency = ctx.config.concurrency;
    controller
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .watches(
            secrets,
            watcher::Config::default(),
            move |secret: Secret| secret_to_hosts(&secret, &store),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(%err, "controller event");
            }
        })
        .await;
}

/// Hosts a Secret matters to: the host of an agent-cycle Secret, or every host using it as
/// BMC credentials.
fn secret_to_hosts(
    secret: &Secret,
    store: &kube::runtime::reflector::Store<BareMetalHost>,
) -> Vec<ObjectRef<BareMetalHost>> {
    let ns = secret.metadata.namespace.clone().unwrap_or_default();
    let name = secret.metadata.name.clone().unwrap_or_default();
    if let Some(host) = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CYCLE_LABEL))
    {
        return vec![ObjectRef::new(host).within(&ns)];
    }
    store
        .state()
        .iter()
        .filter(|h| h.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|h| {
            h.spec
                .bmc
                .as_ref()
                .is_some_and(|b| b.credentials_name == name)
        })
        .map(|h| ObjectRef::from(h.as_ref()))
        .collect()
}
