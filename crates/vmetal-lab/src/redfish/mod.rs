//! Virtual Redfish BMC (axum, HTTP and HTTPS) in front of simulated servers.
