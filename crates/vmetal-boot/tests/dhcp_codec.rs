//! DHCP replies compared byte for byte with packets written out by hand: BIOS, UEFI x64 (arch
//! 7 and 9), ARM64, HTTP boot and iPXE clients in proxy and reservation mode, relayed
//! requests, port 4011, the 300-byte minimum; and bad input that must never panic.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{Ipv4Addr, SocketAddrV4};

use proptest::prelude::*;
use vmetal_api::ProvisioningState;
use vmetal_api::mac::MacAddress;
use vmetal_boot::dhcp::{
    Arrival, Decision, DhcpConfig, IgnoreReason, LeaseUpdate, Mode, PXE_PORT, SERVER_PORT, parse,
    reply,
};
use vmetal_boot::hosts::{KnownHost, KnownHosts, Reservation};
use vmetal_boot::leases::Leases;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const XID: u32 = 0xdead_beef;
const GUID: [u8; 17] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

/// A request as firmware sends it: fixed header, cookie, options in the given order, End.
fn request(msg_type: u8, ciaddr: Ipv4Addr, giaddr: Ipv4Addr, opts: &[(u8, &[u8])]) -> Vec<u8> {
    let mut p = vec![1, 1, 6, 0];
    p.extend(XID.to_be_bytes());
    p.extend([0, 4, 0x80, 0]); // secs 4, broadcast flag
    p.extend(ciaddr.octets());
    p.extend([0; 4]);
    p.extend([0; 4]);
    p.extend(giaddr.octets());
    p.extend(MAC);
    p.extend([0; 10 + 64 + 128]);
    p.extend([99, 130, 83, 99]);
    p.extend([53, 1, msg_type]);
    for (code, data) in opts {
        p.push(*code);
        p.push(data.len() as u8);
        p.extend(*data);
    }
    p.push(255);
    p
}

/// The reply we expect: header fields, then options (already in code order), End, zero
/// padding to 300 bytes.
fn expected(
    ciaddr: Ipv4Addr,
    yiaddr: Ipv4Addr,
    siaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    file: &str,
    opts: &[(u8, &[u8])],
) -> Vec<u8> {
    let mut p = vec![2, 1, 6, 0];
    p.extend(XID.to_be_bytes());
    p.extend([0, 0, 0x80, 0]);
    p.extend(ciaddr.octets());
    p.extend(yiaddr.octets());
    p.extend(siaddr.octets());
    p.extend(giaddr.octets());
    p.extend(MAC);
    p.extend([0; 10 + 64]);
    let mut f = file.as_bytes().to_vec();
    f.resize(128, 0);
    p.extend(f);
    p.extend([99, 130, 83, 99]);
    for (code, data) in opts {
        p.push(*code);
        p.push(data.len() as u8);
        p.extend(*data);
    }
    p.push(255);
    if p.len() < 300 {
        p.resize(300, 0);
    }
    p
}

fn pxe_opts<'a>(vendor: &'a [u8], arch: &'a [u8]) -> Vec<(u8, &'a [u8])> {
    vec![
        (55, &[1, 3, 43, 60, 66, 67][..]),
        (60, vendor),
        (93, arch),
        (94, &[1, 3, 16][..]),
        (97, &GUID[..]),
    ]
}

fn mac() -> MacAddress {
    MacAddress::from_octets(MAC)
}

fn hosts(reservation: Option<Reservation>) -> KnownHosts {
    let mut set = KnownHosts::new();
    set.insert(
        mac(),
        KnownHost {
            name: "default/server-1".into(),
            state: ProvisioningState::Inspecting,
            reservation,
        },
    );
    set
}

fn from_client(port: u16) -> Arrival {
    Arrival {
        port,
        source: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    }
}

fn cfg(mode: Mode) -> DhcpConfig {
    DhcpConfig::new(mode, SERVER, 8080)
}

fn answer(packet: &[u8], arrival: Arrival, cfg: &DhcpConfig, hosts: &KnownHosts) -> Decision {
    reply(
        &parse(packet).unwrap(),
        arrival,
        cfg,
        hosts,
        &Leases::new(),
        1000,
    )
}

