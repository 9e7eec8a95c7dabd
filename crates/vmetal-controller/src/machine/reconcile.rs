//! One Machine reconcile, top to bottom: finalizer, spec checks, the Secrets it needs, the
//! claim, user data, the host's desired state, then phase and conditions from what the host
//! and the tenant cluster report.
//!
//! Every step is idempotent; the claimed host is found again by its label after a crash.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Node, Secret, SecretReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use vmetal_api::host::annotations::MACHINE_LABEL;
use vmetal_api::machine::{HostRef, JoinTarget, conditions};
use vmetal_api::selector::validate_selector;
use vmetal_api::states::PowerState;
use vmetal_api::{
    BareMetalHost, ErrorType, Machine, MachinePhase, MachineStatus, ProvisioningState,
};

use super::claim::{self, Unschedulable};
use super::release::{self, Progress};
use super::status::{self, Truth, set_condition};
use super::userdata::{self, JoinStep, UserDataInput};
use super::{
    DEFAULT_TOKEN_KEY, DEFAULT_USER_DATA_KEY, FINALIZER, HOST_LABEL, MachineContext, MachineError,
};

type Outcome = Result<Action, MachineError>;

/// Reconcile one Machine.
pub async fn reconcile(machine: Arc<Machine>, ctx: Arc<MachineContext>) -> Outcome {
    if machine.metadata.deletion_timestamp.is_some() {
        return release::finalize(&machine, &ctx).await;
    }
    if !machine.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = machine.finalizers().to_vec();
        finalizers.push(FINALIZER.into());
        machines(&ctx, &machine)
            .patch(
                &machine.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
            )
            .await
            .map_err(|e| MachineError::kube(status::key(&machine), e))?;
    }
    let mut st = machine.status.clone().unwrap_or_default();
    let action = step(&machine, &ctx, &mut st).await;
    status::save(&machines(&ctx, &machine), &machine, &st).await?;
    action
}

fn machines(ctx: &MachineContext, machine: &Machine) -> Api<Machine> {
    Api::namespaced(ctx.client.clone(), &machine.namespace().unwrap_or_default())
}

fn hosts_api(ctx: &MachineContext, machine: &Machine) -> Api<BareMetalHost> {
    Api::namespaced(ctx.client.clone(), &machine.namespace().unwrap_or_default())
}

fn secrets_api(ctx: &MachineContext, machine: &Machine) -> Api<Secret> {
    Api::namespaced(ctx.client.clone(), &machine.namespace().unwrap_or_default())
}

/// Publish an Event about `machine` (best effort).
pub(super) async fn event(
    ctx: &MachineContext,
    machine: &Machine,
    kind: EventType,
    reason: &str,
    note: &str,
) {
    // core/v1 Events, like the host controller's: what `kubectl describe machine` shows.
    let ev = crate::events::HostEvent {
        kind: match kind {
            EventType::Normal => crate::events::EventKind::Normal,
            EventType::Warning => crate::events::EventKind::Warning,
        },
        reason: reason.into(),
        message: note.into(),
    };
    crate::events::record(&ctx.client, &machine.object_ref(&()), &ev).await;
}

fn pending(st: &mut MachineStatus, generation: Option<i64>, reason: &str, message: String) {
    st.phase = MachinePhase::Pending;
    st.host_ref = None;
    st.addresses.clear();
    st.node_name.clear();
    set_condition(
        &mut st.conditions,
        conditions::SCHEDULED,
        Truth::False,
        reason,
        &message,
        generation,
    );
    status::clear_condition(&mut st.conditions, conditions::PROVISIONED);
    status::clear_condition(&mut st.conditions, conditions::JOINED);
    st.message = message;
}

