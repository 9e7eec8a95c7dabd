//! A QEMU VM as the server behind a virtual BMC: power on starts QEMU with the boot order the
//! BMC's override asks for, power off quits it over QMP, a guest that powers off reads Off.
//!
//! Each VM has a worker thread that owns the QEMU child process and its QMP connection and
//! takes commands over a channel, so BMC request handlers never wait on QEMU. QEMU runs with
//! `-no-reboot`: a guest reboot ends the process and the BMC model decides what boots next
//! (a one-time PXE override is followed by disk boots, as on a real server). This is the lab's
//! counterpart of metal3-dev-env's libvirt VMs behind sushy-tools and virtualbmc.

pub mod args;
pub mod qmp;

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use vmetal_bmc::BootModeOverride;

pub use args::{BootRequest, RunPaths, qemu_args};

use crate::sim::{BootSource, ServerBackend, ServerIdentity, SimulatedServer, WeakServer};

/// Debian's combined OVMF image (code and variables), from the `ovmf` package.
pub const DEFAULT_OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// How long a guest may take to act on the ACPI power button before it is powered off.
pub const DEFAULT_SOFT_OFF_GRACE: Duration = Duration::from_secs(60);

/// How long QEMU may take to open its QMP socket and greet.
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a QMP command may take to be answered.
const QMP_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long QEMU may take to exit after `quit` before it is killed.
const QUIT_WAIT: Duration = Duration::from_secs(5);
/// How often the worker looks for QMP events and a QEMU that exited on its own.
const POLL: Duration = Duration::from_millis(100);
/// How long the KVM probe waits for OVMF to reach its boot manager (about 1 s with working
/// KVM, 3 s under TCG; broken nested KVM never gets there).
const PROBE_TIMEOUT: Duration = Duration::from_secs(6);
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

/// Whether KVM works here: a short probe boot of OVMF under KVM must reach its boot manager
/// within a few seconds (OVMF runs in long mode with paging, where broken nested KVM hangs,
/// while SeaBIOS alone often still gets through). Returns [`Accel::Kvm`] only if it did, and
/// says why on a log line.
pub fn probe_accel(qemu: &Path) -> Accel {
    let (accel, why) = probe(qemu, Path::new(DEFAULT_OVMF), PROBE_TIMEOUT);
    match accel {
        Accel::Kvm => tracing::info!("accelerator: KVM ({why})"),
        Accel::Tcg => tracing::info!("accelerator: TCG, because {why}"),
    }
    accel
}

fn probe(qemu: &Path, ovmf: &Path, timeout: Duration) -> (Accel, String) {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return (Accel::Tcg, format!("/dev/kvm cannot be opened ({e})"));
    }
    if !ovmf.is_file() {
        return (
            Accel::Tcg,
            format!(
                "{} is missing (apt-get install -y ovmf), so KVM cannot be probed",
                ovmf.display()
            ),
        );
    }
    let started = Instant::now();
    let child = Command::new(qemu)
        .args([
            "-no-user-config",
            "-nodefaults",
            "-machine",
            "pc,graphics=off",
            "-display",
            "none",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-no-reboot",
            "-serial",
            "stdio",
            "-bios",
        ])
        .arg(ovmf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => Process(c),
        Err(e) => return (Accel::Tcg, format!("{} cannot run ({e})", qemu.display())),
    };
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    if let Some(mut stdout) = child.0.stdout.take() {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
    }
    let mut console = Vec::new();
    let reached = loop {
        if contains(&console, b"BdsDxe") {
            break true;
        }
        let left = timeout.saturating_sub(started.elapsed());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(bytes) => console.extend_from_slice(&bytes),
            Err(_) => break contains(&console, b"BdsDxe"),
        }
    };
    let exited_early = matches!(child.0.try_wait(), Ok(Some(_)));
    let _ = child.0.kill();
    let _ = child.0.wait();
    let mut stderr = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    if reached {
        (
            Accel::Kvm,
            format!(
                "OVMF reached its boot manager under KVM in {} ms",
                started.elapsed().as_millis()
            ),
        )
    } else if exited_early {
        (
            Accel::Tcg,
            format!("QEMU with KVM exited at once: {}", last_lines(&stderr, 3)),
        )
    } else {
        (
            Accel::Tcg,
            format!(
                "OVMF did not reach its boot manager under KVM within {} s (nested KVM that \
                 hangs?)",
                timeout.as_secs()
            ),
        )
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

/// A QEMU child process, killed if it is still running when dropped (the last resort that
/// keeps a panicking worker from leaving VMs behind).
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            tracing::warn!(pid = self.0.id(), "killing a QEMU that is still running");
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Poll until the child exits or `timeout` passes; whether it exited.
fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return false,
        }
    }
}