fn sent(decision: Decision) -> (Vec<u8>, SocketAddrV4, Option<LeaseUpdate>) {
    match decision {
        Decision::Reply(r) => (r.to_bytes().unwrap(), r.dest, r.lease),
        other => panic!("expected a reply, got {other:?}"),
    }
}

const BCAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
const ZERO: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

fn proxy_offer(file: &str, extra: &[(u8, &[u8])]) -> Vec<u8> {
    let mut opts: Vec<(u8, &[u8])> = vec![
        (43, &[6, 1, 8, 255]),
        (53, &[2]),
        (54, &[10, 0, 0, 1]),
        (60, b"PXEClient"),
        (97, &GUID),
    ];
    opts.extend_from_slice(extra);
    opts.sort_by_key(|(c, _)| *c);
    expected(ZERO, ZERO, SERVER, ZERO, file, &opts)
}

#[test]
fn bios_proxy_offer() {
    let req = request(
        1,
        ZERO,
        ZERO,
        &pxe_opts(b"PXEClient:Arch:00000:UNDI:002001", &[0, 0]),
    );
    let (bytes, dest, lease) = sent(answer(
        &req,
        from_client(67),
        &cfg(Mode::Proxy),
        &hosts(None),
    ));
    assert_eq!(bytes, proxy_offer("undionly.kpxe", &[]));
    assert_eq!(bytes.len(), 300, "padded to the BOOTP minimum");
    assert_eq!((dest, lease), (BCAST, None));
}

#[test]
fn uefi_x64_arch_7_and_9_proxy_offer_and_snponly_override() {
    for arch in [7u8, 9] {
        let vendor = format!("PXEClient:Arch:0000{arch}:UNDI:003016");
        let req = request(1, ZERO, ZERO, &pxe_opts(vendor.as_bytes(), &[0, arch]));
        let (bytes, _, _) = sent(answer(
            &req,
            from_client(67),
            &cfg(Mode::Proxy),
            &hosts(None),
        ));
        assert_eq!(bytes, proxy_offer("ipxe.efi", &[]), "arch {arch}");
        let mut snp = cfg(Mode::Proxy);
        snp.boot_files.efi_x86 = "snponly.efi".into();
        let (bytes, _, _) = sent(answer(&req, from_client(67), &snp, &hosts(None)));
        assert_eq!(bytes, proxy_offer("snponly.efi", &[]), "arch {arch}");
    }
}

#[test]
fn arm64_proxy_offer() {
    let req = request(
        1,
        ZERO,
        ZERO,
        &pxe_opts(b"PXEClient:Arch:00011:UNDI:003016", &[0, 11]),
    );
    let (bytes, _, _) = sent(answer(
        &req,
        from_client(67),
        &cfg(Mode::Proxy),
        &hosts(None),
    ));
    assert_eq!(bytes, proxy_offer("snp-arm64.efi", &[]));
}

#[test]
fn uefi_http_boot_gets_a_url_and_httpclient() {
    let req = request(
        1,
        ZERO,
        ZERO,
        &pxe_opts(b"HTTPClient:Arch:00016:UNDI:003016", &[0, 16]),
    );
    let (bytes, _, _) = sent(answer(
        &req,
        from_client(67),
        &cfg(Mode::Proxy),
        &hosts(None),
    ));
    let want = expected(
        ZERO,
        ZERO,
        SERVER,
        ZERO,
        "http://10.0.0.1:8080/ipxe/ipxe.efi",
        &[
            (53, &[2]),
            (54, &[10, 0, 0, 1]),
            (60, b"HTTPClient"),
            (97, &GUID),
        ],
    );
    assert_eq!(bytes, want);
}

