//! The per-cycle Secret shared by the controller and the agent API: its name, keys and parsing.
//! One definition so both sides agree on what a provisioning cycle looks like on the wire.
//!
//! A cycle is one inspection, deployment or cleaning of one host. The controller creates the
//! Secret `vmetal-agent-<host>` with `cycle` and `operation`; the agent API adds
//! `token-sha256` at lookup and `report` on heartbeats; the controller deletes it at the end.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use vmetal_api::BareMetalHost;
use vmetal_api::ProvisioningState;
use vmetal_api::agent::{CommandResult, Heartbeat};

use crate::error::ProvisionerError;

/// Prefix of every cycle Secret's name.
pub const SECRET_PREFIX: &str = "vmetal-agent-";
/// Label on every cycle Secret; its value is the BareMetalHost's name.
pub const CYCLE_LABEL: &str = "vmetal.io/agent-cycle";
/// Secret key: the cycle id.
pub const KEY_CYCLE: &str = "cycle";
/// Secret key: the operation (`inspect`, `deploy`, `wipe`).
pub const KEY_OPERATION: &str = "operation";
/// Secret key: hex SHA-256 of the agent's token; absent until lookup.
pub const KEY_TOKEN_SHA256: &str = "token-sha256";
/// Secret key: JSON of the last stored [`Heartbeat`].
pub const KEY_REPORT: &str = "report";

/// Name of the cycle Secret of a host.
pub fn secret_name(host: &str) -> String {
    format!("{SECRET_PREFIX}{host}")
}

/// What a cycle is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Collect the inventory (state `inspecting`).
    Inspect,
    /// Write the image and config drive (state `provisioning`).
    Deploy,
    /// Wipe disk metadata (state `deprovisioning`).
    Wipe,
}

