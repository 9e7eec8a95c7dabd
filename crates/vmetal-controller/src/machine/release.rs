//! Giving a host back: clear its image and user data and power it off, wait until
//! deprovisioning has wiped it and it is `available` again, remove the tenant Node, then clear
//! `consumerRef` and the label (a resourceVersion-checked write), and finally the finalizer.
//!
//! Like Metal3's CAPM3 delete flow, without its 30-second polls: host events wake the Machine.

use k8s_openapi::api::core::v1::{Node, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;
use vmetal_api::host::annotations::MACHINE_LABEL;
use vmetal_api::machine::JoinTarget;
use vmetal_api::{BareMetalHost, Machine, MachinePhase, ProvisioningState};

use super::reconcile::{event, own_hosts, user_data_secret_name};
use super::status;
use super::{FINALIZER, HOST_LABEL, MachineContext, MachineError};

/// Where a release stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// No host is held any more.
    Released,
    /// Waiting for the host; the message says for what.
    Waiting(String),
}

/// Whether a host in `state` still carries (or is removing) an installed image.
fn still_busy(state: ProvisioningState) -> bool {
    matches!(
        state,
        ProvisioningState::Provisioning
            | ProvisioningState::Provisioned
            | ProvisioningState::Deprovisioning
            | ProvisioningState::Preparing
            | ProvisioningState::Inspecting
            | ProvisioningState::MatchProfile
    )
}

/// The release step for one host held by `machine`; pure decision, see [`release_host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Clear image/userData and set online false.
    ClearSpec,
    /// Wait for the host controller (state shown).
    Wait(String),
    /// Clear consumerRef and the label.
    Unclaim,
}

/// Decide the next release step for `host`.
pub fn next_step(host: &BareMetalHost) -> Next {
    if host.metadata.deletion_timestamp.is_some() {
        // The host controller deprovisions a deleted host itself.
        return Next::Unclaim;
    }
    let spec = &host.spec;
    if spec.image.is_some() || spec.user_data.is_some() || spec.online {
        return Next::ClearSpec;
    }
    let state = host.provisioning_state();
    let installed = host
        .status
        .as_ref()
        .is_some_and(|s| s.provisioning.image.is_some());
    if still_busy(state) || installed {
        let error = host
            .status
            .as_ref()
            .map(|s| s.error_message.as_str())
            .filter(|m| !m.is_empty())
            .map(|m| format!(" (host error: {m})"))
            .unwrap_or_default();
        return Next::Wait(format!(
            "waiting for BareMetalHost {} to deprovision: it is {state}{error}",
            host.name_any()
        ));
    }
    Next::Unclaim
}

/// Advance the release of every host `machine` holds.
pub async fn release_all(
    ctx: &MachineContext,
    machine: &Machine,
) -> Result<Progress, MachineError> {
    let mut waiting = Vec::new();
    for host in own_hosts(ctx, machine).await? {
        if let Progress::Waiting(m) = release_host(ctx, machine, &host).await? {
            waiting.push(m);
        }
    }
    Ok(if waiting.is_empty() {
        Progress::Released
    } else {
        Progress::Waiting(waiting.join("; "))
    })
}