/// One QMP connection: the socket plus the sans-IO codec.
struct Qmp {
    name: String,
    stream: UnixStream,
    lines: qmp::LineBuffer,
    session: qmp::Session,
    /// Events read while waiting for replies, for the worker to look at.
    events: Vec<qmp::Event>,
}

impl Qmp {
    /// Connect to a just-started QEMU (retrying until its socket exists) and negotiate.
    fn connect(
        name: &str,
        socket: &Path,
        child: &mut Child,
        log: &Path,
    ) -> Result<Self, QemuError> {
        let deadline = Instant::now() + QMP_CONNECT_TIMEOUT;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(start_failed(name, status, log));
                    }
                    if Instant::now() >= deadline {
                        return Err(QemuError::QmpTimeout {
                            name: name.into(),
                            what: format!("open {} ({e})", socket.display()),
                            secs: QMP_CONNECT_TIMEOUT.as_secs(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let mut conn = Self {
            name: name.into(),
            stream,
            lines: qmp::LineBuffer::default(),
            session: qmp::Session::new(),
            events: Vec::new(),
        };
        while !conn.session.is_ready() {
            let msg = conn.next_message(deadline, "greet and negotiate capabilities")?;
            match conn.session.handle(msg)? {
                qmp::Output::Send(bytes) => conn.write(&bytes)?,
                qmp::Output::Event(e) => conn.events.push(e),
                qmp::Output::Ready | qmp::Output::Reply { .. } => {}
            }
        }
        Ok(conn)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), QemuError> {
        self.stream
            .write_all(bytes)
            .map_err(|source| QemuError::QmpIo {
                name: self.name.clone(),
                source,
            })
    }

    /// Read once, waiting up to `timeout`; false when nothing came.
    fn fill(&mut self, timeout: Duration) -> Result<bool, QemuError> {
        let io_err = |source| QemuError::QmpIo {
            name: self.name.clone(),
            source,
        };
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(io_err)?;
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(0) => Err(QemuError::QmpClosed {
                name: self.name.clone(),
            }),
            Ok(n) => {
                self.lines.push(&buf[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(io_err(e)),
        }
    }

    /// A buffered message, if a complete one is there; malformed lines are logged and skipped.
    fn buffered(&mut self) -> Option<qmp::Message> {
        while let Some(line) = self.lines.next_line() {
            match line.and_then(|l| qmp::parse(&l)) {
                Ok(msg) => return Some(msg),
                Err(e) => tracing::warn!(vm = %self.name, "skipping a QMP line: {e}"),
            }
        }
        None
    }

    fn next_message(&mut self, deadline: Instant, what: &str) -> Result<qmp::Message, QemuError> {
        loop {
            if let Some(msg) = self.buffered() {
                return Ok(msg);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QemuError::QmpTimeout {
                    name: self.name.clone(),
                    what: what.into(),
                    secs: QMP_REPLY_TIMEOUT.as_secs(),
                });
            }
            self.fill(left)?;
        }
    }

    /// Run a command and wait for its reply; events that arrive first are kept.
    fn execute(&mut self, command: &str, timeout: Duration) -> Result<Value, QemuError> {
        let (id, line) = self.session.command(command, None)?;
        self.write(&line)?;
        let deadline = Instant::now() + timeout;
        let what = format!("answer {command}");
        loop {
            let msg = self.next_message(deadline, &what)?;
            match self.session.handle(msg)? {
                qmp::Output::Reply {
                    id: Some(got),
                    result,
                } if got == id => {
                    return result.map_err(|f| QemuError::QmpCommand {
                        command: command.into(),
                        class: f.class,
                        desc: f.desc,
                    });
                }
                qmp::Output::Event(e) => self.events.push(e),
                other => tracing::debug!(vm = %self.name, "unexpected QMP output {other:?}"),
            }
        }
    }

    /// Take in whatever has arrived, without waiting; `QmpClosed` once QEMU has gone.
    fn poll(&mut self) -> Result<(), QemuError> {
        loop {
            while let Some(msg) = self.buffered() {
                if let qmp::Output::Event(e) = self.session.handle(msg)? {
                    self.events.push(e);
                }
            }
            if !self.fill(Duration::from_millis(1))? {
                return Ok(());
            }
        }
    }
}

fn start_failed(name: &str, status: ExitStatus, log: &Path) -> QemuError {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    QemuError::StartFailed {
        name: name.into(),
        status: status.to_string(),
        log: log.to_path_buf(),
        tail: last_lines(&text, 3),
    }
}

/// A running QEMU.
struct Vm {
    process: Process,
    qmp: Option<Qmp>,
    request: BootRequest,
    /// The reason of the last `SHUTDOWN` event (`guest-shutdown`, `guest-reset`, ...).
    shutdown_reason: Option<String>,
}

impl Vm {
    /// Look at QMP events that arrived; after `linger`, a closed connection is expected.
    fn take_events(&mut self, name: &str, linger: Duration) {
        if let Some(conn) = self.qmp.as_mut() {
            let deadline = Instant::now() + linger;
            loop {
                if let Err(e) = conn.poll() {
                    if !matches!(e, QemuError::QmpClosed { .. }) {
                        tracing::warn!(vm = %name, "QMP connection lost: {e}");
                    }
                    break;
                }
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            for event in conn.events.drain(..) {
                tracing::debug!(vm = %name, event = %event.name, data = %event.data, "QMP event");
                if let Some(reason) = event.shutdown_reason() {
                    self.shutdown_reason = Some(reason.to_string());
                }
            }
        }
    }
}

enum Cmd {
    Boot(BootRequest),
    PowerOff,
    SoftOff,
    Status(mpsc::Sender<bool>),
    Shutdown(mpsc::Sender<()>),
    Exit,
}

#[derive(Default)]
struct Status {
    boot_count: u64,
    last_boot: Option<BootSource>,
    pid: Option<u32>,
    server: Option<WeakServer>,
    /// Length of the serial log when the latest boot was asked for.
    serial_mark: u64,
    last_error: Option<String>,
}

#[derive(Default)]
struct Shared {
    status: Mutex<Status>,
    /// Power requests sent and not yet handled: a QEMU exit that races one is not reported.
    pending: AtomicU64,
}

struct Worker {
    config: QemuConfig,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Cmd>,
    vm: Option<Vm>,
    soft_off_deadline: Option<Instant>,
}

impl Worker {
    fn run(mut self) {
        loop {
            let wait = self.soft_off_deadline.map_or(POLL, |d| {
                d.saturating_duration_since(Instant::now()).min(POLL)
            });
            match self.rx.recv_timeout(wait) {
                Ok(Cmd::Exit) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.stop_vm("the machine was dropped");
                    return;
                }
                Ok(cmd) => self.handle(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            self.watch();
        }
    }

    fn name(&self) -> &str {
        &self.config.name
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Boot(request) => {
                self.stop_vm("reset");
                self.start_vm(request);
                self.handled();
            }
            Cmd::PowerOff => {
                self.stop_vm("power off");
                self.handled();
            }
            Cmd::SoftOff => {
                self.soft_off();
                self.handled();
            }
            Cmd::Status(reply) => {
                let _ = reply.send(self.query_running());
            }
            Cmd::Shutdown(reply) => {
                if self.vm.is_some() {
                    self.stop_vm("shutdown");
                    self.report_off();
                }
                let _ = reply.send(());
            }
            Cmd::Exit => {}
        }
    }

    fn handled(&self) {
        self.shared.pending.fetch_sub(1, Ordering::SeqCst);
    }

    fn server(&self) -> Option<SimulatedServer> {
        lock(&self.shared.status)
            .server
            .as_ref()
            .and_then(WeakServer::upgrade)
    }

    fn report_off(&self) {
        if let Some(server) = self.server() {
            server.guest_powered_off();
        }
    }

    fn start_vm(&mut self, request: BootRequest) {
        match self.launch(&request) {
            Ok(vm) => {
                let pid = vm.process.0.id();
                tracing::info!(vm = %self.name(), pid, source = ?request.source,
                    mode = ?request.mode, "QEMU started");
                let mut st = lock(&self.shared.status);
                st.boot_count += 1;
                st.last_boot = Some(request.source);
                st.pid = Some(pid);
                st.last_error = None;
                drop(st);
                self.vm = Some(vm);
            }
            Err(e) => {
                tracing::error!(vm = %self.name(), "cannot start QEMU: {e}");
                lock(&self.shared.status).last_error = Some(e.to_string());
                self.report_off();
            }
        }
    }

    fn launch(&self, request: &BootRequest) -> Result<Vm, QemuError> {
        let c = &self.config;
        if request.mode == BootModeOverride::Uefi && !c.ovmf.is_file() {
            return Err(QemuError::FirmwareMissing {
                path: c.ovmf.clone(),
            });
        }
        let paths = RunPaths {
            qmp_socket: c.qmp_socket(),
            pidfile: c.pidfile(),
        };
        // A socket left by a QEMU that was killed would refuse connections.
        let _ = std::fs::remove_file(&paths.qmp_socket);
        let log_path = c.qemu_log();
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| QemuError::Io {
                action,
                path,
                source,
            }
        };
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err("open", &log_path))?;
        let _ = writeln!(
            log,
            "--- {} boot {:?} in {:?} mode",
            jiff::Timestamp::now(),
            request.source,
            request.mode
        );
        let args = qemu_args(c, request, &paths);
        tracing::debug!(vm = %c.name, "{} {}", c.qemu.display(), args.join(" "));
        let mut cmd = launcher(&c.qemu);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io_err("open", &log_path))?)
            .stderr(log);
        let child = cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => QemuError::ToolMissing {
                program: c.qemu.to_string_lossy().into_owned(),
                package: "qemu-system-x86",
            },
            _ => io_err("start", &c.qemu)(e),
        })?;
        // From here on, an early return drops (kills) the process.
        let mut process = Process(child);
        let mut conn = Qmp::connect(&c.name, &paths.qmp_socket, &mut process.0, &log_path)?;
        conn.execute("cont", QMP_REPLY_TIMEOUT)?;
        Ok(Vm {
            process,
            qmp: Some(conn),
            request: request.clone(),
            shutdown_reason: None,
        })
    }

    /// Quit QEMU over QMP; kill it if QMP does not get it to exit in time.
    fn stop_vm(&mut self, why: &str) {
        self.soft_off_deadline = None;
        let Some(mut vm) = self.vm.take() else {
            return;
        };
        let pid = vm.process.0.id();
        let quit = match vm.qmp.as_mut() {
            Some(conn) => match conn.execute("quit", QMP_REPLY_TIMEOUT) {
                Ok(_) | Err(QemuError::QmpClosed { .. }) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            None => Err("no QMP connection".to_string()),
        };
        let exited = match quit {
            Ok(()) if wait_exit(&mut vm.process.0, QUIT_WAIT) => true,
            Ok(()) => {
                tracing::warn!(vm = %self.name(), pid, "QEMU did not exit within {} s of quit; \
                    killing it", QUIT_WAIT.as_secs());
                false
            }
            Err(e) => {
                tracing::warn!(vm = %self.name(), pid, "QMP quit failed ({e}); killing QEMU");
                false
            }
        };
        if !exited {
            let _ = vm.process.0.kill();
            let _ = vm.process.0.wait();
        }
        tracing::info!(vm = %self.name(), pid, why, "QEMU stopped");
        lock(&self.shared.status).pid = None;
    }

    /// Press the ACPI power button; the guest gets a grace period to power off.
    fn soft_off(&mut self) {
        let Some(vm) = self.vm.as_mut() else {
            return;
        };
        let pressed = vm
            .qmp
            .as_mut()
            .map(|conn| conn.execute("system_powerdown", QMP_REPLY_TIMEOUT));
        match pressed {
            Some(Ok(_)) => {
                tracing::info!(vm = %self.name(), "ACPI power button pressed; the guest has {} s",
                    self.config.soft_off_grace.as_secs());
                self.soft_off_deadline = Some(Instant::now() + self.config.soft_off_grace);
            }
            Some(Err(e)) => {
                tracing::warn!(vm = %self.name(), "system_powerdown failed ({e}); powering off");
                self.stop_vm("soft off without QMP");
            }
            None => self.stop_vm("soft off without QMP"),
        }
    }

    fn query_running(&mut self) -> bool {
        let Some(vm) = self.vm.as_mut() else {
            return false;
        };
        if !matches!(vm.process.0.try_wait(), Ok(None)) {
            return false;
        }
        let Some(conn) = vm.qmp.as_mut() else {
            return false;
        };
        match conn.execute("query-status", QMP_REPLY_TIMEOUT) {
            Ok(v) => v.get("status").and_then(Value::as_str) == Some("running"),
            Err(e) => {
                tracing::warn!(vm = %self.config.name, "query-status failed: {e}");
                false
            }
        }
    }

    /// Notice QMP events, a QEMU that exited on its own, and an ignored power button.
    fn watch(&mut self) {
        let name = self.config.name.clone();
        let Some(vm) = self.vm.as_mut() else {
            self.soft_off_deadline = None;
            return;
        };
        vm.take_events(&name, Duration::ZERO);
        match vm.process.0.try_wait() {
            Ok(Some(status)) => {
                if let Some(vm) = self.vm.take() {
                    self.exited(vm, status);
                }
            }
            Ok(None) => {
                if self.soft_off_deadline.is_some_and(|d| Instant::now() >= d) {
                    tracing::warn!(vm = %name, "the guest ignored the ACPI power button for {} s; \
                        powering off", self.config.soft_off_grace.as_secs());
                    self.stop_vm("graceful shutdown timed out");
                }
            }
            Err(e) => tracing::warn!(vm = %name, "cannot check on QEMU: {e}"),
        }
    }

    /// QEMU exited without being asked to: the guest powered off or rebooted, or QEMU died.
    fn exited(&mut self, mut vm: Vm, status: ExitStatus) {
        let name = self.config.name.clone();
        // The SHUTDOWN event may still be in the socket.
        vm.take_events(&name, Duration::from_millis(200));
        lock(&self.shared.status).pid = None;
        let soft_off = self.soft_off_deadline.take().is_some();
        let reason = vm.shutdown_reason.clone();
        if self.shared.pending.load(Ordering::SeqCst) > 0 {
            tracing::info!(vm = %name, ?reason, "QEMU exited while a BMC request is queued; \
                the request decides what happens");
            return;
        }
        match reason.as_deref() {
            Some("guest-reset") if !soft_off => {
                tracing::info!(vm = %name, "the guest rebooted; booting as its BMC says");
                match self.server() {
                    // Boots through the BMC model (a Boot command comes back to this worker).
                    Some(server) => {
                        server.guest_reset();
                    }
                    None => self.start_vm(vm.request.clone()),
                }
                return;
            }
            Some("guest-shutdown" | "guest-panic") => {
                tracing::info!(vm = %name, ?reason, "the guest powered itself off");
            }
            _ => {
                let log = self.config.qemu_log();
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                tracing::warn!(vm = %name, ?reason, %status, "QEMU exited on its own; {} ends \
                    with: {}", log.display(), last_lines(&text, 3));
            }
        }
        self.report_off();
    }
}

