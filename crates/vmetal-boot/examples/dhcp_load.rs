//! DHCP proxy load generator for `bench/dhcp-proxy-vs-dnsmasq.sh`: `serve` runs our proxy
//! DHCP on an interface; `load` sends PXE DISCOVERs from a fixed MAC set at a fixed
//! concurrency and reports OFFERs per second and latency percentiles, whoever answers.
//!
//! ```text
//! dhcp_load serve --interface IF --server-ip IP --macs N
//! dhcp_load load  --interface IF --macs N --concurrency C --seconds S [--warmup S] [--label L]
//! ```

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use socket2::{Domain, Protocol, Socket, Type};
use vmetal_api::ProvisioningState;
use vmetal_api::mac::MacAddress;
use vmetal_boot::dhcp::{DhcpConfig, Mode};
use vmetal_boot::http::HttpConfig;
use vmetal_boot::service::BootServiceConfig;
use vmetal_boot::{HostsHandle, KnownHost, KnownHosts};
use vmetal_provisioner::ipxe::BootConfig;

/// A request not answered within this long counts as lost and its slot sends a new one.
const TIMEOUT: Duration = Duration::from_millis(500);

/// The i-th MAC of the benchmark set (locally administered, so never a real NIC).
fn mac(i: u32) -> [u8; 6] {
    let [_, b, c, d] = i.to_be_bytes();
    [0x02, 0x42, 0xbe, b, c, d]
}

/// Parsed `--key value` pairs.
struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(key) = it.next() {
            let Some(name) = key.strip_prefix("--") else {
                bail!("unexpected argument {key}");
            };
            let value = it.next().with_context(|| format!("{key} needs a value"))?;
            map.insert(name.to_owned(), value.clone());
        }
        Ok(Self(map))
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: Option<T>) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.get(name) {
            Some(v) => v.parse().map_err(|e| anyhow::anyhow!("--{name} {v}: {e}")),
            None => default.with_context(|| format!("--{name} is required")),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = args
        .split_first()
        .context("usage: dhcp_load serve|load ...")?;
    let flags = Flags::parse(rest)?;
    match command.as_str() {
        "serve" => serve(&flags),
        "load" => load(&flags),
        other => bail!("unknown command {other}: serve or load"),
    }
}

/// Our proxy DHCP on `--interface` (no TFTP; HTTP on loopback, unused) until killed.
fn serve(flags: &Flags) -> anyhow::Result<()> {
    let interface: String = flags.get("interface", None)?;
    let server_ip: Ipv4Addr = flags.get("server-ip", None)?;
    let macs: u32 = flags.get("macs", Some(256))?;
    let mut hosts = KnownHosts::new();
    for i in 0..macs {
        hosts.insert(
            MacAddress::from_octets(mac(i)),
            KnownHost {
                name: format!("bench/host-{i}"),
                state: ProvisioningState::Inspecting,
                reservation: None,
            },
        );
    }
    let dhcp = DhcpConfig::new(Mode::Proxy, server_ip, 8080);
    let base = dhcp.http_base.clone();
    let config = BootServiceConfig {
        dhcp,
        interface: Some(interface),
        dhcp_bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67),
        pxe_bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 4011),
        tftp_bind: None,
        tftp_root: PathBuf::from("/usr/lib/ipxe"),
        http_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        http: HttpConfig {
            boot: BootConfig {
                kernel_url: format!("{base}/boot/vmlinuz"),
                initramfs_url: format!("{base}/boot/initramfs"),
                agent_api_url: base.clone(),
                extra_kernel_args: vec![],
            },
            artifacts_dir: None,
            ipxe_dir: None,
            allow_unknown: false,
        },
        agent_api: None,
        lease_file: None,
        router_advertisements: false,
    };
    // The same runtime `vmetal boot` uses.
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    runtime.block_on(async move {
        let running = vmetal_boot::start(config, HostsHandle::new(hosts)).await?;
        println!("serving proxy DHCP on {:?}", running.dhcp_addrs);
        std::future::pending::<()>().await;
        drop(running);
        Ok(())
    })
}