#[test]
fn ipxe_gets_its_script_url_by_user_class_or_option_175() {
    let want = proxy_offer("http://10.0.0.1:8080/boot/52:54:00:12:34:56.ipxe", &[]);
    let mut by_user_class = pxe_opts(b"PXEClient:Arch:00000:UNDI:002001", &[0, 0]);
    by_user_class.push((77, b"iPXE"));
    let mut by_175 = pxe_opts(b"PXEClient:Arch:00007:UNDI:003010", &[0, 7]);
    by_175.push((175, &[177, 5, 1, 0x10, 0xec, 0x81, 0x39]));
    for opts in [by_user_class, by_175] {
        let req = request(1, ZERO, ZERO, &opts);
        let (bytes, _, _) = sent(answer(
            &req,
            from_client(67),
            &cfg(Mode::Proxy),
            &hosts(None),
        ));
        assert_eq!(bytes, want);
    }
}

#[test]
fn proxy_request_on_4011_is_acked_to_the_sender() {
    let client = Ipv4Addr::new(10, 0, 0, 77);
    let mut opts = pxe_opts(b"PXEClient:Arch:00007:UNDI:003016", &[0, 7]);
    opts.push((54, &[10, 0, 0, 1]));
    let req = request(3, client, ZERO, &opts);
    let arrival = Arrival {
        port: PXE_PORT,
        source: SocketAddrV4::new(client, 4011),
    };
    let (bytes, dest, _) = sent(answer(&req, arrival, &cfg(Mode::Proxy), &hosts(None)));
    let want = expected(
        client,
        ZERO,
        SERVER,
        ZERO,
        "ipxe.efi",
        &[
            (43, &[6, 1, 8, 255]),
            (53, &[5]),
            (54, &[10, 0, 0, 1]),
            (60, b"PXEClient"),
            (97, &GUID),
        ],
    );
    assert_eq!(bytes, want);
    assert_eq!(dest, SocketAddrV4::new(client, 4011));
}

#[test]
fn proxy_request_on_67_only_when_addressed_to_us() {
    let mut opts = pxe_opts(b"PXEClient:Arch:00000:UNDI:002001", &[0, 0]);
    opts.push((54, &[10, 0, 0, 254]));
    let req = request(3, ZERO, ZERO, &opts);
    assert_eq!(
        answer(&req, from_client(67), &cfg(Mode::Proxy), &hosts(None)),
        Decision::Ignore(IgnoreReason::NotForUs)
    );
    opts.pop();
    opts.push((54, &[10, 0, 0, 1]));
    let req = request(3, ZERO, ZERO, &opts);
    let (bytes, _, _) = sent(answer(
        &req,
        from_client(67),
        &cfg(Mode::Proxy),
        &hosts(None),
    ));
    let decoded =
        <dhcproto::v4::Message as dhcproto::Decodable>::decode(&mut dhcproto::Decoder::new(&bytes))
            .unwrap();
    assert_eq!(
        decoded.opts().msg_type(),
        Some(dhcproto::v4::MessageType::Ack)
    );
}

#[test]
fn relayed_request_goes_back_to_the_relay_with_option_82() {
    let relay = Ipv4Addr::new(192, 168, 5, 1);
    let mut opts = pxe_opts(b"PXEClient:Arch:00000:UNDI:002001", &[0, 0]);
    let agent_info: &[u8] = &[1, 4, b'e', b't', b'h', b'0'];
    opts.push((82, agent_info));
    let req = request(1, ZERO, relay, &opts);
    let (bytes, dest, _) = sent(answer(
        &req,
        from_client(67),
        &cfg(Mode::Proxy),
        &hosts(None),
    ));
    let want = expected(
        ZERO,
        ZERO,
        SERVER,
        relay,
        "undionly.kpxe",
        &[
            (43, &[6, 1, 8, 255]),
            (53, &[2]),
            (54, &[10, 0, 0, 1]),
            (60, b"PXEClient"),
            (97, &GUID),
            (82, agent_info),
        ],
    );
    assert_eq!(bytes, want);
    assert_eq!(dest, SocketAddrV4::new(relay, SERVER_PORT));
}

fn reservation() -> Reservation {
    Reservation {
        address: Ipv4Addr::new(10, 0, 0, 50),
        prefix_len: 24,
        gateway: Some(Ipv4Addr::new(10, 0, 0, 254)),
        dns_servers: vec![Ipv4Addr::new(10, 0, 0, 53)],
        ntp_servers: vec![Ipv4Addr::new(10, 0, 0, 123)],
    }
}

