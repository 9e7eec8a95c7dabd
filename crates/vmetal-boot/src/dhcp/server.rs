//! The DHCP socket loop: receive on 67 and 4011, call the pure reply function, send the
//! answer where RFC 2131 says, record leases. Nothing here decides anything.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::reply::{Decision, LeaseUpdate, reply};
use super::request::parse;
use super::{Arrival, DhcpConfig};
use crate::error::BootError;
use crate::hosts::HostsHandle;
use crate::leases::Leases;
use crate::metrics::Metrics;

/// Opens a UDP socket on `addr` that can send broadcasts and share the port, bound to
/// `interface` when given (so a multi-homed host answers only on the provisioning network).
pub fn bind_udp(
    what: &'static str,
    addr: SocketAddrV4,
    interface: Option<&str>,
) -> Result<UdpSocket, BootError> {
    let fail = |source| BootError::Bind {
        what,
        address: SocketAddr::V4(addr),
        interface: interface.map(str::to_owned),
        source,
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_broadcast(true).map_err(fail)?;
    if let Some(ifname) = interface {
        socket.bind_device(Some(ifname.as_bytes())).map_err(fail)?;
    }
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&SocketAddr::V4(addr).into()).map_err(fail)?;
    UdpSocket::from_std(socket.into()).map_err(fail)
}

/// Shared state of the DHCP loops.
#[derive(Debug, Clone)]
pub struct DhcpState {
    /// The configuration.
    pub config: Arc<DhcpConfig>,
    /// The live known-hosts set.
    pub hosts: HostsHandle,
    /// Reservation-mode leases.
    pub leases: Arc<Mutex<Leases>>,
    /// Where leases are persisted, if anywhere.
    pub lease_file: Option<PathBuf>,
    /// Counters.
    pub metrics: Metrics,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl DhcpState {
    /// Handles one datagram and returns what to send, if anything.
    pub fn handle(&self, datagram: &[u8], arrival: Arrival) -> Option<(Vec<u8>, SocketAddrV4)> {
        let req = match parse(datagram) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(from = %arrival.source, error = %e, "DHCP: dropped");
                Metrics::inc(&self.metrics.dhcp_ignored, "reason", "malformed");
                return None;
            }
        };
        Metrics::inc(
            &self.metrics.dhcp_requests,
            "type",
            req.message_type.as_str(),
        );
        let hosts = self.hosts.snapshot();
        let decision = {
            let leases = match self.leases.lock() {
                Ok(l) => l,
                Err(poisoned) => poisoned.into_inner(),
            };
            reply(&req, arrival, &self.config, &hosts, &leases, now_unix())
        };
        match decision {
            Decision::Ignore(reason) => {
                tracing::debug!(mac = %req.mac, reason = reason.as_str(), "DHCP: ignored");
                Metrics::inc(&self.metrics.dhcp_ignored, "reason", reason.as_str());
                None
            }
            Decision::Forget(mac) => {
                self.update_leases(LeaseUpdate::Forget(mac));
                None
            }
            Decision::Reply(reply) => {
                let bytes = match reply.to_bytes() {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "DHCP: reply not sent");
                        return None;
                    }
                };
                let kind = match reply.message_type() {
                    Some(dhcproto::v4::MessageType::Offer) => "offer",
                    Some(dhcproto::v4::MessageType::Ack) => "ack",
                    Some(dhcproto::v4::MessageType::Nak) => "nak",
                    _ => "other",
                };
                tracing::info!(
                    mac = %req.mac,
                    reply = kind,
                    port = arrival.port,
                    file = reply.message.fname_str().and_then(Result::ok).unwrap_or(""),
                    yiaddr = %reply.message.yiaddr(),
                    "DHCP"
                );
                Metrics::inc(&self.metrics.dhcp_replies, "type", kind);
                if let Some(update) = reply.lease {
                    self.update_leases(update);
                }
                Some((bytes, reply.dest))
            }
        }
    }

    fn update_leases(&self, update: LeaseUpdate) {
        let mut leases = match self.leases.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        let changed = match update {
            LeaseUpdate::Grant(mac, lease) => {
                // Renewals only move the expiry; written too, the file is small.
                leases.insert(mac, lease);
                true
            }
            LeaseUpdate::Forget(mac) => leases.remove(&mac).is_some(),
        };
        if changed
            && let Some(path) = &self.lease_file
            && let Err(e) = leases.save(path)
        {
            tracing::warn!(error = %e, "DHCP: leases not saved");
        }
    }
}

/// Serves one bound socket until the task is dropped.
pub async fn serve(socket: UdpSocket, port: u16, state: DhcpState) -> Result<(), BootError> {
    let mut buf = vec![0u8; 2048];
    loop {
        let (len, from) = socket
            .recv_from(&mut buf)
            .await
            .map_err(|source| BootError::Io {
                what: "DHCP",
                source,
            })?;
        let SocketAddr::V4(source) = from else {
            continue;
        };
        let Some(datagram) = buf.get(..len) else {
            continue;
        };
        if let Some((bytes, dest)) = state.handle(datagram, Arrival { port, source })
            && let Err(e) = socket.send_to(&bytes, dest).await
        {
            tracing::warn!(%dest, error = %e, "DHCP: send failed");
        }
    }
}

/// The wildcard address for `port`.
pub fn any(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)
}
