//! The lab: virtual BMCs (Redfish and IPMI) in front of simulated servers or QEMU VMs.
//!
//! Lets the controllers, the `vmetal up --lab N` demo and the end-to-end tests drive whole racks
//! with no hardware, through the same protocols real BMCs speak.
