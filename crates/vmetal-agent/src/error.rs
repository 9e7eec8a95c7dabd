//! The agent's one error type: what failed, on which device or URL, and which
//! [`AgentErrorKind`] the controller should turn it into.

use std::io;
use std::path::PathBuf;

use vmetal_api::agent::AgentErrorKind;

/// Everything that can go wrong in the agent. Messages never contain the agent token.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The hardware inventory could not be read.
    #[error("cannot read the hardware inventory under {root}: {reason}")]
    Inventory {
        /// The root the inventory was read from (`/` in production).
        root: PathBuf,
        /// What was missing or unreadable.
        reason: String,
    },
    /// No disk matches the root device hints (or no disk is large enough).
    #[error("no disk matches the root device hints: {reason}")]
    NoRootDevice {
        /// The hints and the disks that were considered.
        reason: String,
    },
    /// The image (or its checksum file) could not be downloaded.
    #[error("downloading {url} failed: {reason}")]
    ImageDownload {
        /// The URL, with any user info removed.
        url: String,
        /// HTTP status or connection error.
        reason: String,
    },
    /// The downloaded image does not have the expected checksum.
    #[error(
        "checksum mismatch for {url}: expected {algorithm} {expected}, got {actual}; check spec.image.checksum"
    )]
    ChecksumMismatch {
        /// The image URL.
        url: String,
        /// `md5`, `sha256` or `sha512`.
        algorithm: &'static str,
        /// The checksum the host asked for.
        expected: String,
        /// The checksum of what was downloaded.
        actual: String,
    },
    /// The checksum given is unusable (bad length, not hex, not in the checksum file).
    #[error("unusable checksum for {url}: {reason}")]
    InvalidChecksum {
        /// The image URL.
        url: String,
        /// Why the checksum cannot be used.
        reason: String,
    },
    /// The image format is unsupported or the image is corrupt.
    #[error("image {url}: {reason}")]
    ImageFormat {
        /// The image URL.
        url: String,
        /// The format, and what is wrong with it.
        reason: String,
    },
    /// Reading or writing a disk failed.
    #[error("{op} {device} failed: {source}")]
    DiskIo {
        /// The device (or disk file).
        device: PathBuf,
        /// What was being done (`writing`, `wiping`, ...).
        op: &'static str,
        /// The I/O error.
        source: io::Error,
    },
    /// The disk cannot hold what was asked (image plus config drive).
    #[error("disk {device} is too small: {reason}")]
    DiskTooSmall {
        /// The device.
        device: PathBuf,
        /// Sizes involved.
        reason: String,
    },
    /// The config drive could not be placed or read.
    #[error("config drive on {device}: {reason}")]
    ConfigDrive {
        /// The device.
        device: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The agent API answered something unexpected or could not be reached.
    #[error("agent API {url}: {reason}")]
    Api {
        /// The endpoint.
        url: String,
        /// Status or connection error.
        reason: String,
    },
    /// The agent API refused this cycle's token (401/403): the cycle is over for this agent.
    #[error("agent API {url} rejected the agent token (HTTP {status})")]
    TokenRejected {
        /// The endpoint.
        url: String,
        /// 401 or 403.
        status: u16,
    },
    /// The kernel command line does not say how to reach the agent API.
    #[error("kernel command line: {reason}; fix the vmetal.* parameters of the boot script")]
    Cmdline {
        /// Which parameter is missing or malformed, and what was expected.
        reason: String,
    },
    /// The network could not be brought up.
    #[error("network interface {interface}: {reason}")]
    Network {
        /// The interface (`eth0`), or `*` when it concerns all of them.
        interface: String,
        /// What failed, and what to check.
        reason: String,
    },
}

impl AgentError {
    /// The failure class reported to the controller.
    pub fn kind(&self) -> AgentErrorKind {
        match self {
            AgentError::Inventory { .. } => AgentErrorKind::Inventory,
            AgentError::NoRootDevice { .. } => AgentErrorKind::NoRootDevice,
            AgentError::ImageDownload { .. } => AgentErrorKind::ImageDownload,
            AgentError::ChecksumMismatch { .. } | AgentError::InvalidChecksum { .. } => {
                AgentErrorKind::ChecksumMismatch
            }
            AgentError::ImageFormat { .. } => AgentErrorKind::ImageFormat,
            AgentError::DiskIo { .. }
            | AgentError::DiskTooSmall { .. }
            | AgentError::ConfigDrive { .. } => AgentErrorKind::DiskIo,
            AgentError::Api { .. }
            | AgentError::TokenRejected { .. }
            | AgentError::Cmdline { .. }
            | AgentError::Network { .. } => AgentErrorKind::Other,
        }
    }

    /// A [`AgentError::DiskIo`] for `device`.
    pub(crate) fn disk(device: &std::path::Path, op: &'static str, source: io::Error) -> Self {
        AgentError::DiskIo {
            device: device.to_path_buf(),
            op,
            source,
        }
    }
}

/// `url` without user info (`http://user:pass@host/` → `http://host/`), for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_removed_from_urls() {
        assert_eq!(
            redact_url("http://bob:secret@images:8080/a.img"),
            "http://images:8080/a.img"
        );
        assert_eq!(redact_url("http://images/a@b.img"), "http://images/a@b.img");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn kinds_follow_the_protocol() {
        let e = AgentError::ChecksumMismatch {
            url: "u".into(),
            algorithm: "sha256",
            expected: "a".into(),
            actual: "b".into(),
        };
        assert_eq!(e.kind(), AgentErrorKind::ChecksumMismatch);
        let e = AgentError::disk(
            std::path::Path::new("/dev/sda"),
            "writing",
            io::Error::other("x"),
        );
        assert_eq!(e.kind(), AgentErrorKind::DiskIo);
        assert!(e.to_string().contains("/dev/sda"));
    }
}