async fn step(machine: &Machine, ctx: &MachineContext, st: &mut MachineStatus) -> Outcome {
    let generation = machine.metadata.generation;
    if st.phase == MachinePhase::Failed {
        if st.host_ref.is_some() {
            // Give the host back before anything else; the failure message stays.
            if let Progress::Released = release::release_all(ctx, machine).await? {
                st.host_ref = None;
                st.addresses.clear();
            }
            return Ok(Action::await_change());
        }
        if st.observed_generation == generation {
            return Ok(Action::await_change());
        }
        // The spec changed since the failure: start over.
        *st = MachineStatus::default();
    }
    st.observed_generation = generation;

    if let Err(message) = validate(machine) {
        pending(st, generation, "InvalidSpec", message);
        return Ok(Action::await_change());
    }
    let inputs = match resolve_inputs(ctx, machine).await? {
        Ok(i) => i,
        Err((reason, message)) => {
            if st.host_ref.is_none() {
                pending(st, generation, reason, message);
            } else {
                st.message = message;
            }
            return Ok(Action::await_change());
        }
    };

    let host = match own_host(ctx, machine).await? {
        Some(h) => h,
        None => {
            if tokio::time::timeout(Duration::from_secs(10), ctx.hosts.wait_until_ready())
                .await
                .is_err()
            {
                return Ok(Action::requeue(Duration::from_millis(500)));
            }
            let all = ctx.hosts.state();
            let candidates = match claim::candidates(&all, machine) {
                Ok(c) => c,
                Err(why) => {
                    pending(st, generation, why.reason(), why.message());
                    return Ok(Action::await_change());
                }
            };
            match claim::claim(
                &hosts_api(ctx, machine),
                &candidates,
                machine,
                &ctx.reservations,
            )
            .await
            .map_err(|e| MachineError::kube(format!("claim for {}", status::key(machine)), e))?
            {
                Some(h) => {
                    event(
                        ctx,
                        machine,
                        EventType::Normal,
                        "Claimed",
                        &format!("claimed BareMetalHost {}", h.name_any()),
                    )
                    .await;
                    h
                }
                None => {
                    let matching = all
                        .iter()
                        .filter(|h| h.namespace() == machine.namespace())
                        .filter(|h| claim::fits(h, machine))
                        .count();
                    let why = Unschedulable::AllMatchingHostsBusy { matching };
                    pending(st, generation, why.reason(), why.message());
                    return Ok(Action::await_change());
                }
            }
        }
    };
    let host_name = host.name_any();
    st.host_ref = Some(HostRef {
        name: host_name.clone(),
        namespace: host.namespace().unwrap_or_default(),
    });
    set_condition(
        &mut st.conditions,
        conditions::SCHEDULED,
        Truth::True,
        "HostClaimed",
        &format!("claimed BareMetalHost {host_name}"),
        generation,
    );
    st.addresses = status::addresses(&host);

    let state = host.provisioning_state();
    let host_error = host.status.as_ref().and_then(|s| s.error_type);
    if state == ProvisioningState::Provisioning && host_error == Some(ErrorType::ProvisioningError)
    {
        let detail = host
            .status
            .as_ref()
            .map(|s| s.error_message.clone())
            .unwrap_or_default();
        let message = format!(
            "BareMetalHost {host_name} failed to provision: {detail}; the host is being \
             released and this Machine does not retry until its spec changes"
        );
        st.phase = MachinePhase::Failed;
        set_condition(
            &mut st.conditions,
            conditions::PROVISIONED,
            Truth::False,
            "ProvisioningFailed",
            &message,
            generation,
        );
        st.message = message.clone();
        event(
            ctx,
            machine,
            EventType::Warning,
            "ProvisioningFailed",
            &message,
        )
        .await;
        release::release_all(ctx, machine).await?;
        return Ok(Action::await_change());
    }

    let secret_name = match ensure_user_data(ctx, machine, &host_name, &inputs).await? {
        Ok(name) => name,
        Err(message) => {
            st.message = message.clone();
            set_condition(
                &mut st.conditions,
                conditions::PROVISIONED,
                Truth::False,
                "InvalidUserData",
                &message,
                generation,
            );
            return Ok(Action::await_change());
        }
    };
    st.user_data_secret_name = secret_name.clone();
    ensure_host_spec(ctx, machine, &host, &secret_name).await?;

    let installed = state == ProvisioningState::Provisioned
        && host
            .status
            .as_ref()
            .and_then(|s| s.provisioning.image.as_ref())
            .is_some_and(|i| i.url == machine.spec.image.url);
    if !installed {
        st.phase = MachinePhase::Provisioning;
        let shown = if state == ProvisioningState::None {
            "registering".to_string()
        } else {
            state.to_string()
        };
        let message = format!("BareMetalHost {host_name} is {shown}");
        set_condition(
            &mut st.conditions,
            conditions::PROVISIONED,
            Truth::False,
            "Provisioning",
            &message,
            generation,
        );
        st.message = message;
        return Ok(Action::await_change());
    }
    set_condition(
        &mut st.conditions,
        conditions::PROVISIONED,
        Truth::True,
        "ImageInstalled",
        &format!("{} installed on {host_name}", machine.spec.image.url),
        generation,
    );
    if machine.spec.power == PowerState::Off {
        st.phase = MachinePhase::Provisioned;
        st.node_name.clear();
        let message = format!("powered off (spec.power: Off); {host_name} stays claimed");
        set_condition(
            &mut st.conditions,
            conditions::JOINED,
            Truth::False,
            "PoweredOff",
            &message,
            generation,
        );
        st.message = message;
        return Ok(Action::await_change());
    }
    let target = machine
        .spec
        .join
        .as_ref()
        .map(|j| j.target())
        .transpose()
        .ok()
        .flatten()
        .unwrap_or(JoinTarget::None);
    let endpoint = match target {
        JoinTarget::None => {
            st.phase = MachinePhase::Running;
            set_condition(
                &mut st.conditions,
                conditions::JOINED,
                Truth::False,
                "NoJoinRequested",
                "spec.join is not set; the server runs the image without joining a cluster",
                generation,
            );
            st.message = format!("running on {host_name}");
            return Ok(Action::await_change());
        }
        JoinTarget::VCluster(v) => v.endpoint.clone(),
        JoinTarget::Kubeadm(k) => k.endpoint.clone(),
    };
    let Some(tenant) = ctx.tenant(&endpoint) else {
        st.phase = MachinePhase::Provisioned;
        let message = format!(
            "the image is installed; vmetal has no access to the cluster at {endpoint}, so it \
             cannot see whether the node joined"
        );
        set_condition(
            &mut st.conditions,
            conditions::JOINED,
            Truth::Unknown,
            "ClusterNotWatched",
            &message,
            generation,
        );
        st.message = message;
        return Ok(Action::await_change());
    };
    let nodes: Api<Node> = Api::all(tenant.client.clone());
    let node = match nodes.get_opt(&host_name).await {
        Ok(n) => n.filter(|n| n.labels().get(HOST_LABEL) == Some(&host_name)),
        Err(e) => {
            tracing::debug!(%e, "cannot read the tenant node");
            None
        }
    };
    let ready = node.as_ref().is_some_and(node_ready);
    if ready {
        if st.phase != MachinePhase::Running {
            event(
                ctx,
                machine,
                EventType::Normal,
                "Joined",
                &format!("node {host_name} is Ready in {endpoint}"),
            )
            .await;
        }
        st.phase = MachinePhase::Running;
        st.node_name = host_name.clone();
        set_condition(
            &mut st.conditions,
            conditions::JOINED,
            Truth::True,
            "NodeReady",
            &format!("node {host_name} is Ready"),
            generation,
        );
        st.message = format!("node {host_name} joined {endpoint}");
    } else {
        st.phase = MachinePhase::Provisioned;
        st.node_name.clear();
        let message = if node.is_some() {
            format!("node {host_name} registered but is not Ready yet")
        } else {
            format!("waiting for node {host_name} to join {endpoint}")
        };
        set_condition(
            &mut st.conditions,
            conditions::JOINED,
            Truth::False,
            "WaitingForNode",
            &message,
            generation,
        );
        st.message = message;
    }
    Ok(Action::await_change())
}

