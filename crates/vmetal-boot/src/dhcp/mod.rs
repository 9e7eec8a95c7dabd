//! DHCP for network boot: parse a request, decide a reply, encode it; all pure. The socket
//! loop in [`server`] is the only part that touches the network.

pub mod bootfile;
pub mod reply;
pub mod request;
pub mod server;

use std::net::Ipv4Addr;

pub use bootfile::{BootFiles, BootTarget};
pub use reply::{Decision, IgnoreReason, LeaseUpdate, Reply, reply};
pub use request::{ClientKind, MessageType, Request, parse};

/// UDP port of DHCP servers (and relays).
pub const SERVER_PORT: u16 = 67;
/// UDP port of DHCP clients.
pub const CLIENT_PORT: u16 = 68;
/// UDP port of the PXE boot server (ProxyDHCP REQUEST/ACK).
pub const PXE_PORT: u16 = 4011;

/// How the DHCP server takes part on the provisioning network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// ProxyDHCP beside the site's DHCP server: boot information only, no addresses.
    Proxy,
    /// A full DHCP server leasing reserved addresses to known hosts.
    Reservation,
    /// No DHCP at all (TFTP and HTTP still run).
    Off,
}

impl std::str::FromStr for Mode {
    type Err = String;

    /// `proxy`, `reservation` or `off`, as on the command line.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "proxy" => Ok(Self::Proxy),
            "reservation" => Ok(Self::Reservation),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "unknown DHCP mode {other:?}: use proxy, reservation or off"
            )),
        }
    }
}

/// An address range handed out in reservation mode to known hosts without an `ip-address`
/// annotation (and, with `allow_unknown`, to anyone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// First address, inclusive.
    pub start: Ipv4Addr,
    /// Last address, inclusive.
    pub end: Ipv4Addr,
    /// Prefix length of the subnet.
    pub prefix_len: u8,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns_servers: Vec<Ipv4Addr>,
}

/// Everything the reply function needs besides the request and the host set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// Proxy, reservation or off.
    pub mode: Mode,
    /// Our address on the provisioning network: server identifier, next-server, TFTP.
    pub server_ip: Ipv4Addr,
    /// Base URL of our HTTP boot server, no trailing slash (`http://10.0.0.1:8080`).
    pub http_base: String,
    /// Binaries per architecture.
    pub boot_files: BootFiles,
    /// Boot (and, with a pool, lease to) MACs that belong to no BareMetalHost.
    pub allow_unknown: bool,
    /// Reservation mode: lease time in seconds.
    pub lease_secs: u32,
    /// Reservation mode: the dynamic range, if any.
    pub pool: Option<Pool>,
}

impl DhcpConfig {
    /// Defaults for a server at `server_ip` with HTTP on `http_port`.
    pub fn new(mode: Mode, server_ip: Ipv4Addr, http_port: u16) -> Self {
        let http_base = if http_port == 80 {
            format!("http://{server_ip}")
        } else {
            format!("http://{server_ip}:{http_port}")
        };
        Self {
            mode,
            server_ip,
            http_base,
            boot_files: BootFiles::default(),
            allow_unknown: false,
            lease_secs: 3600,
            pool: None,
        }
    }
}

/// Where a datagram arrived: which of our ports, from whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Our port it arrived on (67 or 4011).
    pub port: u16,
    /// The sender.
    pub source: std::net::SocketAddrV4,
}
