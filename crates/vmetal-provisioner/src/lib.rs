//! Node operations over a BMC: register, inspect, deploy, clean and power.
//!
//! The provisioner is what Ironic is to Metal3, minus the database: every operation is an
//! idempotent step derived from the `BareMetalHost` object. It also owns the agent API
//! (lookup, heartbeat, commands with a per-cycle token), iPXE script rendering and config drives.
