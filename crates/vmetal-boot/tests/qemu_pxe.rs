//! Real PXE clients no one here wrote: QEMU VMs (SeaBIOS with Debian's iPXE NIC ROM, and
//! OVMF's own UEFI PXE) boot from our DHCP, TFTP and HTTP services inside a network
//! namespace with a bridge and a tap, and print the marker of the per-MAC script on their
//! serial console. Also proxy mode beside a real dnsmasq that only hands out addresses.
//!
//! Needs root, iproute2, qemu-system-x86, ipxe-qemu, ipxe, ovmf and dnsmasq-base; a missing
//! tool fails the test with the package to install. Runs under TCG (no KVM needed).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmetal_api::ProvisioningState;
use vmetal_api::mac::MacAddress;
use vmetal_boot::dhcp::{DhcpConfig, Mode};
use vmetal_boot::hosts::{HostsHandle, KnownHost, KnownHosts, Reservation};
use vmetal_boot::http::HttpConfig;
use vmetal_boot::service::BootServiceConfig;
use vmetal_provisioner::ipxe::BootConfig;

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const HTTP_PORT: u16 = 8080;
const MARKER: &str = "VMETAL-MARKER-7";
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: apt-get install -y {package} (this test never skips)"
    );
}

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (apt-get install -y iproute2)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {} (this test needs root)",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with br0 (10.77.0.1/24) and tap0 on it; removed on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "vmboot-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        run(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        let n = ns.name.as_str();
        run(&["ip", "-n", n, "link", "set", "lo", "up"]);
        run(&["ip", "-n", n, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", n, "addr", "add", "10.77.0.1/24", "dev", "br0"]);
        run(&["ip", "-n", n, "link", "set", "br0", "up"]);
        run(&["ip", "-n", n, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        run(&["ip", "-n", n, "link", "set", "tap0", "master", "br0"]);
        run(&["ip", "-n", n, "link", "set", "tap0", "up"]);
        ns
    }

    fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A child process killed on drop.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the boot services on a thread that has entered the namespace (sockets stay in the
/// namespace they were created in). Dropping the sender stops them.
fn start_services(
    ns: &Netns,
    mode: Mode,
    mac: MacAddress,
    dir: &Path,
) -> (mpsc::Sender<()>, vmetal_boot::metrics::Metrics) {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<vmetal_boot::metrics::Metrics, String>>();
    let netns_path = PathBuf::from(format!("/run/netns/{}", ns.name));
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns_path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut hosts = KnownHosts::new();
            hosts.insert(
                mac,
                KnownHost {
                    name: "default/vm-1".into(),
                    state: ProvisioningState::Inspecting,
                    reservation: Some(Reservation {
                        address: Ipv4Addr::new(10, 77, 0, 50),
                        prefix_len: 24,
                        gateway: None,
                        dns_servers: vec![],
                        ntp_servers: vec![],
                    }),
                },
            );
            let base = format!("http://{SERVER_IP}:{HTTP_PORT}");
            let mut dhcp = DhcpConfig::new(mode, SERVER_IP, HTTP_PORT);
            dhcp.boot_files.efi_x86 = "snponly.efi".into();
            let config = BootServiceConfig {
                dhcp,
                interface: Some("br0".into()),
                dhcp_bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67),
                pxe_bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 4011),
                tftp_bind: Some(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 69)),
                tftp_root: PathBuf::from("/usr/lib/ipxe"),
                http_bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, HTTP_PORT)),
                http: HttpConfig {
                    boot: BootConfig {
                        kernel_url: format!("{base}/boot/vmlinuz"),
                        initramfs_url: format!("{base}/boot/initramfs"),
                        agent_api_url: base.clone(),
                        extra_kernel_args: vec![],
                    },
                    artifacts_dir: Some(dir.clone()),
                    ipxe_dir: Some(PathBuf::from("/usr/lib/ipxe")),
                    allow_unknown: false,
                },
                agent_api: None,
                lease_file: Some(dir.join("leases.json")),
                router_advertisements: true,
            };
            match vmetal_boot::start(config, HostsHandle::new(hosts)).await {
                Ok(running) => {
                    ready_tx.send(Ok(running.metrics.clone())).unwrap();
                    // Poll the stop channel without blocking the runtime.
                    while let Err(mpsc::TryRecvError::Empty) = stop_rx.try_recv() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    drop(running);
                }
                Err(e) => ready_tx.send(Err(e.to_string())).unwrap(),
            }
        });
    });
    let metrics = ready_rx
        .recv()
        .unwrap()
        .expect("boot services did not start");
    (stop_tx, metrics)
}

/// The "kernel" iPXE fetches is an iPXE script: it prints the marker and powers off.
fn artifacts() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vmlinuz"),
        format!("#!ipxe\necho {MARKER}\nsleep 1\npoweroff\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("initramfs"), vec![0u8; 4096]).unwrap();
    dir
}

