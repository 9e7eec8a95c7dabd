//! Deciding the answer to a DHCP request: ProxyDHCP boot information, a reservation lease, a
//! NAK or silence (with the reason, for metrics). Pure: hosts, leases and time come in.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{self, DhcpOption, Flags, HType, Message, Opcode};
use dhcproto::{Encodable, Encoder};
use vmetal_api::mac::MacAddress;

use super::bootfile::{self, BootTarget};
use super::request::{ClientKind, MessageType, Request};
use super::{Arrival, CLIENT_PORT, DhcpConfig, Mode, PXE_PORT, SERVER_PORT};
use crate::error::BootError;
use crate::hosts::{KnownHost, KnownHosts};
use crate::leases::{Lease, Leases};

/// Minimum BOOTP message size; some PXE ROMs drop shorter replies.
pub const MIN_REPLY_LEN: usize = 300;
/// PXE vendor option 43: sub-option 6 (discovery control) = 8, "boot the file in the header,
/// skip boot-server discovery", then End.
pub const PXE_DISCOVERY_CONTROL: [u8; 4] = [6, 1, 8, 255];

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// `--mode off`.
    ModeOff,
    /// The MAC belongs to no BareMetalHost and `--allow-unknown` is not set.
    UnknownMac,
    /// Proxy mode and the client is not PXE or HTTP boot firmware.
    NotNetboot,
    /// No boot file for the client's architecture.
    UnsupportedArch,
    /// The client is talking to another DHCP server.
    NotForUs,
    /// A message type this server does not answer here.
    UnsupportedMessage,
    /// Reservation mode and no address for this host (no annotation, no free pool address).
    NoAddress,
}

impl IgnoreReason {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ModeOff => "mode_off",
            Self::UnknownMac => "unknown_mac",
            Self::NotNetboot => "not_netboot",
            Self::UnsupportedArch => "unsupported_arch",
            Self::NotForUs => "not_for_us",
            Self::UnsupportedMessage => "unsupported_message",
            Self::NoAddress => "no_address",
        }
    }
}

/// A change to the lease table that goes with a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseUpdate {
    /// The client now holds this lease (sent with an ACK).
    Grant(MacAddress, Lease),
    /// The client gave its address back (RELEASE or DECLINE).
    Forget(MacAddress),
}

/// A reply to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The message.
    pub message: Message,
    /// Where to send it.
    pub dest: SocketAddrV4,
    /// The lease to record once it is sent.
    pub lease: Option<LeaseUpdate>,
    /// Option 82 from the request, echoed unchanged to the relay (RFC 3046), last.
    pub relay_info: Option<Vec<u8>>,
}

impl Reply {
    /// The message type (OFFER, ACK or NAK).
    pub fn message_type(&self) -> Option<v4::MessageType> {
        self.message.opts().msg_type()
    }

    /// The datagram, padded with zeros to the 300-byte BOOTP minimum.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BootError> {
        let mut buf = Vec::with_capacity(MIN_REPLY_LEN);
        self.message
            .encode(&mut Encoder::new(&mut buf))
            .map_err(|e| BootError::EncodeDhcp {
                mac: mac_of(&self.message),
                reason: e.to_string(),
            })?;
        if let Some(info) = &self.relay_info
            && let Ok(len) = u8::try_from(info.len())
            && buf.last() == Some(&255)
        {
            // dhcproto keys an unknown 82 inconsistently and emits it twice; insert it
            // ourselves just before End.
            buf.pop();
            buf.push(82);
            buf.push(len);
            buf.extend_from_slice(info);
            buf.push(255);
        }
        if buf.len() < MIN_REPLY_LEN {
            buf.resize(MIN_REPLY_LEN, 0);
        }
        Ok(buf)
    }
}

fn mac_of(message: &Message) -> String {
    message
        .chaddr()
        .get(..6)
        .and_then(|m| <[u8; 6]>::try_from(m).ok())
        .map(|m| MacAddress::from_octets(m).to_string())
        .unwrap_or_default()
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send this.
    Reply(Box<Reply>),
    /// Stay silent, for this reason.
    Ignore(IgnoreReason),
    /// Stay silent but drop the client's lease.
    Forget(MacAddress),
}

/// Address and options for a lease.
struct Addressing {
    address: Ipv4Addr,
    netmask: Ipv4Addr,
    gateway: Option<Ipv4Addr>,
    dns_servers: Vec<Ipv4Addr>,
    ntp_servers: Vec<Ipv4Addr>,
}

