//! The `BareMetalHost` custom resource (`metal3.io/v1alpha1`): one physical server.
//!
//! Field-compatible with Metal3's CRD so existing manifests and tooling work unchanged; JSON keys,
//! enum strings and printer columns are Metal3's, including quirks such as `provisioning.ID`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, SecretReference, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::hardware::HardwareDetails;
use crate::states::{
    AutomatedCleaningMode, BootMode, ChecksumType, ErrorType, ImageFormat, InspectionMode,
    OperationalStatus, ProvisioningState,
};

fn is_false(b: &bool) -> bool {
    !*b
}

/// The desired state of a physical server.
#[allow(clippy::duplicated_attributes)] // kube-derive takes one `printcolumn(...)` per column
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "metal3.io",
    version = "v1alpha1",
    kind = "BareMetalHost",
    plural = "baremetalhosts",
    singular = "baremetalhost",
    namespaced,
    status = "BareMetalHostStatus",
    shortname = "bmh",
    shortname = "bmhost",
    doc = "BareMetalHost is a physical server managed through its BMC (Metal3-compatible).",
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.operationalStatus",
        description = "Operational status",
        priority = 1
    ),
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".status.provisioning.state",
        description = "Provisioning status"
    ),
    printcolumn(
        name = "Consumer",
        type_ = "string",
        json_path = ".spec.consumerRef.name",
        description = "Consumer using this host"
    ),
    printcolumn(
        name = "BMC",
        type_ = "string",
        json_path = ".spec.bmc.address",
        description = "Address of management controller",
        priority = 1
    ),
    printcolumn(
        name = "Online",
        type_ = "string",
        json_path = ".spec.online",
        description = "Whether the host is online or not"
    ),
    printcolumn(
        name = "Error",
        type_ = "string",
        json_path = ".status.errorType",
        description = "Type of the most recent error"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "Time duration since creation of BareMetalHost"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BareMetalHostSpec {
    /// Taints (deprecated in Metal3, never implemented; kept for compatibility).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// How to reach the host's baseboard management controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<BmcDetails>,
    /// Legacy hardware profile name (deprecated).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hardware_profile: String,
    /// Which disk to install on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device_hints: Option<RootDeviceHints>,
    /// UEFI (default), UEFISecureBoot or legacy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<BootMode>,
    /// MAC of the NIC the host PXE-boots from (not the BMC's).
    #[serde(
        default,
        rename = "bootMACAddress",
        skip_serializing_if = "String::is_empty"
    )]
    pub boot_mac_address: String,
    /// Desired power state, enforced in stable states.
    #[serde(default)]
    pub online: bool,
    /// Who uses the host; non-empty means claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_ref: Option<ObjectReference>,
    /// The image to install; setting its URL with `online: true` starts provisioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    /// Secret with cloud-init or ignition user data for the config drive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<SecretReference>,
    /// Secret with network data for the ramdisk (and config drive when `networkData` is unset).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub preprovisioning_network_data_name: String,
    /// Secret with network data for the config drive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<SecretReference>,
    /// Secret with metadata for the config drive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_data: Option<SecretReference>,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Something else installed the OS; only power is managed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub externally_provisioned: bool,
    /// Whether disks are wiped on deprovisioning (`metadata`, the default, or `disabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automated_cleaning_mode: Option<AutomatedCleaningMode>,
    /// A custom deploy step used instead of `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_deploy: Option<CustomDeploy>,
    /// BIOS settings (deprecated in Metal3 in favour of HostFirmwareSettings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareConfig>,
    /// Hardware or software RAID volumes to build in `preparing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid: Option<RaidConfig>,
    /// CPU architecture (`x86_64`, `aarch64`); filled from inspection when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
    /// Use reboots instead of power-off.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disable_power_off: bool,
    /// `agent` (default), `fast` (out of band) or `disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspection_mode: Option<InspectionMode>,
}

/// BMC address and credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BmcDetails {
    /// Driver URL, e.g. `redfish://10.0.0.1/redfish/v1/Systems/1` or `ipmi://10.0.0.2`.
    #[serde(default)]
    pub address: String,
    /// Secret (same namespace) with keys `username` and `password`.
    #[serde(default)]
    pub credentials_name: String,
    /// Skip TLS certificate verification for HTTPS BMCs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disable_certificate_verification: bool,
}

