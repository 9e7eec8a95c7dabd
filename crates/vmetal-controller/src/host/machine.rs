//! The host state machine: one `match` from provisioning state to handler, as in Metal3's
//! `host_state_machine.go`. Every handler is short, its transitions explicit, and safe to run
//! again after a crash at any point.
//!
//! Before the per-state handler: paused, status restore, hardware-details annotation, finalizer,
//! deletion and detachment, in Metal3's order.

use std::sync::Arc;
use std::time::Duration;

use crate::events::EventKind as EventType;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::json;
use vmetal_api::host::annotations;
use vmetal_api::states::AutomatedCleaningMode;
use vmetal_api::{
    BareMetalHost, BareMetalHostStatus, ErrorType, HardwareDetails, OperationalStatus,
    ProvisioningState,
};
use vmetal_bmc::{Bmc, BootDevice, BootModeOverride, BootOverride, PowerAction};
use vmetal_provisioner::cycle::{self, CycleState, Operation as CycleOp};

use super::work::{Access, Operation, Work, bmc_message, soon};
use crate::context::Context;
use crate::error::ControllerError;

type Outcome = Result<Action, ControllerError>;

/// Reconcile one host.
pub async fn reconcile(host: Arc<BareMetalHost>, ctx: Arc<Context>) -> Outcome {
    if host.is_paused() {
        return Ok(Action::await_change());
    }
    let key = format!(
        "{}/{}",
        host.metadata.namespace.as_deref().unwrap_or_default(),
        host.metadata.name.as_deref().unwrap_or_default()
    );
    if ctx.is_stale(&key, host.as_ref()) {
        // Our own last write has not reached the cache yet; its watch event wakes us again.
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    let mut w = Work::new(host, ctx);
    let action = step(&mut w).await;
    // Save what was learned even when the step failed part-way.
    w.save().await?;
    let action = action?;
    let key = w.key();
    if w.state().is_busy() || w.state() == ProvisioningState::PoweringOffBeforeDelete {
        // Still holding or waiting for a slot.
    } else {
        w.ctx.release_slot(&key);
    }
    Ok(action)
}

async fn step(w: &mut Work) -> Outcome {
    // Status restore (pivot / clusterctl move): an empty status comes back from the annotation.
    if w.host.status.is_none()
        && let Some(saved) = w.host.annotations().get(annotations::STATUS)
    {
        if let Ok(status) = serde_json::from_str::<BareMetalHostStatus>(saved) {
            w.status = status;
        }
        w.patch_metadata(json!({"metadata": {"annotations": {annotations::STATUS: null}}}))
            .await?;
        return Ok(soon());
    }
    // Hardware details supplied from outside, consumed only when none exist yet.
    if w.status.hardware.is_none()
        && let Some(raw) = w.host.annotations().get(annotations::HARDWARE_DETAILS)
    {
        match serde_json::from_str::<HardwareDetails>(raw) {
            Ok(mut hw) => {
                hw.refresh_gpu_summary_if_empty();
                w.status.hardware = Some(hw);
            }
            Err(e) => {
                w.event(
                    EventType::Warning,
                    "InvalidHardwareDetails",
                    &format!(
                        "annotation {} is not valid hardware details JSON: {e}",
                        annotations::HARDWARE_DETAILS
                    ),
                );
            }
        }
    }
    let deleting = w.host.metadata.deletion_timestamp.is_some();
    if !deleting
        && !w
            .host
            .finalizers()
            .iter()
            .any(|f| f == annotations::FINALIZER)
    {
        let mut finalizers = w.host.finalizers().to_vec();
        finalizers.push(annotations::FINALIZER.to_string());
        w.patch_metadata(json!({"metadata": {"finalizers": finalizers}}))
            .await?;
    }
    if deleting {
        return delete(w).await;
    }
    if w.host.annotations().contains_key(annotations::DETACHED) {
        w.status.operational_status = OperationalStatus::Detached;
        return Ok(Action::requeue(Duration::from_secs(600)));
    }
    if w.status.operational_status == OperationalStatus::Detached {
        // Re-attached: resume where it was.
        w.status.operational_status = OperationalStatus::Ok;
    }
    match w.state() {
        ProvisioningState::None => handle_none(w).await,
        ProvisioningState::Unmanaged => handle_unmanaged(w).await,
        ProvisioningState::Registering => handle_registering(w).await,
        ProvisioningState::Inspecting => handle_inspecting(w).await,
        ProvisioningState::MatchProfile | ProvisioningState::Preparing => {
            w.transition(ProvisioningState::Available);
            Ok(soon())
        }
        ProvisioningState::Available | ProvisioningState::Ready => handle_available(w).await,
        ProvisioningState::Provisioning => handle_provisioning(w).await,
        ProvisioningState::Provisioned => handle_provisioned(w).await,
        ProvisioningState::ExternallyProvisioned => handle_externally_provisioned(w).await,
        ProvisioningState::Deprovisioning => handle_deprovisioning(w).await,
        ProvisioningState::PoweringOffBeforeDelete => handle_powering_off_before_delete(w).await,
        ProvisioningState::Deleting => handle_deleting(w).await,
    }
}

/// Extension used above: keep an annotation-supplied GPU summary, derive it otherwise.
trait GpuSummaryExt {
    fn refresh_gpu_summary_if_empty(&mut self);
}

impl GpuSummaryExt for HardwareDetails {
    fn refresh_gpu_summary_if_empty(&mut self) {
        if self.gpus.is_empty() {
            self.refresh_gpu_summary();
        }
    }
}

// ---- BMC access shared by handlers ------------------------------------------------------------

/// The driver, or the action to take when there is none (error recorded for the right type).
async fn driver(
    w: &mut Work,
    error_type: ErrorType,
) -> Result<Result<Arc<dyn Bmc>, Action>, ControllerError> {
    match w.bmc().await? {
        Access::Ready(d) => Ok(Ok(d)),
        Access::Unmanaged => {
            w.transition(ProvisioningState::Unmanaged);
            w.status.operational_status = OperationalStatus::Discovered;
            Ok(Err(soon()))
        }
        Access::Broken { message, retry } => {
            let action = w.fail(error_type, message);
            // A missing Secret may appear any moment (and its creation wakes us anyway).
            Ok(Err(if retry {
                Action::requeue(Duration::from_secs(10))
            } else {
                action
            }))
        }
    }
}

/// Ensure the power state matches `on`; `Ok(true)` when it already did.
async fn enforce_power(
    w: &mut Work,
    bmc: &dyn Bmc,
    on: bool,
) -> Result<bool, vmetal_bmc::BmcError> {
    let state = bmc.power_state().await?;
    w.status.powered_on = state.is_on();
    if state.is_on() == on {
        return Ok(true);
    }
    let action = if on {
        PowerAction::On
    } else {
        PowerAction::ForceOff
    };
    bmc.power(action).await?;
    w.status.powered_on = on;
    w.event(
        EventType::Normal,
        if on { "PowerOn" } else { "PowerOff" },
        if on { "powered on" } else { "powered off" },
    );
    Ok(false)
}

// ---- states ------------------------------------------------------------------------------------

async fn handle_none(w: &mut Work) -> Outcome {
    match w.bmc().await? {
        Access::Unmanaged => {
            w.transition(ProvisioningState::Unmanaged);
            w.status.operational_status = OperationalStatus::Discovered;
            Ok(Action::await_change())
        }
        _ => {
            w.transition(ProvisioningState::Registering);
            w.history_start(Operation::Register);
            Ok(soon())
        }
    }
}

async fn handle_unmanaged(w: &mut Work) -> Outcome {
    match w.bmc().await? {
        Access::Unmanaged => Ok(Action::requeue(Duration::from_secs(600))),
        _ => {
            w.transition(ProvisioningState::Registering);
            w.history_start(Operation::Register);
            Ok(soon())
        }
    }
}

async fn handle_registering(w: &mut Work) -> Outcome {
    let bmc = match driver(w, ErrorType::RegistrationError).await? {
        Ok(b) => b,
        Err(action) => return Ok(action),
    };
    if let Err(e) = bmc.validate().await {
        return Ok(w.fail(
            ErrorType::RegistrationError,
            bmc_message("BMC validation", &e),
        ));
    }
    w.credentials_good();
    w.clear_error();
    w.history_end(Operation::Register);
    w.event(EventType::Normal, "Registered", "BMC credentials validated");
    if w.host.spec.externally_provisioned {
        w.transition(ProvisioningState::ExternallyProvisioned);
    } else if w.host.inspection_disabled() || w.status.hardware.is_some() {
        w.transition(ProvisioningState::Available);
    } else {
        w.transition(ProvisioningState::Inspecting);
        w.history_start(Operation::Inspect);
    }
    Ok(soon())
}

async fn handle_inspecting(w: &mut Work) -> Outcome {
    match run_cycle(w, CycleOp::Inspect, ErrorType::InspectionError, false).await? {
        CycleProgress::Waiting(action) => Ok(action),
        CycleProgress::Done(result) => {
            let Some(mut hw) = result.inventory else {
                return Ok(w.fail(
                    ErrorType::InspectionError,
                    "the agent finished inspection without an inventory".into(),
                ));
            };
            hw.refresh_gpu_summary_if_empty();
            w.status.hardware = Some(hw);
            finish_cycle(w, true).await?;
            w.clear_error();
            w.history_end(Operation::Inspect);
            w.event(
                EventType::Normal,
                "InspectionComplete",
                "hardware inventory recorded",
            );
            if w.host.annotations().contains_key(annotations::INSPECT) {
                w.patch_metadata(
                    json!({"metadata": {"annotations": {annotations::INSPECT: null}}}),
                )
                .await?;
            }
            w.transition(ProvisioningState::Available);
            Ok(soon())
        }
    }
}

async fn handle_available(w: &mut Work) -> Outcome {
    let spec = &w.host.spec;
    if spec.externally_provisioned {
        w.transition(ProvisioningState::ExternallyProvisioned);
        return Ok(soon());
    }
    let reinspect = w
        .host
        .annotations()
        .get(annotations::INSPECT)
        .is_some_and(|v| v != "disabled");
    if reinspect {
        w.transition(ProvisioningState::Inspecting);
        w.history_start(Operation::Inspect);
        return Ok(soon());
    }
    let wants_image =
        spec.image.as_ref().is_some_and(|i| !i.url.is_empty()) || spec.custom_deploy.is_some();
    if wants_image && spec.online {
        // A new image resets the failure count (Metal3's lastAttemptedImage rule).
        if w.status.last_attempted_image.as_ref() != spec.image.as_ref() {
            w.status.provisioning_fail_count = Some(0);
        }
        w.transition(ProvisioningState::Provisioning);
        w.history_start(Operation::Provision);
        return Ok(soon());
    }
    steady_power(w, ErrorType::PowerManagementError).await
}

async fn handle_provisioning(w: &mut Work) -> Outcome {
    let image = w.host.spec.image.clone().filter(|i| !i.url.is_empty());
    let Some(image) = image else {
        // The image was removed while provisioning: undo.
        abandon_cycle(w).await?;
        w.transition(ProvisioningState::Deprovisioning);
        w.history_start(Operation::Deprovision);
        return Ok(soon());
    };
    if let Some(format) = image.format
        && !matches!(
            format,
            vmetal_api::states::ImageFormat::Raw | vmetal_api::states::ImageFormat::Qcow2
        )
    {
        return Ok(w.fail(
            ErrorType::ProvisioningError,
            format!("image format {format:?} is not supported; use raw or qcow2"),
        ));
    }
    if image.checksum.is_empty() && !image.checksum_optional() {
        return Ok(w.fail(
            ErrorType::ProvisioningError,
            "spec.image.checksum is empty; set the image's sha256/sha512 checksum (or a URL of a checksum file)".into(),
        ));
    }
    // A different image than the one that failed is tried at once.
    let image_changed = w.status.last_attempted_image.as_ref() != Some(&image);
    if image_changed {
        w.status.provisioning_fail_count = Some(0);
    }
    w.status.last_attempted_image = Some(image.clone());
    match run_cycle(
        w,
        CycleOp::Deploy,
        ErrorType::ProvisioningError,
        image_changed,
    )
    .await?
    {
        CycleProgress::Waiting(action) => Ok(action),
        CycleProgress::Done(_) => {
            // Boot the installed OS: disk, persistently, then power on / reset.
            let bmc = match driver(w, ErrorType::ProvisioningError).await? {
                Ok(b) => b,
                Err(a) => return Ok(a),
            };
            let mode = boot_mode(&w.host);
            let boot = BootOverride {
                device: BootDevice::Disk,
                persistent: true,
                mode,
            };
            if let Err(e) = bmc.set_boot_device(boot).await {
                return Ok(w.fail(
                    ErrorType::ProvisioningError,
                    bmc_message("setting boot device to disk", &e),
                ));
            }
            if let Err(e) = bmc.power(PowerAction::ForceRestart).await {
                return Ok(w.fail(
                    ErrorType::ProvisioningError,
                    bmc_message("rebooting into the installed OS", &e),
                ));
            }
            w.status.powered_on = true;
            finish_cycle(w, false).await?;
            w.status.provisioning.image = Some(image);
            w.status.provisioning.root_device_hints = w.host.spec.root_device_hints.clone();
            w.status.provisioning.boot_mode = w.host.spec.boot_mode;
            w.status.provisioning.custom_deploy = w.host.spec.custom_deploy.clone();
            w.clear_error();
            w.history_end(Operation::Provision);
            w.event(
                EventType::Normal,
                "ProvisioningComplete",
                "image written; booting from disk",
            );
            w.transition(ProvisioningState::Provisioned);
            Ok(soon())
        }
    }
}

async fn handle_provisioned(w: &mut Work) -> Outcome {
    let wanted = w
        .host
        .spec
        .image
        .as_ref()
        .map(|i| i.url.as_str())
        .unwrap_or("");
    let installed = w
        .status
        .provisioning
        .image
        .as_ref()
        .map(|i| i.url.as_str())
        .unwrap_or("");
    if wanted.is_empty() || wanted != installed {
        w.transition(ProvisioningState::Deprovisioning);
        w.history_start(Operation::Deprovision);
        return Ok(soon());
    }
    steady_power(w, ErrorType::PowerManagementError).await
}

async fn handle_externally_provisioned(w: &mut Work) -> Outcome {
    if !w.host.spec.externally_provisioned {
        w.status.provisioning.image = w.host.spec.image.clone();
        w.transition(ProvisioningState::Provisioned);
        return Ok(soon());
    }
    steady_power(w, ErrorType::PowerManagementError).await
}

async fn handle_deprovisioning(w: &mut Work) -> Outcome {
    let cleaning =
        w.host.spec.automated_cleaning_mode.unwrap_or_default() != AutomatedCleaningMode::Disabled;
    if cleaning {
        match run_cycle(w, CycleOp::Wipe, ErrorType::ProvisioningError, false).await? {
            CycleProgress::Waiting(action) => return Ok(action),
            CycleProgress::Done(_) => {
                w.event(EventType::Normal, "CleaningComplete", "disk metadata wiped");
            }
        }
    }
    let bmc = match driver(w, ErrorType::ProvisioningError).await? {
        Ok(b) => b,
        Err(a) => return Ok(a),
    };
    if let Err(e) = bmc.power(PowerAction::ForceOff).await {
        return Ok(w.fail(
            ErrorType::PowerManagementError,
            bmc_message("powering off after deprovisioning", &e),
        ));
    }
    w.status.powered_on = false;
    finish_cycle(w, false).await?;
    w.status.provisioning.image = None;
    w.status.provisioning.root_device_hints = None;
    w.status.provisioning.custom_deploy = None;
    w.clear_error();
    w.history_end(Operation::Deprovision);
    if w.host.metadata.deletion_timestamp.is_some() {
        w.transition(ProvisioningState::PoweringOffBeforeDelete);
    } else {
        w.transition(ProvisioningState::Available);
    }
    Ok(soon())
}

async fn handle_powering_off_before_delete(w: &mut Work) -> Outcome {
    match w.bmc().await? {
        Access::Ready(bmc) => match bmc.power(PowerAction::ForceOff).await {
            Ok(()) => w.status.powered_on = false,
            Err(e) if w.status.error_count < 3 => {
                return Ok(w.fail(
                    ErrorType::PowerManagementError,
                    bmc_message("powering off before delete", &e),
                ));
            }
            // Metal3's rule: after three failed attempts, delete anyway.
            Err(_) => w.event(
                EventType::Warning,
                "DeleteWithoutPowerOff",
                "the host could not be powered off; deleting anyway",
            ),
        },
        // No usable BMC: nothing to power off.
        Access::Unmanaged | Access::Broken { .. } => {}
    }
    w.transition(ProvisioningState::Deleting);
    Ok(soon())
}

async fn handle_deleting(w: &mut Work) -> Outcome {
    abandon_cycle(w).await?;
    w.ctx.bmcs.forget(&w.host.uid().unwrap_or_default());
    let finalizers: Vec<String> = w
        .host
        .finalizers()
        .iter()
        .filter(|f| *f != annotations::FINALIZER)
        .cloned()
        .collect();
    w.patch_metadata(json!({"metadata": {"finalizers": finalizers}}))
        .await?;
    Ok(Action::await_change())
}

/// Deletion requested: route through deprovisioning / power-off as Metal3 does.
async fn delete(w: &mut Work) -> Outcome {
    use ProvisioningState as S;
    if w.host.annotations().contains_key(annotations::DETACHED) {
        w.transition(S::Deleting);
        return handle_deleting(w).await;
    }
    match w.state() {
        S::None | S::Unmanaged | S::Registering => {
            w.transition(S::Deleting);
            handle_deleting(w).await
        }
        S::Provisioning | S::Provisioned => {
            abandon_cycle(w).await?;
            w.transition(S::Deprovisioning);
            w.history_start(Operation::Deprovision);
            Ok(soon())
        }
        S::Deprovisioning => handle_deprovisioning(w).await,
        S::Deleting => handle_deleting(w).await,
        S::PoweringOffBeforeDelete => handle_powering_off_before_delete(w).await,
        _ => {
            abandon_cycle(w).await?;
            w.transition(S::PoweringOffBeforeDelete);
            Ok(soon())
        }
    }
}

// ---- power in stable states --------------------------------------------------------------------

async fn steady_power(w: &mut Work, error_type: ErrorType) -> Outcome {
    let bmc = match driver(w, error_type).await? {
        Ok(b) => b,
        Err(a) => return Ok(a),
    };
    if w.credentials_changed() {
        // New credentials: prove them before using them (re-registration, no state change).
        if let Err(e) = bmc.validate().await {
            return Ok(w.fail(
                ErrorType::RegistrationError,
                bmc_message("BMC validation with new credentials", &e),
            ));
        }
        w.credentials_good();
    }
    let reboot_keys: Vec<String> = w
        .host
        .annotations()
        .keys()
        .filter(|k| {
            *k == annotations::REBOOT || k.starts_with(&format!("{}/", annotations::REBOOT))
        })
        .cloned()
        .collect();
    let want_on = w.host.spec.online && reboot_keys.is_empty();
    match enforce_power(w, bmc.as_ref(), want_on).await {
        Ok(_) => {
            if !want_on && reboot_keys.iter().any(|k| k == annotations::REBOOT) {
                // The one-shot reboot request is done once the host is off.
                w.patch_metadata(json!({"metadata": {"annotations": {annotations::REBOOT: null}}}))
                    .await?;
                return Ok(soon());
            }
            w.clear_error();
            Ok(w.poll_steady())
        }
        Err(e) => Ok(w.fail(error_type, bmc_message("power management", &e))),
    }
}

fn boot_mode(host: &BareMetalHost) -> Option<BootModeOverride> {
    Some(if host.spec.boot_mode.unwrap_or_default().is_uefi() {
        BootModeOverride::Uefi
    } else {
        BootModeOverride::Legacy
    })
}

// ---- agent cycles ------------------------------------------------------------------------------

enum CycleProgress {
    Waiting(Action),
    Done(Box<vmetal_api::agent::CommandResult>),
}

/// Boot-requested marker on the cycle Secret: the host was (re)booted into the agent for it.
const BOOTED: &str = "vmetal.io/booted";

/// Drive one agent cycle: take a slot, create the cycle Secret, PXE-boot the host, and wait
/// for the agent's result. Failures become `error_type` and start a fresh cycle after back-off.
async fn run_cycle(
    w: &mut Work,
    op: CycleOp,
    error_type: ErrorType,
    retry_now: bool,
) -> Result<CycleProgress, ControllerError> {
    let key = w.key();
    if !w.ctx.try_acquire_slot(&key) {
        if w.status.operational_status != OperationalStatus::Delayed {
            w.event(
                EventType::Normal,
                "Delayed",
                "waiting for a free provisioning slot",
            );
        }
        w.status.operational_status = OperationalStatus::Delayed;
        return Ok(CycleProgress::Waiting(Action::requeue(
            crate::backoff::jittered(Duration::from_secs(1), 1.0),
        )));
    }
    if w.status.operational_status == OperationalStatus::Delayed {
        w.status.operational_status = OperationalStatus::Ok;
    }
    let name = cycle::secret_name(&w.host.name_any());
    let existing = w
        .secrets()
        .get_opt(&name)
        .await
        .map_err(|e| ControllerError::kube(format!("Secret {}/{name}", w.namespace()), e))?;
    let parsed = existing.as_ref().map(CycleState::from_secret);
    let current = match (parsed, existing) {
        (Some(Ok(s)), Some(secret)) if s.operation == op => Ok((s, secret)),
        (_, other) => Err(other),
    };
    let (state, secret) = match current {
        Ok(found) => found,
        Err(existing) => {
            // After a failed cycle, the next one waits out the back-off (unless the user
            // changed what is asked for, which `retry_now` says).
            if !retry_now
                && w.status.error_type == Some(error_type)
                && let Some(wait) = backoff_remaining(w)
            {
                return Ok(CycleProgress::Waiting(Action::requeue(wait)));
            }
            // No cycle (or one for another operation): start a new one.
            if let Some(old) = existing {
                delete_secret(w, &old).await?;
            }
            let secret = cycle::new_cycle_secret(&w.host, op);
            w.secrets()
                .create(&PostParams::default(), &secret)
                .await
                .map_err(|e| {
                    ControllerError::kube(format!("Secret {}/{name}", w.namespace()), e)
                })?;
            w.event(
                EventType::Normal,
                cycle_started_reason(op),
                "booting the agent",
            );
            return Ok(CycleProgress::Waiting(soon()));
        }
    };
    if let Some(result) = state.result_of(op).cloned() {
        if let Some(error) = &result.error {
            let message = format!("agent {} failed: {error}", op.as_str());
            let action = w.fail(error_type, message);
            if op == CycleOp::Deploy {
                let count = w.status.provisioning_fail_count.unwrap_or(0) + 1;
                w.status.provisioning_fail_count = Some(count);
            }
            // A fresh cycle after the back-off; the host is powered off meanwhile.
            delete_secret(w, &secret).await?;
            if let Access::Ready(bmc) = w.bmc().await?
                && bmc.power(PowerAction::ForceOff).await.is_ok()
            {
                w.status.powered_on = false;
            }
            return Ok(CycleProgress::Waiting(action));
        }
        return Ok(CycleProgress::Done(Box::new(result)));
    }
    let booted = secret.annotations().get(BOOTED).map(String::as_str) == Some("true");
    if !booted {
        let bmc = match driver(w, error_type).await? {
            Ok(b) => b,
            Err(a) => return Ok(CycleProgress::Waiting(a)),
        };
        if state.token_sha256.is_some() {
            // A controller died between booting the agent and marking it booted, and the agent
            // already took this cycle's token. The reboot below kills that agent, so revoke its
            // token first: the agent that boots next can look up again.
            w.secrets()
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {
                        vmetal_provisioner::cycle::KEY_TOKEN_SHA256: null,
                        vmetal_provisioner::cycle::KEY_REPORT: null,
                    }})),
                )
                .await
                .map_err(|e| {
                    ControllerError::kube(format!("Secret {}/{name}", w.namespace()), e)
                })?;
        }
        let boot = BootOverride::once(BootDevice::Pxe, boot_mode(&w.host));
        if let Err(e) = bmc.set_boot_device(boot).await {
            return Ok(CycleProgress::Waiting(
                w.fail(error_type, bmc_message("setting PXE boot", &e)),
            ));
        }
        let on = match bmc.power_state().await {
            Ok(s) => s.is_on(),
            Err(e) => {
                return Ok(CycleProgress::Waiting(
                    w.fail(error_type, bmc_message("reading power state", &e)),
                ));
            }
        };
        let action = if on {
            PowerAction::ForceRestart
        } else {
            PowerAction::On
        };
        if let Err(e) = bmc.power(action).await {
            return Ok(CycleProgress::Waiting(
                w.fail(error_type, bmc_message("booting the agent", &e)),
            ));
        }
        w.status.powered_on = true;
        // A merge patch, not a resourceVersion-checked replace: the agent API may already have
        // written the token, and a conflict here would make us reboot the host a second time,
        // killing the agent that holds the cycle's only token.
        w.secrets()
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {BOOTED: "true"}}})),
            )
            .await
            .map_err(|e| ControllerError::kube(format!("Secret {}/{name}", w.namespace()), e))?;
        return Ok(CycleProgress::Waiting(w.poll_operation()));
    }
    // Booted, no result yet: check for a stalled agent.
    let started = secret.metadata.creation_timestamp.as_ref().map(|t| t.0);
    if let Some(started) = started {
        let elapsed = k8s_openapi::jiff::Timestamp::now().duration_since(started);
        if elapsed.as_secs() as u64 > w.ctx.config.operation_timeout.as_secs() {
            let message = format!(
                "the agent did not finish {} within {:?}; check the host's console and the provisioning network (DHCP/PXE)",
                op.as_str(),
                w.ctx.config.operation_timeout
            );
            delete_secret(w, &secret).await?;
            return Ok(CycleProgress::Waiting(w.fail(error_type, message)));
        }
    }
    Ok(CycleProgress::Waiting(w.poll_operation()))
}

