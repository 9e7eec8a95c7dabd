//! Arbitrary bytes into the DHCP request handler's pure path: `parse`, then `reply` in proxy
//! and reservation mode on ports 67 and 4011, then encoding. Nothing may panic, and every
//! reply must be a 300-byte-minimum BOOTREPLY that echoes the request's xid and decodes.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::Decodable;
use libfuzzer_sys::fuzz_target;
use vmetal_api::ProvisioningState;
use vmetal_boot::dhcp::{Arrival, Decision, DhcpConfig, Mode, Pool, parse, reply};
use vmetal_boot::hosts::{KnownHost, KnownHosts, Reservation};
use vmetal_boot::leases::{Lease, Leases};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fuzz_target!(|data: &[u8]| {
    // The first byte picks the situation, the rest is the datagram.
    let Some((&knobs, datagram)) = data.split_first() else {
        return;
    };
    let Ok(req) = parse(datagram) else {
        return;
    };
    let mut hosts = KnownHosts::new();
    if knobs & 1 != 0 {
        let reservation = (knobs & 2 != 0).then(|| Reservation {
            address: Ipv4Addr::new(10, 0, 0, 50),
            prefix_len: knobs >> 3,
            gateway: Some(SERVER_IP),
            dns_servers: vec![SERVER_IP],
            ntp_servers: vec![],
        });
        let host = KnownHost {
            name: "fuzz/host".into(),
            state: ProvisioningState::Inspecting,
            reservation,
        };
        hosts.insert(req.mac, host);
    }
    let mut leases = Leases::new();
    if knobs & 4 != 0 {
        let lease = Lease {
            address: Ipv4Addr::new(10, 0, 0, 100),
            expires_unix: 1000,
        };
        leases.insert(req.mac, lease);
    }
    for mode in [Mode::Proxy, Mode::Reservation] {
        let mut cfg = DhcpConfig::new(mode, SERVER_IP, 8080);
        cfg.allow_unknown = knobs & 0x80 != 0;
        cfg.pool = (knobs & 0x40 != 0).then(|| Pool {
            start: Ipv4Addr::new(10, 0, 0, 100),
            end: Ipv4Addr::new(10, 0, 0, 103),
            prefix_len: 24,
            gateway: None,
            dns_servers: vec![],
        });
        for port in [67, 4011] {
            let arrival = Arrival {
                port,
                source: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 68),
            };
            let Decision::Reply(r) = reply(&req, arrival, &cfg, &hosts, &leases, 500) else {
                continue;
            };
            let Ok(bytes) = r.to_bytes() else {
                continue;
            };
            assert!(bytes.len() >= 300, "reply shorter than 300 bytes");
            assert_eq!(bytes[0], 2, "reply is not a BOOTREPLY");
            assert_eq!(bytes[4..8], req.xid.to_be_bytes(), "reply lost the xid");
            assert!(
                dhcproto::v4::Message::from_bytes(&bytes).is_ok(),
                "our reply does not decode"
            );
        }
    }
});