/// The image to install.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// Where to download the image from.
    pub url: String,
    /// The checksum, or a URL of a checksum file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checksum: String,
    /// Checksum algorithm; empty or `auto` detects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<ChecksumType>,
    /// Disk format of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    /// dockerconfigjson Secret for `oci://` images.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub oci_auth_secret_name: String,
}

impl Image {
    /// Whether this image may go without a checksum (live ISOs and OCI artifacts).
    pub fn checksum_optional(&self) -> bool {
        self.format == Some(ImageFormat::LiveIso) || self.url.starts_with("oci://")
    }
}

/// Hints that select the installation disk; all given hints must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RootDeviceHints {
    /// `/dev/...` or `/dev/disk/by-path/...` path (exact).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_name: String,
    /// SCSI host:channel:target:lun (exact).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hctl: String,
    /// Model (substring).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// Vendor (substring).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vendor: String,
    /// Serial number (exact).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serial_number: String,
    /// Minimum size in GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size_gigabytes: Option<i64>,
    /// World wide name (exact).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wwn: String,
    /// WWN with extension (exact).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wwn_with_extension: String,
    /// WWN vendor extension (exact).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wwn_vendor_extension: String,
    /// Rotational or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
}

/// A custom deploy method run instead of writing `image`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomDeploy {
    /// Name of the deploy step.
    pub method: String,
}

/// Legacy BIOS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FirmwareConfig {
    /// Enable virtualization extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtualization_enabled: Option<bool>,
    /// Enable SMT / hyper-threading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simultaneous_multithreading_enabled: Option<bool>,
    /// Enable SR-IOV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov_enabled: Option<bool>,
}

/// RAID layout: hardware or software volumes, never both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RaidConfig {
    /// Volumes built by the RAID controller.
    #[serde(
        default,
        rename = "hardwareRAIDVolumes",
        skip_serializing_if = "Option::is_none"
    )]
    pub hardware_raid_volumes: Option<Vec<HardwareRaidVolume>>,
    /// Volumes built by Linux md (at most two).
    #[serde(
        default,
        rename = "softwareRAIDVolumes",
        skip_serializing_if = "Option::is_none"
    )]
    pub software_raid_volumes: Option<Vec<SoftwareRaidVolume>>,
}

/// One hardware RAID volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HardwareRaidVolume {
    /// Size in GiB; empty means the maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_gibibytes: Option<i64>,
    /// RAID level: 0, 1, 2, 5, 6, 1+0, 5+0 or 6+0.
    pub level: String,
    /// Volume name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Use rotational disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
    /// How many disks to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_physical_disks: Option<i64>,
    /// Which controller builds it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub controller: String,
    /// Which disks to use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub physical_disks: Vec<String>,
}

/// One software RAID volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SoftwareRaidVolume {
    /// Size in GiB; empty means the maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_gibibytes: Option<i64>,
    /// RAID level: 0, 1 or 1+0.
    pub level: String,
    /// Member disks, given as root device hints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub physical_disks: Vec<RootDeviceHints>,
}

/// The observed state of a physical server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BareMetalHostStatus {
    /// Overall health: OK, discovered, error, delayed, detached, servicing.
    #[serde(default)]
    pub operational_status: OperationalStatus,
    /// When the status was last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<Time>,
    /// Kind of the most recent error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<ErrorType>,
    /// Hardware found by inspection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<HardwareDetails>,
    /// Legacy hardware profile (deprecated).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hardware_profile: String,
    /// Where the host is in its lifecycle.
    #[serde(default)]
    pub provisioning: ProvisionStatus,
    /// The credentials that last worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub good_credentials: Option<CredentialsStatus>,
    /// The credentials last tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tried_credentials: Option<CredentialsStatus>,
    /// Details of the most recent error; empty when healthy.
    #[serde(default)]
    pub error_message: String,
    /// Observed power state.
    #[serde(default)]
    pub powered_on: bool,
    /// Start and end of each kind of operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_history: Option<OperationHistory>,
    /// Consecutive errors since the last success; drives back-off.
    #[serde(default)]
    pub error_count: i32,
    /// Failed provisioning attempts, not reset by deprovisioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_fail_count: Option<i32>,
    /// The last image whose provisioning was attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_image: Option<Image>,
    /// Standard conditions: Manageable, Provisioned, Ready, AvailableForProvisioning,
    /// Progressing, Healthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub conditions: Vec<Condition>,
}

