//! A QEMU VM as the server behind a virtual BMC: power on starts QEMU with the boot order the
//! BMC's override asks for, power off quits it over QMP, a guest that powers off reads Off.
//!
//! Each VM has a worker thread that owns the QEMU child process and its QMP connection and
//! takes commands over a channel, so BMC request handlers never wait on QEMU. QEMU runs with
//! `-no-reboot`: a guest reboot ends the process and the BMC model decides what boots next
//! (a one-time PXE override is followed by disk boots, as on a real server). This is the lab's
//! counterpart of metal3-dev-env's libvirt VMs behind sushy-tools and virtualbmc.

pub mod args;
mod probe;
pub mod qmp;
mod worker;

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmetal_bmc::BootModeOverride;
use worker::{Cmd, QMP_REPLY_TIMEOUT, QUIT_WAIT, Shared, Worker};

pub use args::{BootRequest, RunPaths, qemu_args};
pub use probe::probe_accel;

use crate::sim::{BootSource, ServerBackend, ServerIdentity, SimulatedServer};

/// Debian's combined OVMF image (code and variables), from the `ovmf` package.
pub const DEFAULT_OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// How long a guest may take to act on the ACPI power button before it is powered off.
pub const DEFAULT_SOFT_OFF_GRACE: Duration = Duration::from_secs(60);