async fn release_host(
    ctx: &MachineContext,
    machine: &Machine,
    host: &BareMetalHost,
) -> Result<Progress, MachineError> {
    let api: Api<BareMetalHost> =
        Api::namespaced(ctx.client.clone(), &host.namespace().unwrap_or_default());
    let name = host.name_any();
    let object = format!("BareMetalHost {name}");
    match next_step(host) {
        Next::ClearSpec => {
            let patch = json!({"spec": {"image": null, "userData": null, "online": false}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(|e| MachineError::kube(&object, e))?;
            Ok(Progress::Waiting(format!(
                "deprovisioning BareMetalHost {name}"
            )))
        }
        Next::Wait(message) => Ok(Progress::Waiting(message)),
        Next::Unclaim => {
            delete_node(ctx, machine, &name).await;
            let mut h = host.clone();
            h.spec.consumer_ref = None;
            if let Some(labels) = h.metadata.labels.as_mut() {
                labels.remove(MACHINE_LABEL);
            }
            // resourceVersion-checked: only clear what is still ours as we read it.
            match api.replace(&name, &PostParams::default(), &h).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(MachineError::kube(&object, e)),
            }
            event(
                ctx,
                machine,
                EventType::Normal,
                "Released",
                &format!("released BareMetalHost {name}"),
            )
            .await;
            Ok(Progress::Released)
        }
    }
}

/// Remove the node the host became from the tenant cluster (best effort), so the next Machine
/// on this host registers a fresh one.
async fn delete_node(ctx: &MachineContext, machine: &Machine, host_name: &str) {
    let endpoint = match machine.spec.join.as_ref().map(|j| j.target()) {
        Some(Ok(JoinTarget::VCluster(v))) => v.endpoint.clone(),
        Some(Ok(JoinTarget::Kubeadm(k))) => k.endpoint.clone(),
        _ => return,
    };
    let Some(tenant) = ctx.tenant(&endpoint) else {
        return;
    };
    let nodes: Api<Node> = Api::all(tenant.client.clone());
    match nodes.get_opt(host_name).await {
        Ok(Some(node)) if node.labels().get(HOST_LABEL).map(String::as_str) == Some(host_name) => {
            if let Err(e) = nodes.delete(host_name, &DeleteParams::default()).await {
                tracing::debug!(%e, node = host_name, "cannot delete the tenant node");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(%e, node = host_name, "cannot read the tenant node"),
    }
}

/// The Machine is being deleted: release its host, delete its user-data Secret, then drop the
/// finalizer.
pub async fn finalize(machine: &Machine, ctx: &MachineContext) -> Result<Action, MachineError> {
    if !machine.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let ns = machine.namespace().unwrap_or_default();
    let machines: Api<Machine> = Api::namespaced(ctx.client.clone(), &ns);
    let mut st = machine.status.clone().unwrap_or_default();
    st.phase = MachinePhase::Deleting;
    match release_all(ctx, machine).await? {
        Progress::Waiting(message) => {
            st.message = message;
            status::save(&machines, machine, &st).await?;
            return Ok(Action::await_change());
        }
        Progress::Released => {}
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret = user_data_secret_name(machine);
    match secrets.delete(&secret, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(MachineError::kube(format!("Secret {ns}/{secret}"), e)),
    }
    let finalizers: Vec<String> = machine
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    match machines
        .patch(
            &machine.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(MachineError::kube(status::key(machine), e)),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vmetal_api::{BareMetalHostStatus, Image};

    fn host(state: ProvisioningState) -> BareMetalHost {
        let mut h = BareMetalHost::new("h", Default::default());
        let mut st = BareMetalHostStatus::default();
        st.provisioning.state = state;
        h.status = Some(st);
        h
    }

    #[test]
    fn release_order_clear_then_wait_then_unclaim() {
        let mut h = host(ProvisioningState::Provisioned);
        h.spec.image = Some(Image {
            url: "http://x/img".into(),
            ..Default::default()
        });
        h.spec.online = true;
        h.status.as_mut().unwrap().provisioning.image = h.spec.image.clone();
        assert_eq!(next_step(&h), Next::ClearSpec);
        h.spec.image = None;
        h.spec.online = false;
        assert!(matches!(next_step(&h), Next::Wait(m) if m.contains("provisioned")));
        let mut d = host(ProvisioningState::Deprovisioning);
        d.status.as_mut().unwrap().error_message = "agent wipe failed".into();
        assert!(matches!(next_step(&d), Next::Wait(m) if m.contains("agent wipe failed")));
        assert_eq!(
            next_step(&host(ProvisioningState::Available)),
            Next::Unclaim
        );
        // A host still provisioning when the Machine goes away is cleared first, then waited on.
        let mut p = host(ProvisioningState::Provisioning);
        p.spec.online = true;
        assert_eq!(next_step(&p), Next::ClearSpec);
        p.spec.online = false;
        assert!(matches!(next_step(&p), Next::Wait(_)));
    }
}
