//! Virtual IPMI lanplus BMC (UDP) in front of a simulated server.
