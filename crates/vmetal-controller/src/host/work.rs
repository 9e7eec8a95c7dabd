//! One reconcile's working set: the host as read, the status being built, the events to
//! publish, and the helpers every state handler uses (BMC access, errors, transitions, saving).

use std::sync::Arc;
use std::time::Duration;

use crate::events::{EventKind as EventType, HostEvent};
use k8s_openapi::api::core::v1::{ObjectReference, Secret, SecretReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use vmetal_api::bmc_address::BmcAddress;
use vmetal_api::host::{BareMetalHostStatus, CredentialsStatus, OperationMetric};
use vmetal_api::{BareMetalHost, ErrorType, OperationalStatus, ProvisioningState};
use vmetal_bmc::{Bmc, BmcError, Credentials};

use crate::backoff;
use crate::context::Context;
use crate::error::ControllerError;

/// The host's BMC driver, or why there is none.
#[derive(Clone)]
pub enum Access {
    /// Usable driver.
    Ready(Arc<dyn Bmc>),
    /// The host has no BMC details.
    Unmanaged,
    /// A configuration problem with a message for the user; `retry` = worth polling soon.
    Broken {
        /// What is wrong.
        message: String,
        /// Whether to poll (a Secret that may appear) rather than wait for an edit.
        retry: bool,
    },
}

/// Which operation an `operationHistory` entry is for.
#[derive(Debug, Clone, Copy)]
pub enum Operation {
    /// Registration.
    Register,
    /// Inspection.
    Inspect,
    /// Provisioning.
    Provision,
    /// Deprovisioning.
    Deprovision,
}

/// The working set.
pub struct Work {
    /// The host as read at the start of the reconcile.
    pub host: Arc<BareMetalHost>,
    /// Shared context.
    pub ctx: Arc<Context>,
    /// The status being built; saved at the end when it differs.
    pub status: BareMetalHostStatus,
    original: BareMetalHostStatus,
    events: Vec<HostEvent>,
    // Transitions and finished operations, counted in metrics only once the status is saved.
    unsaved: Vec<Unsaved>,
}

/// A metric waiting for the status write that makes it true.
enum Unsaved {
    Transition(ProvisioningState, ProvisioningState),
    Operation(&'static str, Duration),
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

impl Work {
    /// Start working on `host`.
    pub fn new(host: Arc<BareMetalHost>, ctx: Arc<Context>) -> Self {
        let status = host.status.clone().unwrap_or_default();
        Self {
            original: status.clone(),
            status,
            host,
            ctx,
            events: Vec::new(),
            unsaved: Vec::new(),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.host.namespace().unwrap_or_default(),
            self.host.name_any()
        )
    }

    /// The host's namespace.
    pub fn namespace(&self) -> String {
        self.host.namespace().unwrap_or_default()
    }

    /// The hosts API in the host's namespace.
    pub fn api(&self) -> Api<BareMetalHost> {
        Api::namespaced(self.ctx.client.clone(), &self.namespace())
    }

    /// The Secrets API in the host's namespace.
    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.ctx.client.clone(), &self.namespace())
    }

    /// Current provisioning state (of the working status).
    pub fn state(&self) -> ProvisioningState {
        self.status.provisioning.state
    }

    /// Move to `to`, with an event.
    pub fn transition(&mut self, to: ProvisioningState) {
        let from = self.status.provisioning.state;
        if from == to {
            return;
        }
        tracing::info!(host = %self.key(), from = %from, to = %to, "state change");
        self.status.provisioning.state = to;
        self.unsaved.push(Unsaved::Transition(from, to));
        self.event(
            EventType::Normal,
            "StateChanged",
            &format!("{} -> {}", display_state(from), display_state(to)),
        );
    }

    /// Queue a Kubernetes Event about the host.
    pub fn event(&mut self, kind: EventType, reason: &str, note: &str) {
        self.events.push(HostEvent {
            kind,
            reason: reason.into(),
            message: note.into(),
        });
    }

    /// Record a failure: errorType, message, count, event; returns the back-off action.
    pub fn fail(&mut self, error_type: ErrorType, message: String) -> Action {
        let repeated =
            self.status.error_type == Some(error_type) && self.status.error_message == message;
        self.status.error_type = Some(error_type);
        self.status.error_message = message.clone();
        self.status.operational_status = OperationalStatus::Error;
        self.status.error_count = self.status.error_count.saturating_add(1);
        if !repeated {
            tracing::warn!(host = %self.key(), error_type = %error_type, %message, "host error");
            self.event(EventType::Warning, error_reason(error_type), &message);
        }
        let cfg = &self.ctx.config;
        Action::requeue(backoff::delay(
            self.status.error_count,
            cfg.backoff_base,
            cfg.backoff_cap,
        ))
    }

    /// Clear any recorded error (an operation succeeded).
    pub fn clear_error(&mut self) {
        if self.status.error_type.is_some() || !self.status.error_message.is_empty() {
            self.event(
                EventType::Normal,
                "ErrorCleared",
                "the previous error is resolved",
            );
        }
        self.status.error_type = None;
        self.status.error_message.clear();
        self.status.error_count = 0;
        if matches!(
            self.status.operational_status,
            OperationalStatus::Error | OperationalStatus::Unknown | OperationalStatus::Delayed
        ) {
            self.status.operational_status = OperationalStatus::Ok;
        }
    }

    /// Mark the start of an operation in `operationHistory`.
    pub fn history_start(&mut self, op: Operation) {
        let metric = self.metric(op);
        *metric = OperationMetric {
            start: Some(now()),
            end: None,
        };
    }

    /// Mark the end of an operation.
    pub fn history_end(&mut self, op: Operation) {
        let metric = self.metric(op);
        if metric.start.is_none() {
            metric.start = Some(now());
        }
        metric.end = Some(now());
        let took = match (&metric.start, &metric.end) {
            (Some(start), Some(end)) => Duration::try_from(end.0.duration_since(start.0)).ok(),
            _ => None,
        };
        let name = match op {
            Operation::Register => "register",
            Operation::Inspect => "inspect",
            Operation::Provision => "provision",
            Operation::Deprovision => "deprovision",
        };
        self.unsaved
            .push(Unsaved::Operation(name, took.unwrap_or_default()));
    }

    fn metric(&mut self, op: Operation) -> &mut OperationMetric {
        let h = self
            .status
            .operation_history
            .get_or_insert_with(Default::default);
        match op {
            Operation::Register => &mut h.register,
            Operation::Inspect => &mut h.inspect,
            Operation::Provision => &mut h.provision,
            Operation::Deprovision => &mut h.deprovision,
        }
    }

    /// Poll soon while an operation runs.
    pub fn poll_operation(&self) -> Action {
        Action::requeue(backoff::jittered(self.ctx.config.operation_poll, 0.2))
    }

    /// Poll slowly in a stable state.
    pub fn poll_steady(&self) -> Action {
        Action::requeue(backoff::jittered(self.ctx.config.steady_poll, 0.2))
    }

    /// The BMC driver for this host, or why there is none.
    pub async fn bmc(&mut self) -> Result<Access, ControllerError> {
        let Some(bmc) = self.host.spec.bmc.clone() else {
            return Ok(Access::Unmanaged);
        };
        if bmc.address.trim().is_empty() && bmc.credentials_name.trim().is_empty() {
            return Ok(Access::Unmanaged);
        }
        let address = match BmcAddress::parse(&bmc.address) {
            Ok(a) => a,
            Err(e) => {
                return Ok(Access::Broken {
                    message: format!("spec.bmc.address is invalid: {e}"),
                    retry: false,
                });
            }
        };
        if bmc.credentials_name.trim().is_empty() {
            return Ok(Access::Broken {
                message: "spec.bmc.credentialsName is empty; name a Secret with keys username and password".into(),
                retry: false,
            });
        }
        let secret_name = bmc.credentials_name.clone();
        let secret = match self.secrets().get_opt(&secret_name).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Ok(Access::Broken {
                    message: format!(
                        "BMC credentials Secret {}/{secret_name} not found; create it with keys username and password",
                        self.namespace()
                    ),
                    retry: true,
                });
            }
            Err(e) => {
                return Err(ControllerError::kube(
                    format!("Secret {}/{secret_name}", self.namespace()),
                    e,
                ));
            }
        };
        let field = |k: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(k))
                .map(|b| {
                    String::from_utf8_lossy(&b.0)
                        .trim_end_matches(['\n', '\r'])
                        .to_string()
                })
                .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(k)).cloned())
                .filter(|v| !v.is_empty())
        };
        let (Some(username), Some(password)) = (field("username"), field("password")) else {
            return Ok(Access::Broken {
                message: format!(
                    "BMC credentials Secret {}/{secret_name} must have non-empty keys username and password",
                    self.namespace()
                ),
                retry: false,
            });
        };
        let version = secret.resource_version().unwrap_or_default();
        let reference = CredentialsStatus {
            credentials: Some(SecretReference {
                name: Some(secret_name),
                namespace: Some(self.namespace()),
            }),
            credentials_version: version.clone(),
        };
        self.status.tried_credentials = Some(reference);
        let uid = self.host.uid().unwrap_or_default();
        match self.ctx.bmcs.get(
            &uid,
            &address,
            Credentials::new(username, password),
            &version,
            bmc.disable_certificate_verification,
        ) {
            Ok(driver) => Ok(Access::Ready(driver)),
            Err(e) => Ok(Access::Broken {
                message: e.to_string(),
                retry: e.is_transient(),
            }),
        }
    }

    /// Record that the tried credentials worked.
    pub fn credentials_good(&mut self) {
        self.status.good_credentials = self.status.tried_credentials.clone();
    }

    /// Whether the credentials Secret changed since it last worked.
    pub fn credentials_changed(&self) -> bool {
        match (
            &self.status.good_credentials,
            &self.status.tried_credentials,
        ) {
            (Some(g), Some(t)) => g != t,
            (None, _) => true,
            _ => false,
        }
    }

    /// Add or remove a finalizer / annotation with a merge patch on metadata.
    pub async fn patch_metadata(&self, patch: serde_json::Value) -> Result<(), ControllerError> {
        let written = self
            .api()
            .patch(
                &self.host.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
            .map_err(|e| ControllerError::kube(self.key(), e))?;
        self.ctx.wrote(&self.key(), &written);
        Ok(())
    }

    /// Save the status when it changed (one atomic replace of `/status`), then publish events.
    pub async fn save(&mut self) -> Result<(), ControllerError> {
        self.status.conditions = super::conditions::derive(
            &self.status,
            self.host.is_claimed(),
            self.host.metadata.generation,
            now(),
        );
        if self.status != self.original {
            self.status.last_updated = Some(now());
            let value =
                serde_json::to_value(&self.status).map_err(|e| ControllerError::Encode {
                    object: self.key(),
                    reason: e.to_string(),
                })?;
            let patch: json_patch::Patch = serde_json::from_value(json!([
                { "op": "add", "path": "/status", "value": value }
            ]))
            .map_err(|e| ControllerError::Encode {
                object: self.key(),
                reason: e.to_string(),
            })?;
            let written = self
                .api()
                .patch_status(
                    &self.host.name_any(),
                    &PatchParams::default(),
                    &Patch::<()>::Json(patch),
                )
                .await
                .map_err(|e| ControllerError::kube(self.key(), e))?;
            self.ctx.wrote(&self.key(), &written);
            self.original = self.status.clone();
        }
        for saved in std::mem::take(&mut self.unsaved) {
            match saved {
                Unsaved::Transition(from, to) => {
                    self.ctx.metrics.transition(from.as_str(), to.as_str())
                }
                Unsaved::Operation(name, took) => self.ctx.metrics.operation(name, took),
            }
        }
        if !self.events.is_empty() {
            let reference: ObjectReference = self.host.object_ref(&());
            for ev in std::mem::take(&mut self.events) {
                crate::events::record(&self.ctx.client, &reference, &ev).await;
            }
        }
        Ok(())
    }
}

/// Map a BMC failure to a message that names the operation.
pub fn bmc_message(operation: &str, e: &BmcError) -> String {
    format!("{operation} failed: {e}")
}

fn display_state(s: ProvisioningState) -> &'static str {
    if s == ProvisioningState::None {
        "(none)"
    } else {
        s.as_str()
    }
}

fn error_reason(e: ErrorType) -> &'static str {
    match e {
        ErrorType::ProvisionedRegistrationError | ErrorType::RegistrationError => {
            "RegistrationError"
        }
        ErrorType::InspectionError => "InspectionError",
        ErrorType::PreparationError => "PreparationError",
        ErrorType::ProvisioningError => "ProvisioningError",
        ErrorType::PowerManagementError => "PowerManagementError",
        ErrorType::ServicingError => "ServicingError",
        ErrorType::DetachError => "DetachError",
    }
}

/// Short delay used when a write should be followed by another reconcile at once.
pub fn soon() -> Action {
    Action::requeue(Duration::from_millis(10))
}
