//! The string-valued enums of the `BareMetalHost` API: provisioning states, error types,
//! operational status, boot modes and the other closed sets Metal3 defines.
//!
//! Serialised strings are exactly Metal3's, so existing manifests, tooling and `kubectl` output
//! keep working.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `status.provisioning.state`: where a host is in its lifecycle (Metal3's 14 states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum ProvisioningState {
    /// No state yet: the host has not been reconciled.
    #[default]
    #[serde(rename = "")]
    None,
    /// No BMC details: vmetal cannot manage the host, only record it.
    #[serde(rename = "unmanaged")]
    Unmanaged,
    /// Validating the BMC address and credentials.
    #[serde(rename = "registering")]
    Registering,
    /// Legacy no-op state kept for compatibility; goes straight to preparing.
    #[serde(rename = "match profile")]
    MatchProfile,
    /// Applying RAID, firmware settings and manual cleaning before the host becomes available.
    #[serde(rename = "preparing")]
    Preparing,
    /// Deprecated alias of `available`.
    #[serde(rename = "ready")]
    Ready,
    /// Registered, inspected and clean: waiting to be provisioned.
    #[serde(rename = "available")]
    Available,
    /// Writing an image to the host.
    #[serde(rename = "provisioning")]
    Provisioning,
    /// An image is installed and the host runs it.
    #[serde(rename = "provisioned")]
    Provisioned,
    /// Something other than vmetal installed the OS; only power is managed.
    #[serde(rename = "externally provisioned")]
    ExternallyProvisioned,
    /// Removing the image and cleaning the disks.
    #[serde(rename = "deprovisioning")]
    Deprovisioning,
    /// Booting the agent to collect the hardware inventory.
    #[serde(rename = "inspecting")]
    Inspecting,
    /// The host is being deleted and is powered off first.
    #[serde(rename = "powering off before delete")]
    PoweringOffBeforeDelete,
    /// The host is being deleted; the finalizer comes off next.
    #[serde(rename = "deleting")]
    Deleting,
}

impl ProvisioningState {
    /// Every state, in Metal3's declaration order.
    pub const ALL: [ProvisioningState; 14] = [
        Self::None,
        Self::Unmanaged,
        Self::Registering,
        Self::MatchProfile,
        Self::Preparing,
        Self::Ready,
        Self::Available,
        Self::Provisioning,
        Self::Provisioned,
        Self::ExternallyProvisioned,
        Self::Deprovisioning,
        Self::Inspecting,
        Self::PoweringOffBeforeDelete,
        Self::Deleting,
    ];

    /// The exact string Metal3 uses for this state.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Unmanaged => "unmanaged",
            Self::Registering => "registering",
            Self::MatchProfile => "match profile",
            Self::Preparing => "preparing",
            Self::Ready => "ready",
            Self::Available => "available",
            Self::Provisioning => "provisioning",
            Self::Provisioned => "provisioned",
            Self::ExternallyProvisioned => "externally provisioned",
            Self::Deprovisioning => "deprovisioning",
            Self::Inspecting => "inspecting",
            Self::PoweringOffBeforeDelete => "powering off before delete",
            Self::Deleting => "deleting",
        }
    }

    /// States in which a host can be claimed by a consumer (`available` and its alias `ready`).
    pub fn is_available(self) -> bool {
        matches!(self, Self::Available | Self::Ready)
    }

    /// States that hold a BMC-driven operation in flight and so count against the
    /// provisioning concurrency limit.
    pub fn is_busy(self) -> bool {
        matches!(
            self,
            Self::Inspecting | Self::Provisioning | Self::Deprovisioning | Self::Preparing
        )
    }

    /// Stable states in which `spec.online` is enforced.
    pub fn enforces_power(self) -> bool {
        matches!(
            self,
            Self::Available | Self::Ready | Self::Provisioned | Self::ExternallyProvisioned
        )
    }
}