/// Provisioning progress (`status.provisioning`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionStatus {
    /// The provisioning state.
    #[serde(default)]
    pub state: ProvisioningState,
    /// The provisioner's id for the node (capital `ID`, as in Metal3).
    #[serde(default, rename = "ID")]
    pub id: String,
    /// The image last provisioned successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    /// Root device hints used for the last provisioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device_hints: Option<RootDeviceHints>,
    /// Boot mode used for the last provisioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<BootMode>,
    /// RAID layout last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid: Option<RaidConfig>,
    /// Firmware settings last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareConfig>,
    /// Custom deploy last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_deploy: Option<CustomDeploy>,
}

/// A credentials Secret and the resourceVersion that was used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsStatus {
    /// The Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretReference>,
    /// Its resourceVersion when used; a change means new credentials.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credentials_version: String,
}

/// When each kind of operation last ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OperationHistory {
    /// Registration.
    #[serde(default)]
    pub register: OperationMetric,
    /// Inspection.
    #[serde(default)]
    pub inspect: OperationMetric,
    /// Provisioning.
    #[serde(default)]
    pub provision: OperationMetric,
    /// Deprovisioning.
    #[serde(default)]
    pub deprovision: OperationMetric,
}

/// Start and end of one operation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OperationMetric {
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Time>,
}

/// Annotation and finalizer names Metal3 users rely on.
pub mod annotations {
    /// Finalizer that keeps the host until it is powered off and released.
    pub const FINALIZER: &str = "baremetalhost.metal3.io";
    /// Any value stops reconciliation entirely.
    pub const PAUSED: &str = "baremetalhost.metal3.io/paused";
    /// Suspends management (optional JSON `{"deleteAction": "delay"|"delete", "force": bool}`).
    pub const DETACHED: &str = "baremetalhost.metal3.io/detached";
    /// The whole status as JSON, restored when status is empty (pivot, `clusterctl move`).
    pub const STATUS: &str = "baremetalhost.metal3.io/status";
    /// Reboot request; `reboot.metal3.io/<key>` keeps the host off until the key is removed.
    pub const REBOOT: &str = "reboot.metal3.io";
    /// `disabled` turns inspection off; any other value requests re-inspection.
    pub const INSPECT: &str = "inspect.metal3.io";
    /// Hardware details as JSON, supplied from outside when inspection is disabled.
    pub const HARDWARE_DETAILS: &str = "inspect.metal3.io/hardwaredetails";
    /// Label set on a host claimed by a vmetal `Machine`.
    pub const MACHINE_LABEL: &str = "vmetal.io/machine";
}

impl BareMetalHost {
    /// The provisioning state, `""` when there is no status yet.
    pub fn provisioning_state(&self) -> ProvisioningState {
        self.status
            .as_ref()
            .map(|s| s.provisioning.state)
            .unwrap_or_default()
    }

    /// The annotations map (empty when none).
    pub fn annotations(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.metadata.annotations.as_ref().unwrap_or(&EMPTY)
    }

    /// The labels map (empty when none).
    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    /// Whether the paused annotation is present.
    pub fn is_paused(&self) -> bool {
        self.annotations().contains_key(annotations::PAUSED)
    }

    /// Whether some consumer holds the host.
    pub fn is_claimed(&self) -> bool {
        self.spec
            .consumer_ref
            .as_ref()
            .is_some_and(|r| r.name.as_deref().is_some_and(|n| !n.is_empty()))
    }

    /// Whether the host is in an error: an error type is set or an error message is present.
    pub fn has_error(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.error_type.is_some() || !s.error_message.is_empty())
    }

    /// The hardware details, when inspection has run.
    pub fn hardware(&self) -> Option<&HardwareDetails> {
        self.status.as_ref().and_then(|s| s.hardware.as_ref())
    }

    /// Whether inspection is disabled by `spec.inspectionMode` or the legacy annotation.
    pub fn inspection_disabled(&self) -> bool {
        self.spec.inspection_mode == Some(InspectionMode::Disabled)
            || self
                .annotations()
                .get(annotations::INSPECT)
                .is_some_and(|v| v == "disabled")
    }
}
