//! The `Machine` custom resource (`vmetal.io/v1alpha1`): a claim on one server for one node.
//!
//! A Machine names what it needs (selector, hardware, image, user data, how to join a cluster);
//! the machine controller picks a matching `BareMetalHost`, claims it and reports back in status.
//! It mirrors vCluster Platform's NodeClaim so a node provider can drive it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::host::Image;
use crate::requirements::HardwareRequirements;
use crate::states::PowerState;

/// What a node needs from a server.
#[allow(clippy::duplicated_attributes)] // kube-derive takes one `printcolumn(...)` per column
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "vmetal.io",
    version = "v1alpha1",
    kind = "Machine",
    plural = "machines",
    singular = "machine",
    namespaced,
    status = "MachineStatus",
    shortname = "vmach",
    category = "vmetal",
    doc = "Machine claims one BareMetalHost, installs an image on it and joins it to a cluster.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Host",
        type_ = "string",
        json_path = ".status.hostRef.name",
        description = "The BareMetalHost this Machine claimed"
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".status.nodeName",
        description = "Name of the Kubernetes node it became"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        description = "Why the Machine is in its phase",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "Time since creation"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MachineSpec {
    /// Only hosts whose labels match are candidates; empty matches every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_selector: Option<LabelSelector>,
    /// Minimum hardware the host must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements: Option<HardwareRequirements>,
    /// The OS image to install.
    pub image: Image,
    /// Secret with extra cloud-config merged into the rendered user data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<SecretKeyRef>,
    /// How the installed server joins a cluster; absent means it does not join one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinSpec>,
    /// SSH public keys authorised for the default user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// Desired power state (default `On`).
    #[serde(default)]
    pub power: PowerState,
}

/// A key in a Secret in the Machine's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key in the Secret; each use documents its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl SecretKeyRef {
    /// The key, or `default` when none is given.
    pub fn key_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.key.as_deref().unwrap_or(default)
    }
}

/// Exactly one way of joining a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinSpec {
    /// Join a vCluster as a private node.
    #[serde(default, rename = "vcluster", skip_serializing_if = "Option::is_none")]
    pub vcluster: Option<VClusterJoin>,
    /// Join with `kubeadm join`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeadm: Option<KubeadmJoin>,
}

/// vCluster private-node join: the node runs the script served at `/node/join`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VClusterJoin {
    /// The vCluster's API endpoint, `host[:port]`.
    pub endpoint: String,
    /// Secret holding the join token (key default `token`).
    pub token_secret_ref: SecretKeyRef,
}

/// kubeadm join.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeadmJoin {
    /// The control plane endpoint, `host:port`.
    pub endpoint: String,
    /// Secret holding the bootstrap token (key default `token`).
    pub token_secret_ref: SecretKeyRef,
    /// `sha256:<hex>` hash of the cluster CA's public key.
    pub ca_cert_hash: String,
}

/// The join method a `JoinSpec` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinTarget<'a> {
    /// Do not join anything.
    None,
    /// vCluster private node.
    VCluster(&'a VClusterJoin),
    /// kubeadm.
    Kubeadm(&'a KubeadmJoin),
}

/// Why a `Machine` spec is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineSpecError {
    /// Both join methods are set.
    #[error("spec.join sets both vcluster and kubeadm; set exactly one of them")]
    AmbiguousJoin,
    /// A join endpoint is empty.
    #[error("spec.join.{method}.endpoint is empty; set the cluster's API endpoint (host:port)")]
    EmptyJoinEndpoint {
        /// `vcluster` or `kubeadm`.
        method: &'static str,
    },
    /// The kubeadm CA hash is not `sha256:` followed by 64 hex digits.
    #[error(
        "spec.join.kubeadm.caCertHash {value:?} is not of the form sha256:<64 hex digits>; \
         copy it from `kubeadm token create --print-join-command`"
    )]
    InvalidCaCertHash {
        /// The value given.
        value: String,
    },
    /// The image URL is empty.
    #[error("spec.image.url is empty; set the URL of the OS image to install")]
    EmptyImageUrl,
}

