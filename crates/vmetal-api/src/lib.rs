//! vmetal's API: the `BareMetalHost` (`metal3.io/v1alpha1`, field-compatible with Metal3) and
//! `Machine` (`vmetal.io/v1alpha1`) custom resources, their state enums, and the pure helpers
//! every controller needs and that are easy to get wrong (BMC addresses, MACs, selectors,
//! hardware requirements).
//!
//! Nothing here does I/O: types, parsing and matching only, so every later crate can depend on
//! it and everything is unit-tested without a server.

pub mod agent;
pub mod bmc_address;
pub mod ca_hash;
pub mod crds;
pub mod hardware;
pub mod host;
pub mod mac;
pub mod machine;
pub mod requirements;
pub mod selector;
pub mod states;

pub use hardware::{GpuSummary, HardwareDetails, PciDevice};
pub use host::{BareMetalHost, BareMetalHostSpec, BareMetalHostStatus, BmcDetails, Image};
pub use machine::{Machine, MachinePhase, MachineSpec, MachineStatus};
pub use states::{ErrorType, OperationalStatus, ProvisioningState};
