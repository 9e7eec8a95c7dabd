//! What the VM end-to-end tests share: the tools check, the ramdisk and test-OS builds, a
//! network namespace with a provisioning bridge and taps, a `vmetal up` stack with QEMU hosts
//! inside it, and a serial-log watcher that timestamps boot milestones.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{Api, ListParams};
use vmetal::up::{Stack, UpConfig};
use vmetal::vms::{VmBmc, VmSpec};
use vmetal_api::{BareMetalHost, ProvisioningState};

/// Root of the repository.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: apt-get install -y {package} (this test never skips)"
    );
}

/// Fail (never skip) when a tool is missing, naming the package.
pub fn require_tools() {
    require("/usr/bin/qemu-system-x86_64", "qemu-system-x86");
    require("/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu");
    require("/usr/lib/ipxe/undionly.kpxe", "ipxe");
    require("/usr/bin/qemu-img", "qemu-utils");
    require("/usr/bin/cpio", "cpio");
    require("/usr/bin/mcopy", "mtools");
    require("/usr/bin/syslinux", "syslinux");
}

pub fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The agent ramdisk and the test OS images, built (or taken from their caches) by the
/// repository's scripts.
pub struct Artifacts {
    /// `vmlinuz` and `initramfs`.
    pub ramdisk: PathBuf,
    /// `testos.raw`, `testos.qcow2`, `SHA256SUMS`.
    pub testos: PathBuf,
}

pub fn build_artifacts() -> Artifacts {
    let repo = repo();
    for script in ["ramdisk/build.sh", "images/testos/build.sh"] {
        let started = Instant::now();
        let out = Command::new(repo.join(script))
            .current_dir(&repo)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        assert!(
            out.status.success(),
            "{script} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{script}: {:.1}s", started.elapsed().as_secs_f64());
    }
    Artifacts {
        ramdisk: repo.join("ramdisk/out"),
        testos: repo.join("images/testos/out"),
    }
}

/// A network namespace with a bridge `br0` at `<subnet>.1/24` and one tap per VM on it;
/// removed (with its devices) on drop.
pub struct Netns {
    pub name: String,
    pub subnet: String,
}

impl Netns {
    pub fn new(taps: usize) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let name = format!("vmvm-{}-{n}", std::process::id());
        // A subnet per namespace keeps leases and addresses of concurrent tests apart.
        let subnet = format!("10.{}.{}", 90 + (std::process::id() % 60), n % 250);
        run(&["ip", "netns", "add", &name]);
        let ns = Self { name, subnet };
        let name = ns.name.as_str();
        run(&["ip", "-n", name, "link", "set", "lo", "up"]);
        run(&["ip", "-n", name, "link", "add", "br0", "type", "bridge"]);
        run(&[
            "ip",
            "-n",
            name,
            "addr",
            "add",
            &format!("{}.1/24", ns.subnet),
            "dev",
            "br0",
        ]);
        run(&["ip", "-n", name, "link", "set", "br0", "up"]);
        for i in 0..taps {
            let tap = format!("tap{i}");
            run(&[
                "ip", "-n", name, "tuntap", "add", "dev", &tap, "mode", "tap",
            ]);
            run(&["ip", "-n", name, "link", "set", &tap, "master", "br0"]);
            run(&["ip", "-n", name, "link", "set", &tap, "up"]);
        }
        ns
    }

    /// `<subnet>.1`, the boot server's address.
    pub fn server_ip(&self) -> std::net::Ipv4Addr {
        format!("{}.1", self.subnet).parse().unwrap()
    }

    /// Move the calling thread into the namespace; threads and processes it starts later
    /// (the runtime's workers, QEMU) are born there.
    pub fn enter(&self) {
        let file = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Check the tools, build the artifacts, make a namespace with `taps` taps, move this thread
/// into it and build the runtime there (its threads and QEMU are born in the namespace).
pub fn enter_lab(taps: usize) -> (Netns, Artifacts, tokio::runtime::Runtime) {
    require_tools();
    let art = build_artifacts();
    let ns = Netns::new(taps);
    ns.enter();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    (ns, art, rt)
}

/// A VM of the test: name, MAC, BMC kind.
pub fn vm(ns: &Netns, index: usize, bmc: VmBmc, disk_size: u64) -> VmSpec {
    VmSpec {
        name: format!("vm-{}", index + 1),
        mac: format!("52:54:00:e2:e0:{:02x}", index + 1),
        bmc,
        tap: Some(format!("tap{index}")),
        disk_size,
        cpus: 2,
        memory_mib: 1024,
        address: Some(format!("{}.{}/24", ns.subnet, 10 + index)),
    }
}

/// Start `vmetal up` in the namespace (the caller has entered it) with the boot services on
/// `br0`, the ramdisk installed and the test OS images in the image directory.
pub async fn start_stack(ns: &Netns, dir: &Path, art: &Artifacts, vms: Vec<VmSpec>) -> Stack {
    vmetal::up::install_ramdisk(&art.ramdisk, dir).unwrap();
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for f in ["testos.raw", "testos.qcow2", "SHA256SUMS"] {
        std::fs::copy(art.testos.join(f), images.join(f)).unwrap();
    }
    let ip = ns.server_ip();
    let mut config = UpConfig::new(dir.to_path_buf());
    config.apiserver_bind = "127.0.0.1:0".parse().unwrap();
    config.agent_bind = std::net::SocketAddr::from((ip, 0));
    config.tenant_bind = std::net::SocketAddr::from((ip, 0));
    config.controller.operation_poll = Duration::from_millis(500);
    config.controller.operation_timeout = Duration::from_secs(400);
    config.controller.backoff_base = Duration::from_secs(1);
    config.controller.backoff_cap = Duration::from_secs(5);
    let mut boot = vmetal_boot::service::BootOptions::new("br0".into(), ip);
    boot.mode = vmetal_boot::dhcp::Mode::Reservation;
    config.boot = Some(boot);
    config.vms = vms;
    // A stalled image download is reported after 15 s instead of the default 120 s.
    config.download_stall_timeout = Some(Duration::from_secs(15));
    Stack::start(config).await.unwrap()
}

/// First time each needle showed up in a serial log, counted from `start`.
pub struct SerialWatch {
    path: PathBuf,
    offset: u64,
    text: String,
}

impl SerialWatch {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            offset: 0,
            text: String::new(),
        }
    }

    /// Read what was appended since the last call.
    pub fn poll(&mut self) -> &str {
        if let Ok(mut f) = std::fs::File::open(&self.path) {
            use std::io::Seek;
            if f.seek(std::io::SeekFrom::Start(self.offset)).is_ok() {
                let mut buf = Vec::new();
                if f.read_to_end(&mut buf).is_ok() {
                    self.offset += buf.len() as u64;
                    self.text.push_str(&String::from_utf8_lossy(&buf));
                }
            }
        }
        &self.text
    }

    /// Everything read so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Byte position of the next `needle` at or after `from`, if it has appeared.
    pub fn find_from(&mut self, needle: &str, from: usize) -> Option<usize> {
        self.poll();
        self.text.get(from..)?.find(needle).map(|i| i + from)
    }
}