/// Decides the answer to `req`, which arrived as `arrival`, at time `now` (Unix seconds).
pub fn reply(
    req: &Request,
    arrival: Arrival,
    cfg: &DhcpConfig,
    hosts: &KnownHosts,
    leases: &Leases,
    now: u64,
) -> Decision {
    if cfg.mode == Mode::Off {
        return Decision::Ignore(IgnoreReason::ModeOff);
    }
    let host = hosts.get(&req.mac);
    if host.is_none() && !cfg.allow_unknown {
        return Decision::Ignore(IgnoreReason::UnknownMac);
    }
    let netboot = req.client_kind() != ClientKind::Plain;
    if arrival.port == PXE_PORT {
        // The PXE boot server: firmware unicasts a REQUEST after a ProxyDHCP offer.
        if !netboot {
            return Decision::Ignore(IgnoreReason::NotNetboot);
        }
        if req.message_type != MessageType::Request {
            return Decision::Ignore(IgnoreReason::UnsupportedMessage);
        }
        return boot_only(req, arrival, cfg, v4::MessageType::Ack);
    }
    match cfg.mode {
        Mode::Off => Decision::Ignore(IgnoreReason::ModeOff),
        Mode::Proxy => {
            if !netboot {
                return Decision::Ignore(IgnoreReason::NotNetboot);
            }
            match req.message_type {
                MessageType::Discover => boot_only(req, arrival, cfg, v4::MessageType::Offer),
                // A REQUEST on 67 normally selects the site server's offer; answer only
                // one addressed to us.
                MessageType::Request if req.server_id == Some(cfg.server_ip) => {
                    boot_only(req, arrival, cfg, v4::MessageType::Ack)
                }
                MessageType::Request => Decision::Ignore(IgnoreReason::NotForUs),
                _ => Decision::Ignore(IgnoreReason::UnsupportedMessage),
            }
        }
        Mode::Reservation => reservation(req, arrival, cfg, host, leases, now),
    }
}

fn reservation(
    req: &Request,
    arrival: Arrival,
    cfg: &DhcpConfig,
    host: Option<&KnownHost>,
    leases: &Leases,
    now: u64,
) -> Decision {
    match req.message_type {
        MessageType::Release | MessageType::Decline => {
            if leases.get(&req.mac).is_some() && req.server_id.is_none_or(|s| s == cfg.server_ip) {
                Decision::Forget(req.mac)
            } else {
                Decision::Ignore(IgnoreReason::NotForUs)
            }
        }
        MessageType::Discover | MessageType::Request => {
            if req.message_type == MessageType::Request
                && req.server_id.is_some_and(|s| s != cfg.server_ip)
            {
                return Decision::Ignore(IgnoreReason::NotForUs);
            }
            let Some(addressing) = addressing(req.mac, host, cfg, leases, now) else {
                return Decision::Ignore(IgnoreReason::NoAddress);
            };
            let boot = if req.client_kind() == ClientKind::Plain {
                None
            } else {
                bootfile::choose(req, &cfg.boot_files, &cfg.http_base)
            };
            if req.message_type == MessageType::Discover {
                return Decision::Reply(Box::new(lease_reply(
                    req,
                    arrival,
                    cfg,
                    &addressing,
                    boot.as_ref(),
                    v4::MessageType::Offer,
                )));
            }
            let wanted = req
                .requested_ip
                .or((!req.ciaddr.is_unspecified()).then_some(req.ciaddr));
            if wanted != Some(addressing.address) {
                return Decision::Reply(Box::new(nak(req, cfg)));
            }
            let mut reply = lease_reply(
                req,
                arrival,
                cfg,
                &addressing,
                boot.as_ref(),
                v4::MessageType::Ack,
            );
            reply.lease = Some(LeaseUpdate::Grant(
                req.mac,
                Lease {
                    address: addressing.address,
                    expires_unix: now.saturating_add(u64::from(cfg.lease_secs)),
                },
            ));
            Decision::Reply(Box::new(reply))
        }
        _ => Decision::Ignore(IgnoreReason::UnsupportedMessage),
    }
}

/// The host's reserved address, else its previous pool lease, else the first free pool
/// address.
fn addressing(
    mac: MacAddress,
    host: Option<&KnownHost>,
    cfg: &DhcpConfig,
    leases: &Leases,
    now: u64,
) -> Option<Addressing> {
    if let Some(r) = host.and_then(|h| h.reservation.as_ref()) {
        return Some(Addressing {
            address: r.address,
            netmask: r.netmask(),
            gateway: r.gateway,
            dns_servers: r.dns_servers.clone(),
            ntp_servers: r.ntp_servers.clone(),
        });
    }
    let pool = cfg.pool.as_ref()?;
    let (start, end) = (u32::from(pool.start), u32::from(pool.end));
    let in_pool = |a: Ipv4Addr| (start..=end).contains(&u32::from(a)) && a != cfg.server_ip;
    let previous = leases
        .get(&mac)
        .map(|l| l.address)
        .filter(|a| in_pool(*a) && !leases.held_by_other(*a, &mac, now));
    let address = previous.or_else(|| {
        (start..=end)
            .map(Ipv4Addr::from)
            .find(|a| in_pool(*a) && !leases.held_by_other(*a, &mac, now))
    })?;
    let bits = u32::from(pool.prefix_len.min(32));
    Some(Addressing {
        address,
        netmask: Ipv4Addr::from(u32::MAX.checked_shl(32 - bits).unwrap_or(0)),
        gateway: pool.gateway,
        dns_servers: pool.dns_servers.clone(),
        ntp_servers: Vec::new(),
    })
}