impl Operation {
    /// The wire spelling (`inspect`, `deploy`, `wipe`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inspect => "inspect",
            Self::Deploy => "deploy",
            Self::Wipe => "wipe",
        }
    }

    /// Parses the wire spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "inspect" => Some(Self::Inspect),
            "deploy" => Some(Self::Deploy),
            "wipe" => Some(Self::Wipe),
            _ => None,
        }
    }

    /// The provisioning state a host is in while this operation runs; in any other state the
    /// agent is told to finish.
    pub fn host_state(self) -> ProvisioningState {
        match self {
            Self::Inspect => ProvisioningState::Inspecting,
            Self::Deploy => ProvisioningState::Provisioning,
            Self::Wipe => ProvisioningState::Deprovisioning,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The agent command id of a cycle's operation: `<cycle>/<op>`.
pub fn command_id(cycle: &str, op: Operation) -> String {
    format!("{cycle}/{}", op.as_str())
}

/// The parsed contents of a cycle Secret.
#[derive(Debug, Clone, PartialEq)]
pub struct CycleState {
    /// Cycle id.
    pub cycle: String,
    /// What the cycle is for.
    pub operation: Operation,
    /// Hex SHA-256 of the issued token; `None` until the agent looked up.
    pub token_sha256: Option<String>,
    /// The last stored heartbeat.
    pub report: Option<Heartbeat>,
}

impl CycleState {
    /// Reads a cycle Secret; `cycle` and `operation` are required, the rest optional.
    pub fn from_secret(secret: &Secret) -> Result<CycleState, ProvisionerError> {
        let namespace = secret.namespace().unwrap_or_default();
        let name = secret.name_any();
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let text = |key: &str| -> Result<Option<String>, ProvisionerError> {
            match data.get(key) {
                None => Ok(None),
                Some(v) => String::from_utf8(v.0.clone()).map(Some).map_err(|_| {
                    ProvisionerError::SecretValueInvalid {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        key: key.to_owned(),
                        reason: "not UTF-8".into(),
                    }
                }),
            }
        };
        let missing = |key: &str| ProvisionerError::SecretKeyMissing {
            namespace: namespace.clone(),
            name: name.clone(),
            key: key.to_owned(),
            fallback: None,
        };
        let invalid = |key: &str, reason: String| ProvisionerError::SecretValueInvalid {
            namespace: namespace.clone(),
            name: name.clone(),
            key: key.to_owned(),
            reason,
        };

        let cycle = text(KEY_CYCLE)?.ok_or_else(|| missing(KEY_CYCLE))?;
        if cycle.is_empty() {
            return Err(invalid(KEY_CYCLE, "empty".into()));
        }
        let op_text = text(KEY_OPERATION)?.ok_or_else(|| missing(KEY_OPERATION))?;
        let operation = Operation::parse(&op_text).ok_or_else(|| {
            invalid(
                KEY_OPERATION,
                format!("{op_text:?} is not one of inspect, deploy, wipe"),
            )
        })?;
        let token_sha256 = text(KEY_TOKEN_SHA256)?.filter(|t| !t.is_empty());
        let report = match data.get(KEY_REPORT) {
            None => None,
            Some(raw) => Some(
                serde_json::from_slice::<Heartbeat>(&raw.0)
                    .map_err(|e| invalid(KEY_REPORT, e.to_string()))?,
            ),
        };
        Ok(CycleState {
            cycle,
            operation,
            token_sha256,
            report,
        })
    }

    /// The command id of this cycle's operation.
    pub fn command_id(&self) -> String {
        command_id(&self.cycle, self.operation)
    }

    /// The reported result of `op` in this cycle, if the agent finished it.
    pub fn result_of(&self, op: Operation) -> Option<&CommandResult> {
        let id = command_id(&self.cycle, op);
        self.report
            .as_ref()
            .filter(|r| r.cycle == self.cycle)?
            .results
            .iter()
            .find(|r| r.id == id)
    }
}

/// A fresh cycle Secret for `host` running `op`, with a random cycle id, owned by the host.
///
/// The owner reference is left out when the host has no uid yet (it was never stored).
pub fn new_cycle_secret(host: &BareMetalHost, op: Operation) -> Secret {
    let name = host.name_any();
    let data = BTreeMap::from([
        (
            KEY_CYCLE.to_owned(),
            ByteString(new_cycle_id().into_bytes()),
        ),
        (
            KEY_OPERATION.to_owned(),
            ByteString(op.as_str().as_bytes().to_vec()),
        ),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&name)),
            namespace: host.namespace(),
            labels: Some(BTreeMap::from([(CYCLE_LABEL.to_owned(), name)])),
            owner_references: host.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// A random cycle id: 16 lower-case hex digits.
pub fn new_cycle_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Cycle ids need uniqueness, not secrecy: the clock will do if the RNG is unavailable.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = (nanos as u64).to_be_bytes();
    }
    hex(&bytes)
}

/// Lower-case hex of some bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vmetal_api::agent::HostIdentity;

    fn host() -> BareMetalHost {
        let mut h = BareMetalHost::new("node-1", Default::default());
        h.metadata.namespace = Some("rack".into());
        h.metadata.uid = Some("1234-uid".into());
        h
    }

    #[test]
    fn names_and_ids() {
        assert_eq!(secret_name("node-1"), "vmetal-agent-node-1");
        assert_eq!(command_id("abc", Operation::Deploy), "abc/deploy");
        for op in [Operation::Inspect, Operation::Deploy, Operation::Wipe] {
            assert_eq!(Operation::parse(op.as_str()), Some(op));
        }
        assert_eq!(Operation::parse("Deploy"), None);
    }

    #[test]
    fn new_secret_is_owned_labelled_and_parses_back() {
        let s = new_cycle_secret(&host(), Operation::Inspect);
        assert_eq!(s.metadata.name.as_deref(), Some("vmetal-agent-node-1"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("rack"));
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert_eq!(
            s.labels().get(CYCLE_LABEL).map(String::as_str),
            Some("node-1")
        );
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.uid, "1234-uid");
        assert_eq!(owner.kind, "BareMetalHost");
        assert_eq!(owner.controller, Some(true));

        let state = CycleState::from_secret(&s).unwrap();
        assert_eq!(state.cycle.len(), 16);
        assert_eq!(state.operation, Operation::Inspect);
        assert_eq!(state.token_sha256, None);
        assert_eq!(state.report, None);

        let other = CycleState::from_secret(&new_cycle_secret(&host(), Operation::Inspect));
        assert_ne!(other.unwrap().cycle, state.cycle, "cycle ids are random");
    }

    #[test]
    fn missing_and_bad_keys_name_the_secret() {
        let mut s = new_cycle_secret(&host(), Operation::Wipe);
        let data = s.data.as_mut().unwrap();
        data.insert(KEY_OPERATION.into(), ByteString(b"reboot".to_vec()));
        let err = CycleState::from_secret(&s).unwrap_err().to_string();
        assert!(err.contains("rack/vmetal-agent-node-1"), "{err}");
        assert!(err.contains("reboot"), "{err}");

        s.data.as_mut().unwrap().remove(KEY_CYCLE);
        let err = CycleState::from_secret(&s).unwrap_err();
        assert!(
            matches!(err, ProvisionerError::SecretKeyMissing { ref key, .. } if key == "cycle")
        );
    }

    #[test]
    fn result_of_finds_this_cycles_command_only() {
        let mut s = new_cycle_secret(&host(), Operation::Deploy);
        let cycle = CycleState::from_secret(&s).unwrap().cycle;
        let result = |id: &str| CommandResult {
            id: id.into(),
            error: None,
            error_kind: None,
            inventory: None,
            root_device: Some("/dev/vda".into()),
            written_sha256: None,
        };
        let report = Heartbeat {
            host: HostIdentity {
                namespace: "rack".into(),
                name: "node-1".into(),
            },
            cycle: cycle.clone(),
            running: None,
            results: vec![result("old/deploy"), result(&format!("{cycle}/deploy"))],
        };
        s.data.as_mut().unwrap().insert(
            KEY_REPORT.into(),
            ByteString(serde_json::to_vec(&report).unwrap()),
        );
        s.data
            .as_mut()
            .unwrap()
            .insert(KEY_TOKEN_SHA256.into(), ByteString(b"ab".to_vec()));
        let state = CycleState::from_secret(&s).unwrap();
        assert_eq!(state.token_sha256.as_deref(), Some("ab"));
        assert_eq!(
            state.result_of(Operation::Deploy).unwrap().id,
            format!("{cycle}/deploy")
        );
        assert!(state.result_of(Operation::Inspect).is_none());
    }
}