/// The last `n` lines of a serial log.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Keep the serial logs when the test fails: copy them to `target/vm-artifacts/<test>/`.
pub struct KeepLogs {
    pub test: &'static str,
    pub logs: Vec<PathBuf>,
}

impl Drop for KeepLogs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let out = repo().join("target/vm-artifacts").join(self.test);
        let _ = std::fs::create_dir_all(&out);
        for log in &self.logs {
            let name = log
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "vm".into());
            let _ = std::fs::copy(log, out.join(format!("{name}-serial.log")));
            eprintln!(
                "---- serial log of {name} (kept in {}) ----\n{}",
                out.display(),
                tail(log, 60)
            );
        }
    }
}

/// Wait until `ok` holds for host `name`, failing with its status (and the VM's serial log
/// tail) after `within`.
pub async fn wait_host(
    hosts: &Api<BareMetalHost>,
    name: &str,
    within: Duration,
    what: &str,
    ok: impl Fn(&BareMetalHost) -> bool,
) -> BareMetalHost {
    let start = Instant::now();
    loop {
        if let Some(h) = hosts.get_opt(name).await.unwrap()
            && ok(&h)
        {
            return h;
        }
        if start.elapsed() > within {
            let h = hosts.get_opt(name).await.unwrap();
            panic!(
                "host {name}: not {what} within {within:?}; status {:#?}",
                h.and_then(|h| h.status)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether the host is available with no error.
pub fn available(h: &BareMetalHost) -> bool {
    h.provisioning_state() == ProvisioningState::Available && !h.has_error()
}

/// Names of hosts in the namespace.
pub async fn host_names(hosts: &Api<BareMetalHost>) -> Vec<String> {
    hosts
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|h| h.name_any())
        .collect()
}

/// Whether the first and last MiB of a raw disk file read as zeros.
pub fn edges_are_zero(disk: &Path) -> (bool, bool) {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(disk).unwrap();
    let size = f.metadata().unwrap().len();
    let mut buf = vec![0u8; 1 << 20];
    f.read_exact(&mut buf).unwrap();
    let first = buf.iter().all(|b| *b == 0);
    f.seek(SeekFrom::Start(size - (1 << 20))).unwrap();
    f.read_exact(&mut buf).unwrap();
    let last = buf.iter().all(|b| *b == 0);
    (first, last)
}