/// Whether the Node reports `Ready=True`.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Spec checks the schema cannot make, as a message naming the field.
fn validate(machine: &Machine) -> Result<(), String> {
    let spec = &machine.spec;
    spec.validate().map_err(|e| e.to_string())?;
    if let Some(sel) = &spec.host_selector {
        validate_selector(sel).map_err(|e| format!("spec.hostSelector is invalid: {e}"))?;
    }
    if let Some(req) = &spec.requirements {
        req.validate()
            .map_err(|e| format!("spec.requirements is invalid: {e}"))?;
    }
    Ok(())
}

/// The inputs user data needs, read from Secrets.
struct Inputs {
    join: JoinStep,
    extra: Option<String>,
}

/// A value from a Secret's `data` (or `stringData`, as stored by simple API servers).
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .cloned()
        })
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Read one key of a Secret, or the (reason, message) a Machine waits with.
async fn read_key(
    ctx: &MachineContext,
    machine: &Machine,
    name: &str,
    key: &str,
    what: &str,
    reason_prefix: &str,
) -> Result<Result<String, (&'static str, String)>, MachineError> {
    let ns = machine.namespace().unwrap_or_default();
    let secret = secrets_api(ctx, machine)
        .get_opt(name)
        .await
        .map_err(|e| MachineError::kube(format!("Secret {ns}/{name}"), e))?;
    let reason = |missing: bool| -> &'static str {
        match (reason_prefix, missing) {
            ("JoinToken", true) => "JoinTokenSecretMissing",
            ("JoinToken", false) => "JoinTokenKeyMissing",
            (_, true) => "UserDataSecretMissing",
            (_, false) => "UserDataKeyMissing",
        }
    };
    let Some(secret) = secret else {
        return Ok(Err((
            reason(true),
            format!("{what} Secret {ns}/{name} not found; create it with key {key}"),
        )));
    };
    match secret_value(&secret, key) {
        Some(v) => Ok(Ok(v)),
        None => Ok(Err((
            reason(false),
            format!("{what} Secret {ns}/{name} has no non-empty key {key}"),
        ))),
    }
}