impl std::fmt::Display for ProvisioningState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `status.errorType`: which kind of operation failed (Metal3's 8 error types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ErrorType {
    /// Registration failed for a host that was already provisioned.
    #[serde(rename = "provisioned registration error")]
    ProvisionedRegistrationError,
    /// The BMC address or credentials could not be validated.
    #[serde(rename = "registration error")]
    RegistrationError,
    /// Hardware inspection failed.
    #[serde(rename = "inspection error")]
    InspectionError,
    /// Preparing (RAID, firmware settings, manual cleaning) failed.
    #[serde(rename = "preparation error")]
    PreparationError,
    /// Writing the image or cleaning failed.
    #[serde(rename = "provisioning error")]
    ProvisioningError,
    /// The BMC could not change or report the power state.
    #[serde(rename = "power management error")]
    PowerManagementError,
    /// Live servicing (firmware or BIOS update) failed.
    #[serde(rename = "servicing error")]
    ServicingError,
    /// Detaching the host failed.
    #[serde(rename = "detach error")]
    DetachError,
}

impl ErrorType {
    /// Every error type, in Metal3's declaration order.
    pub const ALL: [ErrorType; 8] = [
        Self::ProvisionedRegistrationError,
        Self::RegistrationError,
        Self::InspectionError,
        Self::PreparationError,
        Self::ProvisioningError,
        Self::PowerManagementError,
        Self::ServicingError,
        Self::DetachError,
    ];

    /// The exact string Metal3 uses for this error type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProvisionedRegistrationError => "provisioned registration error",
            Self::RegistrationError => "registration error",
            Self::InspectionError => "inspection error",
            Self::PreparationError => "preparation error",
            Self::ProvisioningError => "provisioning error",
            Self::PowerManagementError => "power management error",
            Self::ServicingError => "servicing error",
            Self::DetachError => "detach error",
        }
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `status.operationalStatus`: the health of the host as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum OperationalStatus {
    /// Not reconciled yet.
    #[default]
    #[serde(rename = "")]
    Unknown,
    /// Everything is fine.
    #[serde(rename = "OK")]
    Ok,
    /// The host is known but its BMC details are incomplete.
    #[serde(rename = "discovered")]
    Discovered,
    /// The last operation failed; see `errorType` and `errorMessage`.
    #[serde(rename = "error")]
    Error,
    /// Waiting for a free slot under the provisioning concurrency limit.
    #[serde(rename = "delayed")]
    Delayed,
    /// Management is suspended by the detached annotation.
    #[serde(rename = "detached")]
    Detached,
    /// Live firmware or BIOS servicing is in progress.
    #[serde(rename = "servicing")]
    Servicing,
}

impl OperationalStatus {
    /// Every operational status.
    pub const ALL: [OperationalStatus; 7] = [
        Self::Unknown,
        Self::Ok,
        Self::Discovered,
        Self::Error,
        Self::Delayed,
        Self::Detached,
        Self::Servicing,
    ];
}

/// `spec.bootMode`: how the firmware boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum BootMode {
    /// UEFI (Metal3's default).
    #[default]
    #[serde(rename = "UEFI")]
    Uefi,
    /// UEFI with Secure Boot enforced.
    #[serde(rename = "UEFISecureBoot")]
    UefiSecureBoot,
    /// Legacy BIOS.
    #[serde(rename = "legacy")]
    Legacy,
}

impl BootMode {
    /// Whether the firmware boots in UEFI mode (secure or not).
    pub fn is_uefi(self) -> bool {
        !matches!(self, Self::Legacy)
    }
}

/// `spec.automatedCleaningMode`: whether disks are wiped when a host is deprovisioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutomatedCleaningMode {
    /// Wipe partition tables and filesystem signatures (Metal3's default).
    #[default]
    Metadata,
    /// No automated cleaning.
    Disabled,
}

/// `spec.inspectionMode`: how hardware inspection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InspectionMode {
    /// Boot the agent and collect inventory in-band (the default).
    #[default]
    Agent,
    /// Out-of-band inspection through the BMC only.
    Fast,
    /// No inspection.
    Disabled,
}

/// `spec.image.checksumType`: the algorithm of `spec.image.checksum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumType {
    /// MD5 (discouraged).
    Md5,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
    /// Detect the algorithm from the checksum's length.
    Auto,
}