/// RFC 2131 §4.1 destination for a reply to port 67 traffic; 4011 answers go back to the
/// sender. Unicast to an unconfigured client needs an ARP entry we cannot add from a UDP
/// socket, so those get the broadcast address.
fn destination(req: &Request, arrival: Arrival) -> SocketAddrV4 {
    if arrival.port == PXE_PORT && !arrival.source.ip().is_unspecified() {
        return arrival.source;
    }
    if !req.giaddr.is_unspecified() {
        return SocketAddrV4::new(req.giaddr, SERVER_PORT);
    }
    if !req.ciaddr.is_unspecified() {
        return SocketAddrV4::new(req.ciaddr, CLIENT_PORT);
    }
    SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
}

/// Header fields common to every reply.
fn base(req: &Request, cfg: &DhcpConfig, kind: v4::MessageType) -> Message {
    let mut msg = Message::default();
    msg.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_xid(req.xid)
        .set_secs(0)
        .set_flags(Flags::new(req.flags))
        .set_hops(0)
        .set_chaddr(&req.mac.octets())
        .set_giaddr(req.giaddr)
        .set_ciaddr(Ipv4Addr::UNSPECIFIED)
        .set_yiaddr(Ipv4Addr::UNSPECIFIED)
        .set_siaddr(Ipv4Addr::UNSPECIFIED);
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(cfg.server_ip));
    msg
}

/// Adds next-server, file and the PXE options for a network-boot client.
fn add_boot(msg: &mut Message, req: &Request, cfg: &DhcpConfig, target: &BootTarget) {
    msg.set_siaddr(cfg.server_ip);
    let file = target.file();
    if file.len() < 128 {
        msg.set_fname_str(file);
    }
    let opts = msg.opts_mut();
    if file.len() >= 128 {
        opts.insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    }
    match req.client_kind() {
        ClientKind::Http => {
            opts.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
        }
        ClientKind::Pxe => {
            opts.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
            opts.insert(DhcpOption::VendorExtensions(PXE_DISCOVERY_CONTROL.to_vec()));
        }
        ClientKind::Plain => {}
    }
    if let Some(id) = &req.machine_id {
        opts.insert(DhcpOption::ClientMachineIdentifier(id.clone()));
    }
}

/// A ProxyDHCP OFFER or ACK: boot information, no address.
fn boot_only(req: &Request, arrival: Arrival, cfg: &DhcpConfig, kind: v4::MessageType) -> Decision {
    let Some(target) = bootfile::choose(req, &cfg.boot_files, &cfg.http_base) else {
        return Decision::Ignore(IgnoreReason::UnsupportedArch);
    };
    let mut message = base(req, cfg, kind);
    if kind == v4::MessageType::Ack {
        message.set_ciaddr(req.ciaddr);
    }
    add_boot(&mut message, req, cfg, &target);
    Decision::Reply(Box::new(Reply {
        message,
        dest: destination(req, arrival),
        lease: None,
        relay_info: req.relay_info.clone(),
    }))
}

fn lease_reply(
    req: &Request,
    arrival: Arrival,
    cfg: &DhcpConfig,
    a: &Addressing,
    boot: Option<&BootTarget>,
    kind: v4::MessageType,
) -> Reply {
    let mut message = base(req, cfg, kind);
    message.set_yiaddr(a.address);
    if kind == v4::MessageType::Ack {
        message.set_ciaddr(req.ciaddr);
    }
    if let Some(target) = boot {
        add_boot(&mut message, req, cfg, target);
    }
    let opts = message.opts_mut();
    opts.insert(DhcpOption::SubnetMask(a.netmask));
    if let Some(gw) = a.gateway {
        opts.insert(DhcpOption::Router(vec![gw]));
    }
    if !a.dns_servers.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(a.dns_servers.clone()));
    }
    if !a.ntp_servers.is_empty() {
        opts.insert(DhcpOption::NtpServers(a.ntp_servers.clone()));
    }
    opts.insert(DhcpOption::AddressLeaseTime(cfg.lease_secs));
    opts.insert(DhcpOption::Renewal(cfg.lease_secs / 2));
    opts.insert(DhcpOption::Rebinding(cfg.lease_secs / 8 * 7));
    Reply {
        message,
        dest: destination(req, arrival),
        lease: None,
        relay_info: req.relay_info.clone(),
    }
}

fn nak(req: &Request, cfg: &DhcpConfig) -> Reply {
    let message = base(req, cfg, v4::MessageType::Nak);
    // RFC 2131 §4.3.2: NAKs are broadcast unless relayed.
    let dest = if req.giaddr.is_unspecified() {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
    } else {
        SocketAddrV4::new(req.giaddr, SERVER_PORT)
    };
    Reply {
        message,
        dest,
        lease: None,
        relay_info: req.relay_info.clone(),
    }
}