async fn resolve_inputs(
    ctx: &MachineContext,
    machine: &Machine,
) -> Result<Result<Inputs, (&'static str, String)>, MachineError> {
    let target = machine
        .spec
        .join
        .as_ref()
        .map(|j| j.target())
        .transpose()
        .ok()
        .flatten()
        .unwrap_or(JoinTarget::None);
    let join = match target {
        JoinTarget::None => JoinStep::None,
        JoinTarget::VCluster(v) => {
            let r = &v.token_secret_ref;
            match read_key(
                ctx,
                machine,
                &r.name,
                r.key_or(DEFAULT_TOKEN_KEY),
                "join token",
                "JoinToken",
            )
            .await?
            {
                Ok(token) => JoinStep::VCluster {
                    endpoint: v.endpoint.trim().to_string(),
                    token,
                },
                Err(e) => return Ok(Err(e)),
            }
        }
        JoinTarget::Kubeadm(k) => {
            let r = &k.token_secret_ref;
            match read_key(
                ctx,
                machine,
                &r.name,
                r.key_or(DEFAULT_TOKEN_KEY),
                "join token",
                "JoinToken",
            )
            .await?
            {
                Ok(token) => JoinStep::Kubeadm {
                    endpoint: k.endpoint.trim().to_string(),
                    token,
                    ca_cert_hash: k.ca_cert_hash.clone(),
                },
                Err(e) => return Ok(Err(e)),
            }
        }
    };
    let extra = match &machine.spec.user_data {
        None => None,
        Some(r) => match read_key(
            ctx,
            machine,
            &r.name,
            r.key_or(DEFAULT_USER_DATA_KEY),
            "user data",
            "UserData",
        )
        .await?
        {
            Ok(v) => Some(v),
            Err(e) => return Ok(Err(e)),
        },
    };
    Ok(Ok(Inputs { join, extra }))
}

/// The host this Machine holds, read fresh from the API server (not the cache), so a claim
/// whose status write was lost is found again rather than a second host claimed.
pub(super) async fn own_hosts(
    ctx: &MachineContext,
    machine: &Machine,
) -> Result<Vec<BareMetalHost>, MachineError> {
    let list = hosts_api(ctx, machine)
        .list(&ListParams::default().labels(&format!("{MACHINE_LABEL}={}", machine.name_any())))
        .await
        .map_err(|e| MachineError::kube(format!("hosts of {}", status::key(machine)), e))?;
    Ok(list
        .items
        .into_iter()
        .filter(|h| claim::is_consumer(h, machine))
        .collect())
}