impl ChecksumType {
    /// Resolve `auto` (or an absent type) from the hex length of a checksum value.
    pub fn detect(checksum: &str) -> Option<ChecksumType> {
        let hex = checksum.trim();
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        match hex.len() {
            32 => Some(Self::Md5),
            64 => Some(Self::Sha256),
            128 => Some(Self::Sha512),
            _ => None,
        }
    }
}

/// `spec.image.format`: the disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    /// A raw disk image, written byte for byte.
    Raw,
    /// A qcow2 image, converted to raw while writing.
    Qcow2,
    /// VirtualBox disk image (accepted for compatibility).
    Vdi,
    /// VMware disk image (accepted for compatibility).
    Vmdk,
    /// A live ISO booted directly, nothing written to disk.
    LiveIso,
}

/// Desired power for a `Machine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum PowerState {
    /// Powered on (the default).
    #[default]
    On,
    /// Powered off; the host stays claimed.
    Off,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_provisioning_state_round_trips_with_metal3_strings() {
        let expected = [
            "",
            "unmanaged",
            "registering",
            "match profile",
            "preparing",
            "ready",
            "available",
            "provisioning",
            "provisioned",
            "externally provisioned",
            "deprovisioning",
            "inspecting",
            "powering off before delete",
            "deleting",
        ];
        assert_eq!(ProvisioningState::ALL.len(), 14);
        for (state, s) in ProvisioningState::ALL.iter().zip(expected) {
            let json = serde_json::to_string(state).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(state.as_str(), s);
            let back: ProvisioningState = serde_json::from_str(&json).unwrap();
            assert_eq!(back, *state);
        }
    }

    #[test]
    fn every_error_type_round_trips_with_metal3_strings() {
        let expected = [
            "provisioned registration error",
            "registration error",
            "inspection error",
            "preparation error",
            "provisioning error",
            "power management error",
            "servicing error",
            "detach error",
        ];
        for (err, s) in ErrorType::ALL.iter().zip(expected) {
            let json = serde_json::to_string(err).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(err.to_string(), s);
            assert_eq!(serde_json::from_str::<ErrorType>(&json).unwrap(), *err);
        }
    }

    #[test]
    fn operational_status_strings() {
        let strings: Vec<String> = OperationalStatus::ALL
            .iter()
            .map(|s| serde_json::to_string(s).unwrap())
            .collect();
        assert_eq!(
            strings,
            [
                "\"\"",
                "\"OK\"",
                "\"discovered\"",
                "\"error\"",
                "\"delayed\"",
                "\"detached\"",
                "\"servicing\""
            ]
        );
        for s in OperationalStatus::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<OperationalStatus>(&json).unwrap(), s);
        }
    }

    #[test]
    fn unknown_state_string_is_rejected() {
        assert!(serde_json::from_str::<ProvisioningState>("\"Provisioned\"").is_err());
        assert!(serde_json::from_str::<ErrorType>("\"oops\"").is_err());
    }

    #[test]
    fn other_enum_strings_match_metal3() {
        assert_eq!(
            serde_json::to_string(&BootMode::UefiSecureBoot).unwrap(),
            "\"UEFISecureBoot\""
        );
        assert_eq!(
            serde_json::to_string(&BootMode::Legacy).unwrap(),
            "\"legacy\""
        );
        assert_eq!(
            serde_json::to_string(&ImageFormat::LiveIso).unwrap(),
            "\"live-iso\""
        );
        assert_eq!(
            serde_json::to_string(&AutomatedCleaningMode::Disabled).unwrap(),
            "\"disabled\""
        );
        assert_eq!(
            serde_json::to_string(&ChecksumType::Sha512).unwrap(),
            "\"sha512\""
        );
    }

    #[test]
    fn checksum_type_detection_by_length() {
        assert_eq!(
            ChecksumType::detect(&"a".repeat(32)),
            Some(ChecksumType::Md5)
        );
        assert_eq!(
            ChecksumType::detect(&"b".repeat(64)),
            Some(ChecksumType::Sha256)
        );
        assert_eq!(
            ChecksumType::detect(&"c".repeat(128)),
            Some(ChecksumType::Sha512)
        );
        assert_eq!(ChecksumType::detect("xyz"), None);
        assert_eq!(ChecksumType::detect(&"g".repeat(64)), None);
    }
}