enum Firmware {
    Bios,
    Uefi,
}

/// Boots the VM and returns its console up to the marker; fails with the console otherwise.
fn boot_vm(ns: &Netns, firmware: Firmware, mac: &str) -> String {
    let mut cmd = ns.exec("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "256",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
    ]);
    cmd.args(["-serial", "stdio", "-monitor", "none"]);
    cmd.args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"]);
    match firmware {
        Firmware::Bios => {
            // QEMU's default ROM for virtio-net-pci is Debian's ipxe-qemu efi-virtio.rom (an
            // absolute romfile= path is not loaded by this QEMU build).
            cmd.args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1"),
            ]);
        }
        Firmware::Uefi => {
            // No option ROM: OVMF's own virtio driver and PXE client (arch 7) do the work.
            cmd.args(["-bios", "/usr/share/ovmf/OVMF.fd"]);
            cmd.args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1"),
            ]);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Kill(cmd.spawn().expect("cannot start qemu-system-x86_64"));
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        // Firmware consoles use \r and escape codes; read byte chunks, not only lines.
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let start = Instant::now();
    let mut console = String::new();
    while start.elapsed() < BOOT_TIMEOUT {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                console.push_str(&line);
                if console.contains(MARKER) {
                    return console;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(child);
    panic!(
        "no {MARKER} on the serial console after {:?}; console:\n{console}",
        start.elapsed()
    );
}

/// One VM at a time: TCG on two shared cores is slow enough already.
static ONE_VM: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn check_tools() {
    require("/usr/bin/qemu-system-x86_64", "qemu-system-x86");
    require("/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu");
    require("/usr/lib/ipxe/undionly.kpxe", "ipxe");
    require("/usr/lib/ipxe/snponly.efi", "ipxe");
    require("/usr/share/ovmf/OVMF.fd", "ovmf");
}

#[test]
fn seabios_ipxe_rom_boots_its_script_in_reservation_mode() {
    let _one = ONE_VM.lock().unwrap_or_else(|p| p.into_inner());
    check_tools();
    let ns = Netns::new();
    let mac = "52:54:00:77:00:01";
    let dir = artifacts();
    let (_stop, metrics) = start_services(
        &ns,
        Mode::Reservation,
        MacAddress::parse(mac).unwrap(),
        dir.path(),
    );
    let console = boot_vm(&ns, Firmware::Bios, mac);
    assert!(console.contains("iPXE"), "{console}");
    let leases = std::fs::read_to_string(dir.path().join("leases.json")).unwrap();
    assert!(leases.contains("10.77.0.50"), "lease persisted: {leases}");
    // iPXE solicits an IPv6 router while it configures; our empty advertisement ends its wait.
    let rendered = metrics.render();
    assert!(
        rendered.contains(r#"vmetal_boot_ra_solicitations_total{result="answered"}"#),
        "iPXE's router solicitation was answered:\n{rendered}"
    );
}

#[test]
fn ovmf_pxe_loads_ipxe_over_tftp_then_its_script() {
    let _one = ONE_VM.lock().unwrap_or_else(|p| p.into_inner());
    check_tools();
    let ns = Netns::new();
    let mac = "52:54:00:77:00:02";
    let dir = artifacts();
    let _stop = start_services(
        &ns,
        Mode::Reservation,
        MacAddress::parse(mac).unwrap(),
        dir.path(),
    );
    let console = boot_vm(&ns, Firmware::Uefi, mac);
    assert!(
        console.contains("iPXE"),
        "iPXE was loaded over TFTP: {console}"
    );
}

#[test]
fn proxy_mode_beside_dnsmasq() {
    check_tools();
    require("/usr/sbin/dnsmasq", "dnsmasq-base");
    let _one = ONE_VM.lock().unwrap_or_else(|p| p.into_inner());
    let ns = Netns::new();
    let mac = "52:54:00:77:00:03";
    let dir = artifacts();
    // dnsmasq hands out addresses only: no boot options, no DNS.
    let mut dnsmasq = ns.exec("/usr/sbin/dnsmasq");
    dnsmasq.args([
        "--no-daemon",
        "--port=0",
        "--interface=br0",
        "--bind-interfaces",
        "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h",
        "--no-resolv",
        "--no-hosts",
        "--leasefile-ro",
        "--conf-file=/dev/null",
    ]);
    dnsmasq.stdout(Stdio::null()).stderr(Stdio::piped());
    let _dnsmasq = Kill(dnsmasq.spawn().expect("cannot start dnsmasq"));
    std::thread::sleep(Duration::from_millis(500));
    let _stop = start_services(
        &ns,
        Mode::Proxy,
        MacAddress::parse(mac).unwrap(),
        dir.path(),
    );
    let console = boot_vm(&ns, Firmware::Bios, mac);
    assert!(
        (100..=150).any(|i| console.contains(&format!("10.77.0.{i}"))),
        "address from dnsmasq's range: {console}"
    );
}
