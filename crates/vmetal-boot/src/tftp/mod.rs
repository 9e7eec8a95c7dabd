//! Read-only TFTP (RFC 1350 with blksize, tsize and timeout options) for the iPXE binaries:
//! pure packet code in [`packet`], the socket loop in [`server`].

pub mod packet;
pub mod server;

pub use server::{TftpConfig, serve};

/// The well-known TFTP port.
pub const TFTP_PORT: u16 = 69;
