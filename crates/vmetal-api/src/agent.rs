//! The agent protocol: what the in-memory installer (`vmetal-agent`) and the controller's agent
//! API say to each other. JSON over HTTP; the agent keeps no plan, each heartbeat's reply says
//! what to do next, derived from the host's current desired state.
//!
//! - `POST /v1/lookup` (no token): [`LookupRequest`] → [`LookupResponse`] with this cycle's
//!   token, handed out once per cycle; 404 when no host has these MACs or nothing is to be
//!   done, 403 when this cycle's token was already issued.
//! - `POST /v1/heartbeat` (`Authorization: Bearer <token>`): [`Heartbeat`] →
//!   [`HeartbeatResponse`]; 401 without a token, 403 with a wrong one, and then nothing changes.

use serde::{Deserialize, Serialize};

use crate::hardware::HardwareDetails;
use crate::host::RootDeviceHints;
use crate::states::{ChecksumType, ImageFormat};

/// Which host, as the agent API names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIdentity {
    /// BareMetalHost namespace.
    pub namespace: String,
    /// BareMetalHost name.
    pub name: String,
}

/// First call of an agent after boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LookupRequest {
    /// MAC addresses of every NIC (lower case, colon separated).
    pub mac_addresses: Vec<String>,
}

/// The agent's credentials for this provisioning cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LookupResponse {
    /// The host this agent runs on.
    pub host: HostIdentity,
    /// The cycle (one inspection, deployment or cleaning) the token belongs to.
    pub cycle: String,
    /// Bearer token for every later call of this cycle.
    pub token: String,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u64,
}

/// What the agent is doing, sent with each heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// The host (from the lookup).
    pub host: HostIdentity,
    /// The cycle (from the lookup).
    pub cycle: String,
    /// The command being run, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<CommandProgress>,
    /// Results of finished commands of this cycle, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<CommandResult>,
}

/// Progress of a running command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandProgress {
    /// Command id.
    pub id: String,
    /// Human-readable step (`downloading`, `writing`, `config drive`, ...).
    pub step: String,
    /// Bytes done so far.
    pub done_bytes: u64,
    /// Total bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandResult {
    /// Command id.
    pub id: String,
    /// `None` on success; what failed otherwise (never contains secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Which kind of failure, so the controller can pick the errorType.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<AgentErrorKind>,
    /// Inventory, for inspect commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<HardwareDetails>,
    /// Install device chosen, for deploy commands (`/dev/vda`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device: Option<String>,
    /// Digest of what was written, hex, for deploy commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_sha256: Option<String>,
}

/// Classes of agent failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AgentErrorKind {
    /// The image could not be downloaded (HTTP error, connection failure).
    ImageDownload,
    /// The image's checksum did not match.
    ChecksumMismatch,
    /// The image format is not supported or the image is corrupt.
    ImageFormat,
    /// No disk matches the root device hints.
    NoRootDevice,
    /// Writing or wiping a disk failed.
    DiskIo,
    /// Collecting the inventory failed.
    Inventory,
    /// Anything else.
    Other,
}

/// What the agent must do next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "camelCase")]
pub enum AgentCommand {
    /// Nothing to do yet; heartbeat again later.
    Wait,
    /// Collect the inventory and report it.
    Inspect {
        /// Command id (unique per cycle; the agent never runs an id twice).
        id: String,
    },
    /// Write an image (and config drive) to the root device.
    Deploy(Box<DeployCommand>),
    /// Wipe the disks.
    Wipe {
        /// Command id.
        id: String,
        /// How thoroughly.
        mode: WipeMode,
    },
    /// The cycle is over: stop heartbeating and wait to be powered off or rebooted.
    Finish,
}

/// Disk cleaning depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WipeMode {
    /// Partition tables and filesystem signatures at both ends of each disk.
    Metadata,
    /// Every byte of every disk.
    Full,
}

/// Everything needed to install an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployCommand {
    /// Command id.
    pub id: String,
    /// Image URL.
    pub image_url: String,
    /// Expected checksum (hex), or a URL of a checksum file.
    pub checksum: String,
    /// Checksum algorithm; `None` detects it from the checksum's length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<ChecksumType>,
    /// Image format; `None` means raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    /// Which disk to install on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device_hints: Option<RootDeviceHints>,
    /// ConfigDrive v2 filesystem image (FAT, label `config-2`), base64; written to a new
    /// partition after the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_drive: Option<String>,
    /// Give up on a download that sends nothing for this many seconds (default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_stall_timeout_seconds: Option<u64>,
}

/// Reply to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    /// What to do next.
    pub command: AgentCommand,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_tagged_json() {
        let c = AgentCommand::Wipe {
            id: "c1/wipe".into(),
            mode: WipeMode::Metadata,
        };
        let j = serde_json::to_value(&c).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"command": "wipe", "id": "c1/wipe", "mode": "metadata"})
        );
        assert_eq!(serde_json::from_value::<AgentCommand>(j).unwrap(), c);
        let w = serde_json::to_value(AgentCommand::Wait).unwrap();
        assert_eq!(w, serde_json::json!({"command": "wait"}));
    }
}
