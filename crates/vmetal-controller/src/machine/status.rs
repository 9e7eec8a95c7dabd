//! Building a Machine's status: conditions that keep their transition time while unchanged,
//! addresses from the host, and the one status write per reconcile.
//!
//! Messages here are shown to users; none of them may carry a token.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use vmetal_api::machine::{MachineAddress, MachineAddressType};
use vmetal_api::{BareMetalHost, Machine, MachinePhase, MachineStatus};

use super::MachineError;

/// `True` / `False` / `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    /// The condition holds.
    True,
    /// It does not.
    False,
    /// Nobody can tell.
    Unknown,
}

impl Truth {
    fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// Set condition `type_`, keeping `lastTransitionTime` when its status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: Truth,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let existing = conditions.iter_mut().find(|c| c.type_ == type_);
    match existing {
        Some(c) => {
            if c.status != status.as_str() {
                c.last_transition_time = now;
                c.status = status.as_str().into();
            }
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.as_str().into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: now,
        }),
    }
}

/// Remove condition `type_`.
pub fn clear_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// The status of condition `type_`, if set.
pub fn condition_status<'a>(status: &'a MachineStatus, type_: &str) -> Option<&'a str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// The host's addresses: its name, then every NIC IP it reported.
pub fn addresses(host: &BareMetalHost) -> Vec<MachineAddress> {
    let mut out = vec![MachineAddress {
        address_type: MachineAddressType::Hostname,
        address: host.name_any(),
    }];
    if let Some(hw) = host.hardware() {
        for nic in &hw.nics {
            if !nic.ip.is_empty() {
                out.push(MachineAddress {
                    address_type: MachineAddressType::InternalIP,
                    address: nic.ip.clone(),
                });
            }
        }
    }
    out
}

/// Write `status` when it differs from what the Machine has (conditions keep their transition
/// time unless their status flips, so an unchanged reconcile writes nothing).
pub async fn save(
    api: &Api<Machine>,
    machine: &Machine,
    status: &MachineStatus,
) -> Result<(), MachineError> {
    if machine.status.as_ref() == Some(status) {
        return Ok(());
    }
    let value = serde_json::to_value(status).map_err(|e| MachineError::Encode {
        object: key(machine),
        reason: e.to_string(),
    })?;
    let patch: json_patch::Patch =
        serde_json::from_value(json!([{ "op": "add", "path": "/status", "value": value }]))
            .map_err(|e| MachineError::Encode {
                object: key(machine),
                reason: e.to_string(),
            })?;
    match api
        .patch_status(
            &machine.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Gone already (the finalizer came off): nothing to report on.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(MachineError::kube(format!("Machine {}", key(machine)), e)),
    }
}

/// `namespace/name`.
pub fn key(machine: &Machine) -> String {
    format!(
        "{}/{}",
        machine.namespace().unwrap_or_default(),
        machine.name_any()
    )
}

/// Phase as a word for messages.
pub fn phase_word(p: MachinePhase) -> &'static str {
    match p {
        MachinePhase::Pending => "Pending",
        MachinePhase::Provisioning => "Provisioning",
        MachinePhase::Provisioned => "Provisioned",
        MachinePhase::Running => "Running",
        MachinePhase::Deleting => "Deleting",
        MachinePhase::Failed => "Failed",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_changes_only_when_status_flips() {
        let mut c = Vec::new();
        set_condition(&mut c, "Scheduled", Truth::False, "A", "a", Some(1));
        let t0 = c[0].last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        set_condition(&mut c, "Scheduled", Truth::False, "B", "b", Some(1));
        assert_eq!(c[0].last_transition_time, t0);
        assert_eq!(c[0].reason, "B");
        set_condition(&mut c, "Scheduled", Truth::True, "C", "c", Some(2));
        assert_ne!(c[0].last_transition_time, t0);
        assert_eq!(c.len(), 1);
        clear_condition(&mut c, "Scheduled");
        assert!(c.is_empty());
    }
}
