//! The per-VM worker thread: owns the QEMU child process and its QMP connection, takes power
//! requests over a channel, and notices a guest that powered off or rebooted on its own.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;
use vmetal_bmc::BootModeOverride;

use super::args::{BootRequest, RunPaths, qemu_args};
use super::{QemuConfig, QemuError, find_program, last_lines, lock, qmp};
use crate::sim::{BootSource, SimulatedServer, WeakServer};

/// How long QEMU may take to open its QMP socket and greet.
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a QMP command may take to be answered.
pub(super) const QMP_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long QEMU may take to exit after `quit` before it is killed.
pub(super) const QUIT_WAIT: Duration = Duration::from_secs(5);
/// How often the worker looks for QMP events and a QEMU that exited on its own.
const POLL: Duration = Duration::from_millis(100);

/// A QEMU child process, killed if it is still running when dropped (the last resort that
/// keeps a panicking worker from leaving VMs behind).
pub(super) struct Process(pub(super) Child);

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
struct QmpConn {
    name: String,
    stream: UnixStream,
    lines: qmp::LineBuffer,
    session: qmp::Session,
    /// Events read while waiting for replies, for the worker to look at.
    events: Vec<qmp::Event>,
}

impl QmpConn {
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
            let msg = conn.next_message(
                deadline,
                "greet and negotiate capabilities",
                QMP_CONNECT_TIMEOUT,
            )?;
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

    /// The next message, waiting until `deadline` (which is `bound` after the start).
    fn next_message(
        &mut self,
        deadline: Instant,
        what: &str,
        bound: Duration,
    ) -> Result<qmp::Message, QemuError> {
        loop {
            if let Some(msg) = self.buffered() {
                return Ok(msg);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QemuError::QmpTimeout {
                    name: self.name.clone(),
                    what: what.into(),
                    secs: bound.as_secs(),
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
            let msg = self.next_message(deadline, &what, timeout)?;
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
    qmp: Option<QmpConn>,
    request: BootRequest,
    /// The reason of the last `SHUTDOWN` event (`guest-shutdown`, `guest-reset`, ...).
    shutdown_reason: Option<String>,
}

impl Vm {
    /// Look at QMP events that arrived; after `linger`, a closed connection is expected.
    fn take_events(&mut self, name: &str, linger: Duration) {
        let Some(conn) = self.qmp.as_mut() else {
            return;
        };
        let deadline = Instant::now() + linger;
        let lost = loop {
            match conn.poll() {
                Ok(()) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(()) => break false,
                // QEMU closes the connection as it exits; the exit is noticed next.
                Err(QemuError::QmpClosed { .. }) => break true,
                Err(e) => {
                    tracing::warn!(vm = %name, "QMP connection lost: {e}");
                    break true;
                }
            }
        };
        for event in conn.events.drain(..) {
            tracing::debug!(vm = %name, event = %event.name, data = %event.data, "QMP event");
            if let Some(reason) = event.shutdown_reason() {
                self.shutdown_reason = Some(reason.to_string());
            }
        }
        if lost {
            self.qmp = None;
        }
    }
}

pub(super) enum Cmd {
    Boot(BootRequest),
    PowerOff,
    SoftOff,
    Status(mpsc::Sender<bool>),
    Shutdown(mpsc::Sender<()>),
    Exit,
}

/// What the machine handles read about the VM.
#[derive(Default)]
pub(super) struct Status {
    pub(super) boot_count: u64,
    pub(super) last_boot: Option<BootSource>,
    pub(super) pid: Option<u32>,
    pub(super) server: Option<WeakServer>,
    /// Length of the serial log when the latest boot was asked for.
    pub(super) serial_mark: u64,
    pub(super) last_error: Option<String>,
}

/// State shared by the machine handles and the worker.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) status: Mutex<Status>,
    /// Power requests sent and not yet handled: a QEMU exit that races one is not reported.
    pub(super) pending: AtomicU64,
}

pub(super) struct Worker {
    config: QemuConfig,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Cmd>,
    vm: Option<Vm>,
    soft_off_deadline: Option<Instant>,
}

impl Worker {
    /// Start the worker thread of the VM `config` describes.
    pub(super) fn spawn(
        config: QemuConfig,
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Cmd>,
    ) -> io::Result<std::thread::JoinHandle<()>> {
        let worker = Self {
            config,
            shared,
            rx,
            vm: None,
            soft_off_deadline: None,
        };
        std::thread::Builder::new()
            .name(format!("qemu-{}", worker.config.name))
            .spawn(move || worker.run())
    }

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
        let mut conn = QmpConn::connect(&c.name, &paths.qmp_socket, &mut process.0, &log_path)?;
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
            // It exited on its own just now (the exit was not noticed yet).
            _ if !matches!(vm.process.0.try_wait(), Ok(None)) => Ok(()),
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
