//! Node operations over a BMC: register, inspect, deploy, clean and power.
//!
//! The provisioner is what Ironic is to Metal3, minus the database: every operation is an
//! idempotent step derived from the `BareMetalHost` object. It also owns the agent API
//! (lookup, heartbeat, commands with a per-cycle token), iPXE script rendering and config drives.
//!
//! - [`cycle`] — the per-cycle Secret (`vmetal-agent-<host>`) shared with the controller.
//! - [`agent_api`] — the axum router the in-memory agent talks to.
//! - [`configdrive`] — ConfigDrive v2 FAT images from a host's userData/networkData/metaData.
//! - [`ipxe`] — iPXE scripts that boot the agent ramdisk, or the local disk.
//! - [`error`] — [`ProvisionerError`], the one error type.

pub mod agent_api;
pub mod configdrive;
pub mod cycle;
pub mod error;
pub mod ipxe;

pub use agent_api::{AgentApi, next_command, router};
pub use configdrive::{
    build_config_drive, config_drive_for, default_meta_data, read_config_drive_file,
};
pub use cycle::{CycleState, Operation, command_id, new_cycle_secret, secret_name};
pub use error::ProvisionerError;
pub use ipxe::{BootConfig, render_exit_script, render_script};
