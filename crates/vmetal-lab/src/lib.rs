//! The lab: virtual BMCs (Redfish and IPMI) in front of simulated servers or QEMU VMs.
//!
//! Lets the controllers, the `vmetal up --lab N` demo and the end-to-end tests drive whole racks
//! with no hardware, through the same protocols real BMCs speak. Both front ends share one
//! [`SimulatedServer`] model and one [`Faults`] injector per server.

pub mod agent_backend;
pub mod faults;
pub mod ipmi;
pub mod join;
pub mod qemu;
pub mod rack;
pub mod redfish;
pub mod sim;
pub mod testos;

pub use agent_backend::{BootedOs, SimulatedMachine};
pub use faults::{FaultAction, Faults};
pub use sim::{BootSource, ServerBackend, ServerIdentity, SimulatedServer, SimulatedState};
