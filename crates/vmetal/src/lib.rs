//! The `vmetal` binary's library half: `vmetal up`, which wires the embedded API server, the
//! controller, the agent API and (with `--lab N`) a simulated rack into one process.
//!
//! It is a library so the end-to-end tests run exactly what users run.

pub mod controller_cmd;
pub mod demo;
pub mod observe;
pub mod tenant;
pub mod up;
pub mod vms;
