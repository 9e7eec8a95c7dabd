//! IPv6 router advertisements for booting hosts. iPXE configures IPv6 as well as DHCPv4 before
//! it runs anything, and on a network without an IPv6 router it waits about 16 s for an
//! answer to its router solicitations. Answering a known host's solicitation with an
//! advertisement that announces nothing (router lifetime 0, no prefixes, no DHCPv6 flags) ends
//! that wait at once and changes no host's routes or addresses. Where a real router
//! advertises, the server stays quiet and leaves the answers to it.
//!
//! - [`message`] — parse a Router Solicitation, build the Router Advertisement (pure).
//! - [`respond`] — whether to answer (known host, no real router heard lately; pure).
//! - [`server`] — the raw ICMPv6 socket loop around them.

pub mod message;
pub mod respond;
pub mod server;
