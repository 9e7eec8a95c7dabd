//! The provisioning-network edge: DHCP (proxy or reservation), TFTP, HTTP boot and the agent
//! callback proxy.
//!
//! Configured by watching BareMetalHosts; packet parsing and reply building are pure functions,
//! sockets live in thin loops around them.
//!
//! - [`dhcp`] — parse a request, decide and encode the reply; the socket loop.
//! - [`tftp`] — read-only TFTP for the iPXE binaries.
//! - [`ndp`] — IPv6 router advertisements that spare iPXE its wait for an IPv6 router.
//! - [`http`] — per-MAC iPXE scripts, agent kernel/initramfs, `/ipxe/` binaries, `/metrics`.
//! - [`callback`] — `/v1/*` forwarded to the controller's agent API.
//! - [`hosts`], [`watch`], [`leases`] — who may boot, kept live from BareMetalHosts.
//! - [`service`] — start them all; [`error`] — [`BootError`], the one error type.

pub mod callback;
pub mod dhcp;
pub mod error;
pub mod hosts;
pub mod http;
pub mod leases;
pub mod metrics;
pub mod multus;
pub mod ndp;
pub mod service;
pub mod tftp;
pub mod watch;

pub use error::BootError;
pub use hosts::{HostsHandle, KnownHost, KnownHosts, Reservation};
pub use service::{BootServiceConfig, RunningBoot, start};