/// Longest path a unix socket address holds (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Why a QEMU VM could not be set up or controlled.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// A program is missing.
    #[error("{program} is not installed or not on PATH: apt-get install -y {package}")]
    ToolMissing {
        /// The program.
        program: String,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// The VM's disk file does not exist.
    #[error(
        "the disk {disk} of VM {name} does not exist: create it with \
         vmetal_lab::qemu::create_disk (or qemu-img create)"
    )]
    DiskMissing {
        /// The VM.
        name: String,
        /// The disk file.
        disk: PathBuf,
    },
    /// `create_disk` refuses to overwrite.
    #[error("cannot create disk {path}: the file exists already (remove it or use it as it is)")]
    DiskExists {
        /// The disk file.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `qemu-img create` failed.
    #[error("qemu-img could not create {path}: {stderr}")]
    QemuImg {
        /// The disk file.
        path: PathBuf,
        /// What qemu-img said.
        stderr: String,
    },
    /// A setting is unusable.
    #[error("invalid {field} {value:?} for VM {name}: {reason}")]
    InvalidConfig {
        /// The VM.
        name: String,
        /// Which setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The UEFI firmware is missing.
    #[error(
        "the UEFI firmware {path} is missing: apt-get install -y ovmf (or set QemuConfig::ovmf)"
    )]
    FirmwareMissing {
        /// The firmware file.
        path: PathBuf,
    },
    /// QEMU exited before it could be controlled.
    #[error("QEMU of VM {name} exited while starting ({status}); its log {log} ends with: {tail}")]
    StartFailed {
        /// The VM.
        name: String,
        /// How it exited.
        status: String,
        /// QEMU's log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },
    /// QMP did not answer in time.
    #[error("QMP of VM {name} did not {what} within {secs} s")]
    QmpTimeout {
        /// The VM.
        name: String,
        /// What it was waiting for.
        what: String,
        /// The bound, in seconds.
        secs: u64,
    },
    /// The QMP socket failed.
    #[error("QMP connection of VM {name} failed: {source}")]
    QmpIo {
        /// The VM.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// QEMU closed the QMP connection (it is exiting).
    #[error("QMP connection of VM {name} was closed by QEMU")]
    QmpClosed {
        /// The VM.
        name: String,
    },
    /// A QMP line is not a QMP message.
    #[error("malformed QMP message ({reason}): {line}")]
    QmpMalformed {
        /// The start of the line.
        line: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A QMP message came when it should not.
    #[error("QMP protocol error: {reason}")]
    QmpProtocol {
        /// What happened.
        reason: String,
    },
    /// QEMU refused a command.
    #[error("QMP command {command} failed: {class}: {desc}")]
    QmpCommand {
        /// The command.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// The per-VM worker thread could not be started.
    #[error("cannot start the worker thread of VM {name}: {source}")]
    Worker {
        /// The VM.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: works everywhere, a Debian kernel boots in seconds.
    Tcg,
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
}

/// How the VM's NIC is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuNet {
    /// An existing tap device (the caller created it and put it on a bridge).
    Tap {
        /// The tap's interface name.
        ifname: String,
    },
    /// QEMU's user-mode network (NAT to the host, its own DHCP); for tests.
    User,
}

/// The disk file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// A plain (usually sparse) image.
    Raw,
    /// A qcow2 image.
    Qcow2,
}

/// One QEMU VM's hardware and files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// Name for logs and file names (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// Where the QMP socket, pid file and QEMU log live.
    pub workdir: PathBuf,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The accelerator (see [`probe_accel`]).
    pub accel: Accel,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// The virtio NIC's MAC (the host's `bootMACAddress`).
    pub mac: String,
    /// How the NIC is connected.
    pub net: QemuNet,
    /// The VM's disk file.
    pub disk: PathBuf,
    /// Its format.
    pub disk_format: DiskFormat,
    /// The serial console, appended across boots.
    pub serial_log: PathBuf,
    /// The OVMF image used for UEFI boots.
    pub ovmf: PathBuf,
    /// The SMBIOS system identity the guest sees (UUID, manufacturer, product, serial),
    /// usually the identity its BMC reports; `None` keeps QEMU's.
    pub smbios: Option<ServerIdentity>,
    /// How long a guest may take to act on a graceful shutdown before it is powered off.
    pub soft_off_grace: Duration,
}

impl QemuConfig {
    /// A VM with TCG, 2 CPUs, 1024 MiB, user-mode networking and a raw disk; its serial
    /// console goes to `<workdir>/<name>-serial.log`.
    pub fn new(
        name: impl Into<String>,
        workdir: impl Into<PathBuf>,
        mac: impl Into<String>,
        disk: impl Into<PathBuf>,
    ) -> Self {
        let name = name.into();
        let workdir = workdir.into();
        Self {
            serial_log: workdir.join(format!("{name}-serial.log")),
            name,
            workdir,
            qemu: PathBuf::from("qemu-system-x86_64"),
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 1024,
            mac: mac.into(),
            net: QemuNet::User,
            disk: disk.into(),
            disk_format: DiskFormat::Raw,
            ovmf: PathBuf::from(DEFAULT_OVMF),
            smbios: None,
            soft_off_grace: DEFAULT_SOFT_OFF_GRACE,
        }
    }

    fn qmp_socket(&self) -> PathBuf {
        self.workdir.join(format!("{}.qmp", self.name))
    }

    fn pidfile(&self) -> PathBuf {
        self.workdir.join(format!("{}.pid", self.name))
    }

    /// QEMU's own stdout and stderr, appended across boots.
    fn qemu_log(&self) -> PathBuf {
        self.workdir.join(format!("{}-qemu.log", self.name))
    }

    fn invalid(&self, field: &'static str, value: &str, reason: impl Into<String>) -> QemuError {
        QemuError::InvalidConfig {
            name: self.name.clone(),
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// Everything that can be checked before QEMU runs.
    fn validate(&self) -> Result<(), QemuError> {
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(self.invalid(
                "name",
                &self.name,
                "use letters, digits, '.', '_' and '-' only (it names files)",
            ));
        }
        vmetal_api::mac::MacAddress::parse(&self.mac)
            .map_err(|e| self.invalid("mac", &self.mac, e.to_string()))?;
        if let QemuNet::Tap { ifname } = &self.net
            && (ifname.is_empty() || ifname.len() > 15)
        {
            return Err(self.invalid("tap", ifname, "an interface name has 1 to 15 characters"));
        }
        if self.cpus == 0 || self.memory_mib < 16 {
            return Err(self.invalid(
                "size",
                &format!("{} cpus, {} MiB", self.cpus, self.memory_mib),
                "give at least 1 CPU and 16 MiB",
            ));
        }
        for p in [&self.workdir, &self.disk, &self.serial_log, &self.ovmf] {
            if p.to_str().is_none() {
                return Err(self.invalid(
                    "path",
                    &p.to_string_lossy(),
                    "QEMU options need UTF-8 paths",
                ));
            }
        }
        let socket = self.qmp_socket();
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(self.invalid(
                "workdir",
                &self.workdir.to_string_lossy(),
                format!(
                    "the QMP socket path would be {len} bytes, over the {MAX_SOCKET_PATH} a \
                     unix socket allows: use a shorter workdir or name"
                ),
            ));
        }
        if !self.disk.is_file() {
            return Err(QemuError::DiskMissing {
                name: self.name.clone(),
                disk: self.disk.clone(),
            });
        }
        if find_program(&self.qemu).is_none() {
            return Err(QemuError::ToolMissing {
                program: self.qemu.to_string_lossy().into_owned(),
                package: "qemu-system-x86",
            });
        }
        Ok(())
    }
}

/// `program` itself when it has a slash, else the first match on PATH.
fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Create a VM disk: a sparse raw file, or a qcow2 image through `qemu-img create`. Refuses
/// to overwrite an existing file.
pub fn create_disk(path: &Path, size: u64, format: DiskFormat) -> Result<(), QemuError> {
    if path.exists() {
        return Err(QemuError::DiskExists {
            path: path.to_path_buf(),
        });
    }
    let io_err = |action| {
        move |source| QemuError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    match format {
        DiskFormat::Raw => std::fs::File::create_new(path)
            .map_err(io_err("create"))?
            .set_len(size)
            .map_err(io_err("size")),
        DiskFormat::Qcow2 => {
            let out = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(path)
                .arg(size.to_string())
                .output()
                .map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => QemuError::ToolMissing {
                        program: "qemu-img".into(),
                        package: "qemu-utils",
                    },
                    _ => io_err("run qemu-img for")(e),
                })?;
            if out.status.success() {
                Ok(())
            } else {
                Err(QemuError::QemuImg {
                    path: path.to_path_buf(),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                })
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Inner {
    config: QemuConfig,
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Exit);
        if let Some(handle) = lock(&self.worker).take() {
            // The last handle can be dropped on the worker itself (through the server it
            // reports to); it exits on the message, joining itself would deadlock.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

/// A QEMU VM behind a virtual BMC. Cheap to clone; clones share the VM, and dropping the last
/// one stops QEMU (waiting a few seconds at most for it to quit).
#[derive(Clone)]
pub struct QemuMachine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QemuMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.inner.shared.status);
        f.debug_struct("QemuMachine")
            .field("name", &self.inner.config.name)
            .field("pid", &st.pid)
            .field("boot_count", &st.boot_count)
            .field("last_boot", &st.last_boot)
            .finish()
    }
}

impl QemuMachine {
    /// Check the config (the disk must exist: see [`create_disk`]), create the workdir and
    /// start the VM's worker thread. QEMU itself starts on the first power on.
    pub fn new(config: QemuConfig) -> Result<Self, QemuError> {
        config.validate()?;
        for dir in [Some(config.workdir.as_path()), config.serial_log.parent()]
            .into_iter()
            .flatten()
        {
            std::fs::create_dir_all(dir).map_err(|source| QemuError::Io {
                action: "create the directory",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let handle = Worker::spawn(config.clone(), shared.clone(), rx).map_err(|source| {
            QemuError::Worker {
                name: config.name.clone(),
                source,
            }
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                tx,
                shared,
                worker: Mutex::new(Some(handle)),
            }),
        })
    }

    /// The VM's config.
    pub fn config(&self) -> &QemuConfig {
        &self.inner.config
    }

    /// Report to `server` when the guest powers itself off (its power then reads Off) or
    /// reboots itself (it boots again as the server's boot override says). Does not make this
    /// machine the server's backend: also call `server.set_backend(Arc::new(machine.clone()))`.
    /// Unattached, a guest reboot restarts QEMU with the same boot request and a guest
    /// power-off just ends QEMU.
    pub fn attach(&self, server: &SimulatedServer) {
        lock(&self.inner.shared.status).server = Some(server.downgrade());
    }

    /// Whether QEMU runs and QMP's `query-status` says the guest is running. Waits for the
    /// worker, so not for async request handlers.
    pub fn running(&self) -> bool {
        let (tx, rx) = mpsc::channel();
        if self.inner.tx.send(Cmd::Status(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(QMP_REPLY_TIMEOUT * 2).unwrap_or(false)
    }

    /// How many times QEMU was started (power ons, resets and guest reboots).
    pub fn boot_count(&self) -> u64 {
        lock(&self.inner.shared.status).boot_count
    }

    /// What the running (or last) QEMU was started to boot from.
    pub fn last_boot(&self) -> Option<BootSource> {
        lock(&self.inner.shared.status).last_boot.clone()
    }

    /// The pid of the running QEMU.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.inner.shared.status).pid
    }

    /// Why the last start failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.inner.shared.status).last_error.clone()
    }

    /// QEMU's own output (errors, warnings), appended across boots with a line per start.
    pub fn qemu_log(&self) -> PathBuf {
        self.inner.config.qemu_log()
    }

    /// The serial console log (appended across boots).
    pub fn serial_log(&self) -> &Path {
        &self.inner.config.serial_log
    }

    /// The whole serial console log so far (lossy UTF-8; empty before the first boot).
    pub fn serial_output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.serial_log()).unwrap_or_default()).into_owned()
    }

    /// Wait until the serial output of the latest boot (since it was asked for) contains
    /// `needle`; false after `timeout`.
    pub fn wait_for_serial(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let log = std::fs::read(self.serial_log()).unwrap_or_default();
            let mark = lock(&self.inner.shared.status).serial_mark;
            // A log that shrank (truncated by someone) is read from its start.
            let start = usize::try_from(mark)
                .ok()
                .filter(|m| *m <= log.len())
                .unwrap_or(0);
            if contains(&log[start..], needle.as_bytes()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop QEMU (quit over QMP, killed if it does not go) and wait for it; the attached
    /// server's power reads Off. The machine can be powered on again afterwards.
    pub fn shutdown(&self) {
        let (tx, rx) = mpsc::channel();
        if self.inner.tx.send(Cmd::Shutdown(tx)).is_ok() {
            let _ = rx.recv_timeout(QMP_REPLY_TIMEOUT + QUIT_WAIT + Duration::from_secs(20));
        }
    }

    /// Queue a power request for the worker.
    fn request(&self, cmd: Cmd, what: &str) {
        self.inner.shared.pending.fetch_add(1, Ordering::SeqCst);
        if self.inner.tx.send(cmd).is_err() {
            self.inner.shared.pending.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(vm = %self.inner.config.name, "the VM's worker is gone; {what} ignored");
        }
    }
}

impl ServerBackend for QemuMachine {
    fn boot(&self, source: &BootSource, mode: BootModeOverride) {
        let len = std::fs::metadata(self.serial_log()).map_or(0, |m| m.len());
        lock(&self.inner.shared.status).serial_mark = len;
        self.request(
            Cmd::Boot(BootRequest {
                source: source.clone(),
                mode,
            }),
            "boot",
        );
    }

    fn power_off(&self) {
        self.request(Cmd::PowerOff, "power off");
    }

    fn soft_off(&self) {
        self.request(Cmd::SoftOff, "graceful shutdown");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> QemuConfig {
        let disk = dir.join("vm.img");
        if !disk.exists() {
            create_disk(&disk, 1 << 20, DiskFormat::Raw).unwrap();
        }
        QemuConfig::new("vm-1", dir, "52:54:00:aa:bb:01", disk)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = QemuConfig::new("vm", "/w", "52:54:00:00:00:01", "/w/d.img");
        assert_eq!(c.accel, Accel::Tcg);
        assert_eq!((c.cpus, c.memory_mib), (2, 1024));
        assert_eq!(c.net, QemuNet::User);
        assert_eq!(c.disk_format, DiskFormat::Raw);
        assert_eq!(c.serial_log, Path::new("/w/vm-serial.log"));
        assert_eq!(c.qemu, Path::new("qemu-system-x86_64"));
        assert_eq!(c.ovmf, Path::new(DEFAULT_OVMF));
    }

    #[test]
    fn raw_disks_are_sparse_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.img");
        create_disk(&disk, 8 << 30, DiskFormat::Raw).unwrap();
        let meta = std::fs::metadata(&disk).unwrap();
        assert_eq!(meta.len(), 8 << 30);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() < 64, "sparse: {} blocks", meta.blocks());
        let again = create_disk(&disk, 1, DiskFormat::Raw).unwrap_err();
        assert!(matches!(again, QemuError::DiskExists { .. }), "{again}");
    }

    #[test]
    fn bad_configs_are_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |edit: &dyn Fn(&mut QemuConfig)| {
            let mut c = config(dir.path());
            edit(&mut c);
            QemuMachine::new(c).unwrap_err().to_string()
        };
        assert!(refused(&|c| c.mac = "52:54:00".into()).contains("invalid mac"));
        assert!(refused(&|c| c.name = "a/b".into()).contains("names files"));
        assert!(refused(&|c| c.disk = dir.path().join("none.img")).contains("create_disk"));
        assert!(
            refused(&|c| c.qemu = "/nonexistent/qemu-system-x86_64".into())
                .contains("apt-get install -y qemu-system-x86")
        );
        assert!(
            refused(&|c| c.net = QemuNet::Tap {
                ifname: "a-very-long-tap-name".into()
            })
            .contains("1 to 15")
        );
        let long = dir.path().join("x".repeat(120));
        assert!(refused(&|c| c.workdir = long.clone()).contains("shorter workdir"));
    }

    #[test]
    fn a_machine_that_never_booted_is_not_running_and_drops_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let m = QemuMachine::new(config(dir.path())).unwrap();
        assert!(!m.running());
        assert_eq!(m.boot_count(), 0);
        assert_eq!(m.last_boot(), None);
        assert!(!m.wait_for_serial("anything", Duration::from_millis(10)));
        m.shutdown();
        drop(m);
    }

    #[test]
    fn byte_search_and_log_tails() {
        assert!(contains(b"abc VMETAL def", b"VMETAL"));
        assert!(!contains(b"VMETA", b"VMETAL"));
        assert_eq!(last_lines("a\n\nb\nc\nd\n", 2), "c | d");
        assert_eq!(last_lines("", 2), "");
    }
}
