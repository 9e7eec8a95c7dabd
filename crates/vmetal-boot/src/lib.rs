//! The provisioning-network edge: DHCP (proxy or reservation), TFTP, HTTP boot and the agent
//! callback proxy.
//!
//! Configured by watching BareMetalHosts; packet parsing and reply building are pure functions,
//! sockets live in thin loops around them.