async fn own_host(
    ctx: &MachineContext,
    machine: &Machine,
) -> Result<Option<BareMetalHost>, MachineError> {
    let mut hosts = own_hosts(ctx, machine).await?;
    hosts.sort_by_key(|h| h.name_any());
    Ok(hosts.into_iter().next())
}

/// Name of the user-data Secret of a Machine.
pub fn user_data_secret_name(machine: &Machine) -> String {
    format!("{}-user-data", machine.name_any())
}

/// Render the user data into the Machine's Secret (create, or replace when it changed).
/// `Ok(Err(message))` when the inputs cannot be rendered.
async fn ensure_user_data(
    ctx: &MachineContext,
    machine: &Machine,
    host_name: &str,
    inputs: &Inputs,
) -> Result<Result<String, String>, MachineError> {
    let rendered = match userdata::render(&UserDataInput {
        hostname: host_name,
        ssh_authorized_keys: &machine.spec.ssh_authorized_keys,
        extra: inputs.extra.as_deref(),
        join: inputs.join.clone(),
    }) {
        Ok(r) => r,
        Err(e) => return Ok(Err(format!("cannot render user data: {e}"))),
    };
    let name = user_data_secret_name(machine);
    let api = secrets_api(ctx, machine);
    let object = format!("Secret {}/{name}", machine.namespace().unwrap_or_default());
    let existing = api
        .get_opt(&name)
        .await
        .map_err(|e| MachineError::kube(&object, e))?;
    if let Some(s) = &existing
        && secret_value(s, "userData").as_deref() == Some(rendered.trim())
    {
        return Ok(Ok(name));
    }
    let owner = OwnerReference {
        api_version: Machine::api_version(&()).into_owned(),
        kind: Machine::kind(&()).into_owned(),
        name: machine.name_any(),
        uid: machine.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut secret = existing.clone().unwrap_or_default();
    secret.metadata.name = Some(name.clone());
    secret.metadata.owner_references = Some(vec![owner]);
    let labels = secret.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(MACHINE_LABEL.into(), machine.name_any());
    labels.insert(HOST_LABEL.into(), host_name.into());
    secret.type_ = Some("Opaque".into());
    secret.string_data = None;
    secret.data = Some(BTreeMap::from([(
        "userData".to_string(),
        ByteString(rendered.into_bytes()),
    )]));
    let result = if existing.is_some() {
        api.replace(&name, &PostParams::default(), &secret).await
    } else {
        api.create(&PostParams::default(), &secret).await
    };
    result.map_err(|e| MachineError::kube(&object, e))?;
    Ok(Ok(name))
}

/// Point the host at the image and user data and set its power; one merge patch when anything
/// differs. Only ever called on a host whose consumerRef is this Machine.
async fn ensure_host_spec(
    ctx: &MachineContext,
    machine: &Machine,
    host: &BareMetalHost,
    secret_name: &str,
) -> Result<(), MachineError> {
    let online = machine.spec.power == PowerState::On;
    let user_data = SecretReference {
        name: Some(secret_name.into()),
        namespace: machine.namespace(),
    };
    let spec = &host.spec;
    if spec.image.as_ref() == Some(&machine.spec.image)
        && spec.user_data.as_ref() == Some(&user_data)
        && spec.online == online
    {
        return Ok(());
    }
    // A JSON patch replaces the image whole (a merge patch would keep stale fields).
    let ops = json!([
        {"op": "add", "path": "/spec/image", "value": machine.spec.image},
        {"op": "add", "path": "/spec/userData", "value": user_data},
        {"op": "add", "path": "/spec/online", "value": online},
    ]);
    let patch: json_patch::Patch =
        serde_json::from_value(ops).map_err(|e| MachineError::Encode {
            object: format!("BareMetalHost {}", host.name_any()),
            reason: e.to_string(),
        })?;
    hosts_api(ctx, machine)
        .patch(
            &host.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
        .map_err(|e| MachineError::kube(format!("BareMetalHost {}", host.name_any()), e))?;
    Ok(())
}
