//! IPMI 2.0 over LAN (RMCP+ "lanplus"): sans-IO codec and a tokio UDP client.
//! The codec (framing, RAKP, crypto, commands) is shared with the virtual BMC in `vmetal-lab`.
//!
//! Layers, outermost first: [`rmcp`] (RMCP and session headers), [`session`] (integrity and
//! confidentiality of an established session), [`rakp`] (Open Session and RAKP 1-4, key
//! derivation), [`message`] (IPMI LAN messages with checksums), [`commands`] (typed command
//! bodies and completion codes). [`IpmiBmc`] drives them over UDP.

mod client;
pub mod commands;
pub mod crypto;
pub mod message;
pub mod rakp;
pub mod rmcp;
pub mod session;
mod transport;
mod wire;

pub use client::IpmiBmc;
pub use commands::DeviceId;
pub use crypto::CipherSuite;

/// Bytes that are not a valid IPMI structure. Decoders return this instead of panicking.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the structure needs.
    #[error("{what} is truncated: {needed} more bytes needed at offset {offset}")]
    Truncated {
        /// The structure being decoded.
        what: &'static str,
        /// Where the read started.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// A field holds a value the protocol does not allow here.
    #[error("{what} has unexpected value {value:#x}")]
    Unexpected {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u32,
    },
    /// An IPMI message checksum does not match.
    #[error("{what} checksum mismatch")]
    Checksum {
        /// Which checksum.
        what: &'static str,
    },
    /// The session AuthCode does not match: tampered packet, or keys that differ.
    #[error("integrity check value mismatch")]
    Integrity,
    /// Decryption produced invalid confidentiality padding.
    #[error("invalid confidentiality padding")]
    Padding,
}