/// QEMU is started through `setpriv --pdeathsig KILL` when util-linux has it, so it dies with
/// the worker thread even if this process is killed outright.
fn launcher(qemu: &Path) -> Command {
    match find_program(Path::new("setpriv")) {
        Some(setpriv) => {
            let mut cmd = Command::new(setpriv);
            cmd.args(["--pdeathsig", "KILL", "--"]).arg(qemu);
            cmd
        }
        None => Command::new(qemu),
    }
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
/// one stops QEMU.
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
        let worker = Worker {
            config: config.clone(),
            shared: shared.clone(),
            rx,
            vm: None,
            soft_off_deadline: None,
        };
        let handle = std::thread::Builder::new()
            .name(format!("qemu-{}", config.name))
            .spawn(move || worker.run())
            .map_err(|source| QemuError::Worker {
                name: config.name.clone(),
                source,
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
    fn probe_without_firmware_or_qemu_falls_back_to_tcg_and_says_why() {
        let (accel, why) = probe(
            Path::new("qemu-system-x86_64"),
            Path::new("/nonexistent/OVMF.fd"),
            Duration::from_secs(1),
        );
        assert_eq!(accel, Accel::Tcg);
        assert!(why.contains("/dev/kvm") || why.contains("ovmf"), "{why}");
        if Path::new("/dev/kvm").exists() && Path::new(DEFAULT_OVMF).exists() {
            let (accel, why) = probe(
                Path::new("/nonexistent/qemu"),
                Path::new(DEFAULT_OVMF),
                Duration::from_secs(1),
            );
            assert_eq!(accel, Accel::Tcg);
            assert!(why.contains("cannot run"), "{why}");
        }
    }

    #[test]
    fn byte_search_and_log_tails() {
        assert!(contains(b"abc VMETAL def", b"VMETAL"));
        assert!(!contains(b"VMETA", b"VMETAL"));
        assert_eq!(last_lines("a\n\nb\nc\nd\n", 2), "c | d");
        assert_eq!(last_lines("", 2), "");
    }
}