impl JoinSpec {
    /// The selected join method, checking that at most one is set and it is well formed.
    pub fn target(&self) -> Result<JoinTarget<'_>, MachineSpecError> {
        match (&self.vcluster, &self.kubeadm) {
            (Some(_), Some(_)) => Err(MachineSpecError::AmbiguousJoin),
            (Some(v), None) => {
                if v.endpoint.trim().is_empty() {
                    return Err(MachineSpecError::EmptyJoinEndpoint { method: "vcluster" });
                }
                Ok(JoinTarget::VCluster(v))
            }
            (None, Some(k)) => {
                if k.endpoint.trim().is_empty() {
                    return Err(MachineSpecError::EmptyJoinEndpoint { method: "kubeadm" });
                }
                let valid_hash = k
                    .ca_cert_hash
                    .strip_prefix("sha256:")
                    .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
                if !valid_hash {
                    return Err(MachineSpecError::InvalidCaCertHash {
                        value: k.ca_cert_hash.clone(),
                    });
                }
                Ok(JoinTarget::Kubeadm(k))
            }
            (None, None) => Ok(JoinTarget::None),
        }
    }
}

impl MachineSpec {
    /// Check the parts of the spec the schema cannot express.
    pub fn validate(&self) -> Result<(), MachineSpecError> {
        if self.image.url.trim().is_empty() {
            return Err(MachineSpecError::EmptyImageUrl);
        }
        if let Some(join) = &self.join {
            join.target()?;
        }
        Ok(())
    }
}

/// Where a Machine is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum MachinePhase {
    /// Waiting for a host.
    #[default]
    Pending,
    /// A host is claimed and the image is being installed.
    Provisioning,
    /// The image is installed; waiting for the node to join.
    Provisioned,
    /// The node joined its cluster (or no join was asked for and the host is up).
    Running,
    /// The Machine is being deleted and its host released.
    Deleting,
    /// Something went wrong that needs a person; see `message`.
    Failed,
}

/// Kinds of address a Machine reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MachineAddressType {
    /// Host name.
    Hostname,
    /// IP reachable inside the cluster's network.
    InternalIP,
    /// IP reachable from outside.
    ExternalIP,
}

/// One address of a Machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MachineAddress {
    /// Kind of address.
    #[serde(rename = "type")]
    pub address_type: MachineAddressType,
    /// The address.
    pub address: String,
}

/// Reference to the claimed host (same namespace as the Machine).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HostRef {
    /// BareMetalHost name.
    pub name: String,
    /// BareMetalHost namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// The observed state of a Machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: MachinePhase,
    /// `Scheduled`, `Provisioned` and `Joined`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The claimed host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ref: Option<HostRef>,
    /// Addresses of the server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<MachineAddress>,
    /// The node this Machine became.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// Human-readable reason for the current phase.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Secret holding the rendered user data.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_data_secret_name: String,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Condition types a Machine reports.
pub mod conditions {
    /// A host has been claimed.
    pub const SCHEDULED: &str = "Scheduled";
    /// The host runs the image.
    pub const PROVISIONED: &str = "Provisioned";
    /// The node joined its cluster.
    pub const JOINED: &str = "Joined";
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn token() -> SecretKeyRef {
        SecretKeyRef {
            name: "join".into(),
            key: None,
        }
    }

    #[test]
    fn join_target_selection_and_validation() {
        let none = JoinSpec::default();
        assert_eq!(none.target().unwrap(), JoinTarget::None);

        let vc = JoinSpec {
            vcluster: Some(VClusterJoin {
                endpoint: "vc.example.com:443".into(),
                token_secret_ref: token(),
            }),
            kubeadm: None,
        };
        assert!(matches!(vc.target().unwrap(), JoinTarget::VCluster(_)));

        let mut kubeadm = KubeadmJoin {
            endpoint: "10.0.0.1:6443".into(),
            token_secret_ref: token(),
            ca_cert_hash: format!("sha256:{}", "ab".repeat(32)),
        };
        let k = JoinSpec {
            vcluster: None,
            kubeadm: Some(kubeadm.clone()),
        };
        assert!(matches!(k.target().unwrap(), JoinTarget::Kubeadm(_)));

        kubeadm.ca_cert_hash = "abc".into();
        let bad = JoinSpec {
            vcluster: None,
            kubeadm: Some(kubeadm),
        };
        assert!(matches!(
            bad.target(),
            Err(MachineSpecError::InvalidCaCertHash { .. })
        ));

        let both = JoinSpec {
            vcluster: vc.vcluster.clone(),
            kubeadm: k.kubeadm.clone(),
        };
        assert_eq!(both.target(), Err(MachineSpecError::AmbiguousJoin));
    }

    #[test]
    fn empty_image_url_is_rejected() {
        let spec = MachineSpec::default();
        assert_eq!(spec.validate(), Err(MachineSpecError::EmptyImageUrl));
    }

    #[test]
    fn secret_key_default() {
        assert_eq!(token().key_or("token"), "token");
        let r = SecretKeyRef {
            name: "x".into(),
            key: Some("k".into()),
        };
        assert_eq!(r.key_or("token"), "k");
    }
}