/// A BIOS PXE ROM's DISCOVER (options as SeaBIOS + iPXE's UNDI ROM order them), broadcast flag
/// set so every server broadcasts its OFFER.
fn discover(xid: u32, mac: [u8; 6]) -> Vec<u8> {
    let mut p = vec![1, 1, 6, 0];
    p.extend(xid.to_be_bytes());
    p.extend([0, 4, 0x80, 0]);
    p.extend([0; 16]); // ciaddr, yiaddr, siaddr, giaddr
    p.extend(mac);
    p.extend([0; 10 + 64 + 128]);
    p.extend([99, 130, 83, 99]);
    let guid = [
        0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, mac[5],
    ];
    let opts: [(u8, &[u8]); 7] = [
        (53, &[1]),
        (57, &[0x04, 0xec]),
        (93, &[0, 0]),
        (94, &[1, 2, 1]),
        (97, &guid),
        (60, b"PXEClient:Arch:00000:UNDI:002001"),
        (55, &[1, 3, 6, 43, 54, 60, 66, 67, 97, 128, 129, 130]),
    ];
    for (code, data) in opts {
        p.push(code);
        p.push(u8::try_from(data.len()).unwrap_or(0));
        p.extend(data);
    }
    p.push(255);
    p
}

/// Whether `reply` is a BOOTREPLY OFFER (option 53 = 2); returns its xid.
fn offer_xid(reply: &[u8]) -> Option<u32> {
    if reply.len() < 240 || reply[0] != 2 || reply[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let xid = u32::from_be_bytes(reply[4..8].try_into().ok()?);
    let mut i = 240;
    while i < reply.len() {
        match reply[i] {
            0 => i += 1,
            255 => return None,
            code => {
                let len = usize::from(*reply.get(i + 1)?);
                if code == 53 {
                    return (reply.get(i + 2) == Some(&2)).then_some(xid);
                }
                i += 2 + len;
            }
        }
    }
    None
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Closed loop: `concurrency` DISCOVERs in flight; each OFFER (matched by xid) frees its slot
/// for the next MAC. Prints one machine-readable result line.
fn load(flags: &Flags) -> anyhow::Result<()> {
    let interface: String = flags.get("interface", None)?;
    let macs: u32 = flags.get("macs", Some(256))?;
    let concurrency: u32 = flags.get("concurrency", Some(8))?;
    let seconds: f64 = flags.get("seconds", Some(10.0))?;
    let warmup: f64 = flags.get("warmup", Some(2.0))?;
    let label: String = flags.get("label", Some("server".to_owned()))?;

    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let socket: std::net::UdpSocket = socket.into();
    let server = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);

    let mut in_flight: HashMap<u32, Instant> = HashMap::new();
    let mut next_xid: u32 = 0x1000_0000 ^ std::process::id();
    let mut next_mac = 0u32;
    let mut send = |in_flight: &mut HashMap<u32, Instant>| -> anyhow::Result<()> {
        next_xid = next_xid.wrapping_add(1);
        let packet = discover(next_xid, mac(next_mac % macs));
        next_mac = next_mac.wrapping_add(1);
        in_flight.insert(next_xid, Instant::now());
        socket.send_to(&packet, server).context("send DISCOVER")?;
        Ok(())
    };
    for _ in 0..concurrency {
        send(&mut in_flight)?;
    }

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let mut latencies: Vec<Duration> = Vec::with_capacity(1 << 20);
    let mut lost = 0u64;
    let mut buf = [0u8; 1500];
    let mut last_sweep = Instant::now();
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        match socket.recv_from(&mut buf) {
            Ok((len, _)) => {
                let Some(xid) = offer_xid(&buf[..len]) else {
                    continue;
                };
                let Some(sent_at) = in_flight.remove(&xid) else {
                    continue; // late answer to a request already counted lost
                };
                let at = Instant::now();
                if sent_at >= measure_from && at < end {
                    latencies.push(at - sent_at);
                }
                send(&mut in_flight)?;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e).context("receive"),
        }
        if last_sweep.elapsed() >= Duration::from_millis(50) {
            last_sweep = Instant::now();
            let expired: Vec<u32> = in_flight
                .iter()
                .filter(|(_, t)| t.elapsed() > TIMEOUT)
                .map(|(x, _)| *x)
                .collect();
            for xid in expired {
                if in_flight.remove(&xid).is_some_and(|t| t >= measure_from) {
                    lost += 1;
                }
                send(&mut in_flight)?;
            }
        }
    }
    latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "RESULT label={label} concurrency={concurrency} seconds={seconds} offers={} \
         offers_per_sec={:.0} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} lost={lost}",
        latencies.len(),
        latencies.len() as f64 / seconds,
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    Ok(())
}
