//! The protocol-neutral vocabulary of BMC operations: power states and actions, boot devices,
//! system information and connection options.

use std::time::Duration;

/// Observed power state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// Powered on.
    On,
    /// Powered off.
    Off,
    /// Transitioning to on.
    PoweringOn,
    /// Transitioning to off.
    PoweringOff,
}

impl PowerState {
    /// Whether the server is on or getting there.
    pub fn is_on(self) -> bool {
        matches!(self, Self::On | Self::PoweringOn)
    }
}

/// A power change to request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerAction {
    /// Power on.
    On,
    /// Hard power off (Redfish `ForceOff`, IPMI chassis power down).
    ForceOff,
    /// Ask the OS to shut down (Redfish `GracefulShutdown`, IPMI soft off / ACPI).
    GracefulShutdown,
    /// Hard reset (Redfish `ForceRestart`, IPMI hard reset).
    ForceRestart,
    /// Power off then on (Redfish `PowerCycle`, IPMI power cycle).
    PowerCycle,
}

/// Where to boot from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootDevice {
    /// Network boot (PXE).
    Pxe,
    /// Local disk.
    Disk,
    /// CD/DVD or virtual media.
    Cd,
    /// Firmware setup screen.
    BiosSetup,
    /// UEFI HTTP boot (Redfish only).
    UefiHttp,
}

/// Firmware mode for the boot override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootModeOverride {
    /// UEFI.
    Uefi,
    /// Legacy BIOS.
    Legacy,
}

/// A boot-device override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootOverride {
    /// Device to boot.
    pub device: BootDevice,
    /// Keep the override for every boot, not only the next one.
    pub persistent: bool,
    /// Firmware mode; `None` leaves the BMC's current mode.
    pub mode: Option<BootModeOverride>,
}

impl BootOverride {
    /// Boot `device` once, in `mode`.
    pub fn once(device: BootDevice, mode: Option<BootModeOverride>) -> Self {
        Self {
            device,
            persistent: false,
            mode,
        }
    }
}

/// What the BMC tells about the server; fields the protocol does not offer are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemInfo {
    /// Manufacturer.
    pub manufacturer: Option<String>,
    /// Model / product name.
    pub model: Option<String>,
    /// Serial number.
    pub serial_number: Option<String>,
    /// System UUID (lower-case, hyphenated).
    pub uuid: Option<String>,
    /// BIOS / firmware version.
    pub bios_version: Option<String>,
    /// Power state at the time of the query.
    pub power_state: Option<PowerState>,
}

/// How to talk to a BMC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Per-request timeout (one HTTP request, one IPMI datagram round trip with retransmits).
    pub timeout: Duration,
    /// Retries after a transient failure (5xx, connection error); 0 disables retrying.
    pub retries: u32,
    /// Accept any TLS certificate (the BareMetalHost's `disableCertificateVerification`).
    pub disable_certificate_verification: bool,
    /// Extra trusted CA certificates in PEM, added to the system roots.
    pub ca_certificates_pem: Vec<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(20),
            retries: 3,
            disable_certificate_verification: false,
            ca_certificates_pem: Vec::new(),
        }
    }
}