/// Time left before a failed operation may be retried: the back-off for the current error
/// count (without jitter, so repeated reconciles agree), counted from the last status write.
fn backoff_remaining(w: &Work) -> Option<Duration> {
    let cfg = &w.ctx.config;
    let full = crate::backoff::full_delay(w.status.error_count, cfg.backoff_base, cfg.backoff_cap);
    let since = w.status.last_updated.as_ref()?.0;
    let elapsed = k8s_openapi::jiff::Timestamp::now().duration_since(since);
    let elapsed = Duration::try_from(elapsed).unwrap_or_default();
    let wait = full.mul_f64(0.75).saturating_sub(elapsed);
    (!wait.is_zero()).then_some(wait)
}

fn cycle_started_reason(op: CycleOp) -> &'static str {
    match op {
        CycleOp::Inspect => "InspectionStarted",
        CycleOp::Deploy => "ProvisioningStarted",
        CycleOp::Wipe => "CleaningStarted",
    }
}

/// End a successful cycle: remove its Secret, power off when asked, give back the slot.
async fn finish_cycle(w: &mut Work, power_off: bool) -> Result<(), ControllerError> {
    if power_off && let Access::Ready(bmc) = w.bmc().await? {
        match bmc.power(PowerAction::ForceOff).await {
            Ok(()) => w.status.powered_on = false,
            Err(e) => {
                tracing::warn!(host = %w.key(), %e, "power off after the agent cycle failed; the steady-state poll retries")
            }
        }
    }
    abandon_cycle(w).await?;
    w.ctx.release_slot(&w.key());
    Ok(())
}

/// Remove the cycle Secret, if any.
async fn abandon_cycle(w: &mut Work) -> Result<(), ControllerError> {
    let name = cycle::secret_name(&w.host.name_any());
    match w.secrets().delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(ControllerError::kube(
            format!("Secret {}/{name}", w.namespace()),
            e,
        )),
    }
}

async fn delete_secret(w: &Work, secret: &Secret) -> Result<(), ControllerError> {
    let name = secret.name_any();
    match w.secrets().delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(ControllerError::kube(
            format!("Secret {}/{name}", w.namespace()),
            e,
        )),
    }
}