fn lease_opts(msg_type: u8) -> Vec<(u8, Vec<u8>)> {
    vec![
        (1, vec![255, 255, 255, 0]),
        (3, vec![10, 0, 0, 254]),
        (6, vec![10, 0, 0, 53]),
        (42, vec![10, 0, 0, 123]),
        (43, vec![6, 1, 8, 255]),
        (51, 3600u32.to_be_bytes().to_vec()),
        (53, vec![msg_type]),
        (54, vec![10, 0, 0, 1]),
        (58, 1800u32.to_be_bytes().to_vec()),
        (59, 3150u32.to_be_bytes().to_vec()),
        (60, b"PXEClient".to_vec()),
        (97, GUID.to_vec()),
    ]
}

#[test]
fn reservation_offer_and_ack_for_a_bios_client() {
    let hosts = hosts(Some(reservation()));
    let yiaddr = Ipv4Addr::new(10, 0, 0, 50);
    let discover = request(
        1,
        ZERO,
        ZERO,
        &pxe_opts(b"PXEClient:Arch:00000:UNDI:002001", &[0, 0]),
    );
    let (bytes, dest, lease) = sent(answer(
        &discover,
        from_client(67),
        &cfg(Mode::Reservation),
        &hosts,
    ));
    let opts = lease_opts(2);
    let opts: Vec<(u8, &[u8])> = opts.iter().map(|(c, d)| (*c, d.as_slice())).collect();
    assert_eq!(
        bytes,
        expected(ZERO, yiaddr, SERVER, ZERO, "undionly.kpxe", &opts)
    );
    assert_eq!((dest, lease), (BCAST, None));

    let mut req_opts = pxe_opts(b"PXEClient:Arch:00000:UNDI:002001", &[0, 0]);
    req_opts.push((50, &[10, 0, 0, 50]));
    req_opts.push((54, &[10, 0, 0, 1]));
    let request_packet = request(3, ZERO, ZERO, &req_opts);
    let (bytes, _, lease) = sent(answer(
        &request_packet,
        from_client(67),
        &cfg(Mode::Reservation),
        &hosts,
    ));
    let opts = lease_opts(5);
    let opts: Vec<(u8, &[u8])> = opts.iter().map(|(c, d)| (*c, d.as_slice())).collect();
    assert_eq!(
        bytes,
        expected(ZERO, yiaddr, SERVER, ZERO, "undionly.kpxe", &opts)
    );
    match lease {
        Some(LeaseUpdate::Grant(m, l)) => {
            assert_eq!(m, mac());
            assert_eq!(l.address, yiaddr);
            assert_eq!(l.expires_unix, 1000 + 3600);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn reservation_plain_client_gets_an_address_without_boot_options() {
    let hosts = hosts(Some(reservation()));
    let discover = request(1, ZERO, ZERO, &[(55, &[1, 3, 6])]);
    let (bytes, _, _) = sent(answer(
        &discover,
        from_client(67),
        &cfg(Mode::Reservation),
        &hosts,
    ));
    let opts = lease_opts(2);
    let opts: Vec<(u8, &[u8])> = opts
        .iter()
        .filter(|(c, _)| ![43, 60, 97].contains(c))
        .map(|(c, d)| (*c, d.as_slice()))
        .collect();
    assert_eq!(
        bytes,
        expected(ZERO, Ipv4Addr::new(10, 0, 0, 50), ZERO, ZERO, "", &opts)
    );
}

#[test]
fn reservation_wrong_address_is_naked_and_other_servers_are_left_alone() {
    let hosts = hosts(Some(reservation()));
    let req = request(3, ZERO, ZERO, &[(50, &[10, 0, 0, 99])]);
    let (bytes, dest, lease) = sent(answer(
        &req,
        from_client(67),
        &cfg(Mode::Reservation),
        &hosts,
    ));
    assert_eq!(
        bytes,
        expected(
            ZERO,
            ZERO,
            ZERO,
            ZERO,
            "",
            &[(53, &[6]), (54, &[10, 0, 0, 1])]
        )
    );
    assert_eq!((dest, lease), (BCAST, None));
    let req = request(
        3,
        ZERO,
        ZERO,
        &[(50, &[10, 0, 0, 50]), (54, &[10, 0, 0, 9])],
    );
    assert_eq!(
        answer(&req, from_client(67), &cfg(Mode::Reservation), &hosts),
        Decision::Ignore(IgnoreReason::NotForUs)
    );
}

#[test]
fn reservation_pool_keeps_the_previous_lease() {
    let mut c = cfg(Mode::Reservation);
    c.pool = Some(vmetal_boot::dhcp::Pool {
        start: Ipv4Addr::new(10, 0, 0, 100),
        end: Ipv4Addr::new(10, 0, 0, 110),
        prefix_len: 24,
        gateway: None,
        dns_servers: vec![],
    });
    let hosts = hosts(None);
    let discover = parse(&request(1, ZERO, ZERO, &[])).unwrap();
    let mut leases = Leases::new();
    let offered = |leases: &Leases| match reply(&discover, from_client(67), &c, &hosts, leases, 10)
    {
        Decision::Reply(r) => r.message.yiaddr(),
        other => panic!("{other:?}"),
    };
    assert_eq!(offered(&leases), Ipv4Addr::new(10, 0, 0, 100));
    leases.insert(
        mac(),
        vmetal_boot::leases::Lease {
            address: Ipv4Addr::new(10, 0, 0, 105),
            expires_unix: 5,
        },
    );
    assert_eq!(
        offered(&leases),
        Ipv4Addr::new(10, 0, 0, 105),
        "same address after a restart"
    );
}

#[test]
fn who_gets_nothing() {
    let bios = request(
        1,
        ZERO,
        ZERO,
        &pxe_opts(b"PXEClient:Arch:00000:UNDI:002001", &[0, 0]),
    );
    let empty = KnownHosts::new();
    assert_eq!(
        answer(&bios, from_client(67), &cfg(Mode::Proxy), &empty),
        Decision::Ignore(IgnoreReason::UnknownMac)
    );
    assert_eq!(
        answer(&bios, from_client(67), &cfg(Mode::Reservation), &empty),
        Decision::Ignore(IgnoreReason::UnknownMac)
    );
    assert_eq!(
        answer(&bios, from_client(67), &cfg(Mode::Off), &hosts(None)),
        Decision::Ignore(IgnoreReason::ModeOff)
    );
    let mut allow = cfg(Mode::Proxy);
    allow.allow_unknown = true;
    assert!(matches!(
        answer(&bios, from_client(67), &allow, &empty),
        Decision::Reply(_)
    ));
    let plain = request(1, ZERO, ZERO, &[(55, &[1, 3])]);
    assert_eq!(
        answer(&plain, from_client(67), &cfg(Mode::Proxy), &hosts(None)),
        Decision::Ignore(IgnoreReason::NotNetboot)
    );
    for arch in [[0u8, 10], [0, 2], [0x12, 0x34]] {
        let req = request(
            1,
            ZERO,
            ZERO,
            &pxe_opts(b"PXEClient:Arch:00010:UNDI:003016", &arch),
        );
        assert_eq!(
            answer(&req, from_client(67), &cfg(Mode::Proxy), &hosts(None)),
            Decision::Ignore(IgnoreReason::UnsupportedArch)
        );
    }
    let mut reservation_without_address = cfg(Mode::Reservation);
    reservation_without_address.pool = None;
    assert_eq!(
        answer(
            &bios,
            from_client(67),
            &reservation_without_address,
            &hosts(None)
        ),
        Decision::Ignore(IgnoreReason::NoAddress)
    );
}

#[test]
fn bad_packets_are_rejected_cleanly() {
    let good = request(
        1,
        ZERO,
        ZERO,
        &pxe_opts(b"PXEClient:Arch:00000:UNDI:002001", &[0, 0]),
    );
    assert!(parse(&good).is_ok());
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated header", good[..100].to_vec()),
        ("no options", good[..240].to_vec()),
        ("oversized", {
            let mut p = good.clone();
            p.pop();
            p.extend(std::iter::repeat_n(0u8, 2000));
            p.push(255);
            p
        }),
    ];
    let mut bad_cookie = good.clone();
    bad_cookie[236] = 0;
    cases.push(("wrong magic cookie", bad_cookie));
    let mut reply_op = good.clone();
    reply_op[0] = 2;
    cases.push(("BOOTREPLY", reply_op));
    let mut long_hlen = good.clone();
    long_hlen[2] = 200;
    cases.push(("hlen 200", long_hlen));
    let mut truncated_option = good[..good.len() - 1].to_vec();
    truncated_option.extend([60, 50, b'P']);
    cases.push(("option past the end", truncated_option));
    cases.push((
        "option 94 too short",
        request(1, ZERO, ZERO, &[(94, &[1, 2])]),
    ));
    cases.push((
        "option 93 odd length",
        request(1, ZERO, ZERO, &[(93, &[0, 0, 7])]),
    ));
    cases.push((
        "option 53 two bytes",
        request(1, ZERO, ZERO, &[(53, &[1, 1])]),
    ));
    cases.push(("overload 9", request(1, ZERO, ZERO, &[(52, &[9])])));
    for (what, packet) in cases {
        assert!(parse(&packet).is_err(), "{what} was accepted");
    }
}

#[test]
fn option_overload_reads_options_from_the_file_field() {
    // Option 52 = 1: the vendor class sits in the file field.
    let mut p = request(1, ZERO, ZERO, &[(52, &[1]), (93, &[0, 7])]);
    let vendor = b"PXEClient:Arch:00007";
    p[108] = 60;
    p[109] = vendor.len() as u8;
    p[110..110 + vendor.len()].copy_from_slice(vendor);
    p[110 + vendor.len()] = 255;
    let req = parse(&p).unwrap();
    assert_eq!(req.vendor_class.as_deref(), Some(&vendor[..]));
    assert_eq!(req.arch, Some(7));
    // Overloaded but unterminated file field: an error, not a panic.
    let mut bad = request(1, ZERO, ZERO, &[(52, &[3])]);
    bad[108..236].fill(60);
    assert!(parse(&bad).is_err());
}

fn any_config() -> impl Strategy<Value = DhcpConfig> {
    (
        prop_oneof![Just(Mode::Proxy), Just(Mode::Reservation)],
        any::<bool>(),
    )
        .prop_map(|(mode, allow)| {
            let mut c = cfg(mode);
            c.allow_unknown = allow;
            c
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600), c in any_config(), port in prop_oneof![Just(67u16), Just(4011u16)]) {
        if let Ok(req) = parse(&bytes) {
            let hosts = hosts(Some(reservation()));
            if let Decision::Reply(r) = reply(&req, from_client(port), &c, &hosts, &Leases::new(), 0) {
                let out = r.to_bytes().unwrap();
                prop_assert!(out.len() >= 300);
            }
        }
    }

    #[test]
    fn mutated_requests_never_panic(
        arch in any::<u16>(),
        msg_type in any::<u8>(),
        vendor in proptest::collection::vec(any::<u8>(), 0..255),
        extra in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..8),
        flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..4),
        c in any_config(),
    ) {
        let arch = arch.to_be_bytes();
        let mut opts: Vec<(u8, &[u8])> = vec![(60, &vendor), (93, &arch)];
        for (code, data) in &extra {
            opts.push((*code, data));
        }
        let mut p = request(msg_type, ZERO, ZERO, &opts);
        for (at, value) in flips {
            if let Some(b) = p.get_mut(at) {
                *b = value;
            }
        }
        if let Ok(req) = parse(&p) {
            let hosts = hosts(Some(reservation()));
            if let Decision::Reply(r) = reply(&req, from_client(67), &c, &hosts, &Leases::new(), 0) {
                prop_assert!(r.to_bytes().unwrap().len() >= 300);
            }
        }
    }
}
