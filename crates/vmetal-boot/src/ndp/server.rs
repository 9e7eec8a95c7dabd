//! The router-advertisement socket loop: a raw ICMPv6 socket on the provisioning interface,
//! joined to all-routers, around [`super::respond::Responder`].

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::message::empty_advertisement;
use super::respond::{Action, Responder};
use crate::error::BootError;
use crate::hosts::HostsHandle;
use crate::metrics::Metrics;

/// Link-local all-routers group, where solicitations go.
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// Open the raw ICMPv6 socket on `interface`. Neighbor discovery messages are only valid with
/// hop limit 255, so that is what ours carry. It is driven through tokio's datagram wrapper,
/// which only calls `recvfrom`/`sendto`; a raw socket answers those like a UDP one.
pub fn bind(interface: &str) -> Result<UdpSocket, BootError> {
    let fail = |source| BootError::Bind {
        what: "IPv6 router advertisements",
        address: SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        interface: Some(interface.to_owned()),
        source,
    };
    let index =
        nix::net::if_::if_nametoindex(interface).map_err(|e| fail(std::io::Error::from(e)))?;
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(fail)?;
    socket
        .bind_device(Some(interface.as_bytes()))
        .map_err(fail)?;
    socket
        .join_multicast_v6(&ALL_ROUTERS, index)
        .map_err(fail)?;
    socket.set_multicast_hops_v6(255).map_err(fail)?;
    socket.set_unicast_hops_v6(255).map_err(fail)?;
    socket.set_multicast_if_v6(index).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    UdpSocket::from_std(std::net::UdpSocket::from(socket)).map_err(fail)
}

/// Answer router solicitations from known hosts until the socket fails.
pub async fn serve(
    socket: UdpSocket,
    hosts: HostsHandle,
    metrics: Metrics,
) -> Result<(), BootError> {
    let io = |source| BootError::Io {
        what: "IPv6 router advertisements",
        source,
    };
    let answer = empty_advertisement();
    let mut buf = [0u8; 1500];
    let mut responder = Responder::default();
    loop {
        let (len, from) = socket.recv_from(&mut buf).await.map_err(io)?;
        let SocketAddr::V6(from) = from else { continue };
        let known = |mac: &_| hosts.snapshot().get(mac).is_some();
        match responder.handle(&buf[..len], from.ip(), known, Instant::now()) {
            Action::Answer => {}
            Action::Decline(why) => {
                Metrics::inc(&metrics.ra_solicitations, "result", why);
                continue;
            }
            Action::RouterHeard { first } => {
                if first {
                    tracing::info!(router = %from.ip(), "an IPv6 router advertises here; leaving router solicitations to it");
                }
                continue;
            }
            Action::Ignore => continue,
        }
        let to = SocketAddrV6::new(*from.ip(), 0, 0, from.scope_id());
        match socket.send_to(&answer, to).await {
            Ok(_) => Metrics::inc(&metrics.ra_solicitations, "result", "answered"),
            Err(e) => {
                tracing::debug!(to = %to, error = %e, "router advertisement not sent");
                Metrics::inc(&metrics.ra_solicitations, "result", "send_failed");
            }
        }
    }
}
