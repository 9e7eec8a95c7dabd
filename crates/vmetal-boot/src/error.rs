//! The boot crate's one error type: every variant names the packet, file, address or object it
//! is about. Tokens and request bodies never appear in these messages.

use std::net::SocketAddr;
use std::path::PathBuf;

/// What went wrong on the provisioning-network edge.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A DHCP packet could not be parsed; it is dropped without an answer.
    #[error("malformed DHCP packet ({len} bytes): {reason}")]
    MalformedDhcp {
        /// Length of the datagram.
        len: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A reply could not be encoded (a bug: replies are built from validated values).
    #[error("cannot encode the DHCP reply to {mac}: {reason}")]
    EncodeDhcp {
        /// The client the reply was for.
        mac: String,
        /// What the encoder said.
        reason: String,
    },
    /// A TFTP packet could not be parsed.
    #[error("malformed TFTP packet ({len} bytes) from {peer}: {reason}")]
    MalformedTftp {
        /// Length of the datagram.
        len: usize,
        /// Who sent it.
        peer: SocketAddr,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A socket could not be opened or bound.
    #[error("cannot bind {what} on {address}{}: {source}", interface_hint(.interface))]
    Bind {
        /// Which service (`DHCP`, `TFTP`, `HTTP`).
        what: &'static str,
        /// The address asked for.
        address: SocketAddr,
        /// The interface asked for with `--interface`, if any.
        interface: Option<String>,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Sending or receiving on a bound socket failed.
    #[error("{what} socket I/O failed: {source}")]
    Io {
        /// Which service.
        what: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The TFTP root directory is unusable.
    #[error("TFTP root {path} is not a readable directory: {source}; pass --tftp-root DIR")]
    TftpRoot {
        /// The configured directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The lease file could not be read or written.
    #[error("lease file {path}: {reason}")]
    Leases {
        /// The lease file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A BareMetalHost annotation holds a value that is not what its key expects.
    #[error(
        "BareMetalHost {host}: annotation {key}={value:?} is invalid: {reason}; fix or remove it"
    )]
    InvalidAnnotation {
        /// `namespace/name` of the host.
        host: String,
        /// The annotation key.
        key: String,
        /// Its value.
        value: String,
        /// What a valid value looks like.
        reason: &'static str,
    },
    /// The agent API URL or another configured URL is unusable.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidConfig {
        /// The setting (`--agent-api`, `--server-ip`...).
        field: &'static str,
        /// Its value.
        value: String,
        /// What is expected.
        reason: &'static str,
    },
    /// Watching BareMetalHosts failed.
    #[error("cannot watch BareMetalHosts: {source}")]
    Watch {
        /// The client error.
        #[source]
        source: kube::runtime::watcher::Error,
    },
}

fn interface_hint(interface: &Option<String>) -> String {
    match interface {
        Some(i) => format!(" (interface {i}; does it exist and are we root or CAP_NET_RAW?)"),
        None => String::new(),
    }
}
