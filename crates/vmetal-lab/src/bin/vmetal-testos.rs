//! `vmetal-testos`: the test OS's one binary — `/init` (PID 1: mounts, modules, DHCP, config
//! drive, the cloud-init subset of `vmetal_lab::testos`), `kubeadm join`, its `kubelet`, `curl`.
//!
//! Multi-call: the applet is argv[0]'s basename (`init`, `kubeadm`, `kubelet`, `curl`), else the
//! first argument (`vmetal-testos kubelet ...`). Console lines start with the applet's name.

use std::ffi::CStr;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use vmetal_lab::join::{CaCheck, Cluster, JoinCommand, JoinError, JoinKind, NodeFacts, PinStatus};
use vmetal_lab::testos::{self, ConfigDrive, Step};

/// `PATH` for everything the test OS starts (the kernel hands init none).
const PATH_ENV: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// Kernel modules to load, one absolute `.ko` path a line in dependency order (written by
/// `images/testos/build.sh`).
const MODULE_LIST: &str = "/etc/testos/modules";
/// Runtime state: the DHCP hook and its per-interface lease files.
const RUN_DIR: &str = "/run/testos";
/// The bootstrap token `kubeadm join` hands to the kubelet (never on a command line).
const TOKEN_FILE: &str = "/var/lib/kubelet/bootstrap-token";
/// How long `kubeadm join` keeps trying before it gives up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long init waits for a DHCP lease per NIC (udhcpc keeps trying afterwards).
const DHCP_WAIT: Duration = Duration::from_secs(30);
/// How long init waits for disks to appear before looking for the config drive.
const DISK_WAIT: Duration = Duration::from_secs(10);
/// The kubelet posts Node status every this many Lease renewals.
const STATUS_EVERY: u32 = 6;
/// The line test harnesses wait for: the plan ran and the OS is up.
const READY_MARKER: &str = "VMETAL-TESTOS-READY";

/// udhcpc's hook: configure the lease and record it for init (`$RUN_DIR/dhcp/<interface>`).
const DHCP_SCRIPT: &str = r#"#!/bin/sh
# udhcpc hook of the vmetal test OS: apply the lease to $interface and record it.
[ -n "$interface" ] || exit 1
lease=/run/testos/dhcp/$interface
case "$1" in
deconfig)
  ip -4 addr flush dev "$interface"
  ip link set dev "$interface" up
  rm -f "$lease"
  ;;
bound|renew)
  if [ "$1" = bound ]; then ip -4 addr flush dev "$interface"; fi
  ip addr add "$ip/${mask:-24}" dev "$interface" 2>/dev/null
  if [ -n "$router" ]; then
    ip route del default dev "$interface" 2>/dev/null
    for r in $router; do ip route add default via "$r" dev "$interface" && break; done
  fi
  if [ -n "$dns" ]; then
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
  fi
  mkdir -p /run/testos/dhcp
  echo "$ip/${mask:-24} via ${router%% *}" > "$lease"
  ;;
esac
exit 0
"#;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let called = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    let (applet, rest) = match called.as_str() {
        "init" | "kubeadm" | "kubelet" | "curl" => (called.clone(), args.get(1..).unwrap_or(&[])),
        _ => (
            args.get(1).cloned().unwrap_or_default(),
            args.get(2..).unwrap_or(&[]),
        ),
    };
    match applet.as_str() {
        "init" => init(),
        "kubeadm" => kubeadm(rest),
        "kubelet" => match kubelet(rest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kubelet: {e:#}");
                ExitCode::FAILURE
            }
        },
        "curl" => curl(rest),
        _ => {
            eprintln!(
                "usage: vmetal-testos init|kubeadm|kubelet|curl [args] (or call it by one of \
                 those names); it is the test OS's /init and its kubeadm, kubelet and curl"
            );
            ExitCode::from(64)
        }
    }
}

/// A command with the test OS's environment, stdin closed, output to the console.
fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("PATH", PATH_ENV)
        .env("HOME", "/root")
        .env("TERM", "linux")
        .current_dir("/")
        .stdin(Stdio::null());
    c
}

// ---------------------------------------------------------------------------------------------
// init

fn init() -> ExitCode {
    if std::process::id() != 1 {
        eprintln!(
            "vmetal-testos: init must run as PID 1 (it mounts filesystems and loads modules); \
             it is the test OS's /init, not a host command"
        );
        return ExitCode::from(2);
    }
    println!("vmetal-testos: init starting");
    // PID 1 must never exit or panic: the kernel would panic with it.
    match std::panic::catch_unwind(boot) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => println!("vmetal-testos: boot failed: {e:#}"),
        Err(_) => println!("vmetal-testos: boot panicked"),
    }
    reap_forever()
}

fn boot() -> Result<()> {
    mount_filesystems();
    load_modules();
    network_up();
    let plan = match find_config_drive() {
        Some((disk, drive)) => {
            println!(
                "vmetal-testos: config drive on {disk}: hostname {}, uuid {}, user data {}",
                drive.meta.hostname.as_deref().unwrap_or("(none)"),
                drive.meta.uuid.as_deref().unwrap_or("(none)"),
                drive
                    .user_data
                    .as_ref()
                    .map_or("none".to_string(), |u| format!("{} bytes", u.len())),
            );
            if let Some(problem) = &drive.meta_problem {
                println!("vmetal-testos: meta_data: {problem}");
            }
            testos::plan(&drive.meta, drive.user_data.as_deref())
        }
        None => {
            println!("vmetal-testos: no config drive (config-2) on any disk; nothing to apply");
            Vec::new()
        }
    };
    for step in &plan {
        let outcome = apply(step);
        println!("vmetal-testos: {}: {outcome}", step.label());
    }
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    println!("{READY_MARKER} hostname={}", hostname.trim());
    Ok(())
}

fn mount_filesystems() {
    use nix::mount::{MsFlags, mount};
    let table: [(&str, &str, &str, MsFlags); 5] = [
        (
            "proc",
            "/proc",
            "proc",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        ),
        ("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID),
        ("devpts", "/dev/pts", "devpts", MsFlags::MS_NOSUID),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        ),
    ];
    for (source, target, fstype, flags) in table {
        if let Err(e) = fs::create_dir_all(target) {
            println!("vmetal-testos: cannot create {target}: {e}");
            continue;
        }
        match mount(Some(source), target, Some(fstype), flags, None::<&str>) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => println!("vmetal-testos: cannot mount {fstype} on {target}: {e}"),
        }
    }
    for dir in ["/tmp", "/root", "/etc", "/var/lib"] {
        if let Err(e) = fs::create_dir_all(dir) {
            println!("vmetal-testos: cannot create {dir}: {e}");
        }
    }
}

fn load_modules() {
    let list = match fs::read_to_string(MODULE_LIST) {
        Ok(l) => l,
        Err(e) => {
            println!("vmetal-testos: no module list {MODULE_LIST} ({e}); loading no modules");
            return;
        }
    };
    let params: &CStr = c"";
    let mut loaded = Vec::new();
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let name = Path::new(path)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let result = fs::File::open(path)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                nix::kmod::finit_module(&f, params, nix::kmod::ModuleInitFlags::empty())
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(()) => loaded.push(name),
            Err(e) if e == nix::errno::Errno::EEXIST.to_string() => {}
            Err(e) => println!("vmetal-testos: module {name}: {e}"),
        }
    }
    println!(
        "vmetal-testos: loaded {} modules: {}",
        loaded.len(),
        loaded.join(" ")
    );
}

/// Physical NICs (those with a device behind them), sorted.
fn physical_nics() -> Vec<String> {
    let mut nics: Vec<String> = fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("device").exists())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    nics.sort();
    nics
}

fn network_up() {
    let script = Path::new(RUN_DIR).join("udhcpc.script");
    let written = fs::create_dir_all(Path::new(RUN_DIR).join("dhcp"))
        .and_then(|()| fs::write(&script, DHCP_SCRIPT))
        .and_then(|()| fs::set_permissions(&script, fs::Permissions::from_mode(0o755)));
    if let Err(e) = written {
        println!(
            "vmetal-testos: cannot write {}: {e}; no DHCP",
            script.display()
        );
        return;
    }
    // NIC drivers probe asynchronously after their module loads.
    let start = Instant::now();
    let mut nics = physical_nics();
    while nics.is_empty() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(200));
        nics = physical_nics();
    }
    if nics.is_empty() {
        println!("vmetal-testos: no network interfaces found");
        return;
    }
    let _ = command("ip")
        .args(["link", "set", "dev", "lo", "up"])
        .status();
    for nic in &nics {
        let _ = command("ip")
            .args(["link", "set", "dev", nic, "up"])
            .status();
        // udhcpc stays in the foreground of its own process and renews the lease; init reaps
        // it if it ever exits.
        let spawned = command("udhcpc")
            .args(["-f", "-i", nic, "-t", "10", "-T", "2", "-A", "5", "-s"])
            .arg(&script)
            .stdout(Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            println!("vmetal-testos: {nic}: cannot start udhcpc: {e}");
        }
    }
    let mut waiting: Vec<&String> = nics.iter().collect();
    let start = Instant::now();
    while !waiting.is_empty() && start.elapsed() < DHCP_WAIT {
        waiting.retain(|nic| {
            match fs::read_to_string(Path::new(RUN_DIR).join("dhcp").join(nic.as_str())) {
                Ok(lease) => {
                    println!("vmetal-testos: {nic}: dhcp {}", lease.trim());
                    false
                }
                Err(_) => true,
            }
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    for nic in waiting {
        println!(
            "vmetal-testos: {nic}: no DHCP lease within {} s (udhcpc keeps trying)",
            DHCP_WAIT.as_secs()
        );
    }
}

/// Whole disks (no partitions, no loop/ram/optical devices), sorted.
fn whole_disks() -> Vec<String> {
    const SKIP: [&str; 8] = ["loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd"];
    let mut disks: Vec<String> = fs::read_dir("/sys/class/block")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| !e.path().join("partition").exists())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !SKIP.iter().any(|p| n.starts_with(p)))
                .collect()
        })
        .unwrap_or_default();
    disks.sort();
    disks
}

fn find_config_drive() -> Option<(String, ConfigDrive)> {
    let start = Instant::now();
    loop {
        let disks = whole_disks();
        for disk in &disks {
            let dev = PathBuf::from("/dev").join(disk);
            match vmetal_agent::read_config_drive(&dev) {
                Ok(Some(fat)) => {
                    if let Some(drive) = testos::read_drive(&fat) {
                        return Some((dev.display().to_string(), drive));
                    }
                }
                Ok(None) => {}
                Err(e) => println!("vmetal-testos: {}: {e}", dev.display()),
            }
        }
        // Disk drivers probe asynchronously; a config drive may show up a moment later.
        if start.elapsed() >= DISK_WAIT {
            println!("vmetal-testos: disks searched: {}", disks.join(" "));
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Do one step; the outcome for its console line (never the step's contents).
fn apply(step: &Step) -> String {
    match step {
        Step::Ignored(keys) => format!("{} (not implemented by the test OS)", keys.join(", ")),
        Step::Skipped { reason, .. } => format!("skipped: {reason}"),
        Step::Run { command: c, .. } => run(&c.argv()),
        Step::WriteFile {
            path,
            content,
            mode,
            append,
            ..
        } => match write_file(path, content, *mode, *append) {
            Ok(()) => format!(
                "{} {} ({} bytes, mode {mode:04o})",
                if *append { "appended to" } else { "wrote" },
                path.display(),
                content.len()
            ),
            Err(e) => format!("failed: {e:#}"),
        },
        Step::Hostname(name) => match set_hostname(name) {
            Ok(()) => format!("set to {name}"),
            Err(e) => format!("failed: {e:#}"),
        },
        Step::AuthorizedKeys(keys) => {
            let mut text = keys.join("\n");
            text.push('\n');
            let written = fs::create_dir_all("/root/.ssh")
                .and_then(|()| fs::set_permissions("/root/.ssh", fs::Permissions::from_mode(0o700)))
                .map_err(anyhow::Error::from)
                .and_then(|()| {
                    write_file(
                        Path::new(testos::AUTHORIZED_KEYS),
                        text.as_bytes(),
                        0o600,
                        true,
                    )
                });
            match written {
                Ok(()) => format!("{} keys in {}", keys.len(), testos::AUTHORIZED_KEYS),
                Err(e) => format!("failed: {e:#}"),
            }
        }
        Step::Script(body) => {
            let path = Path::new(RUN_DIR).join("user-data");
            match write_file(&path, body, 0o700, false) {
                Ok(()) => run(&[path.display().to_string()]),
                Err(e) => format!("failed: {e:#}"),
            }
        }
    }
}

/// Run a command to completion; `exit N`, `killed by signal N` or why it did not start. Only
/// the program's name may appear: arguments can hold a join token.
fn run(argv: &[String]) -> String {
    let Some((program, args)) = argv.split_first() else {
        return "nothing to run".into();
    };
    match command(program).args(args).status() {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => "ended without an exit status".into(),
        },
        Err(e) => format!("cannot start {program}: {e}"),
    }
}

fn write_file(path: &Path, content: &[u8], mode: u32, append: bool) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .mode(mode)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(content)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its mode through open(); cloud-init sets it either way.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn set_hostname(name: &str) -> Result<()> {
    nix::unistd::sethostname(name).with_context(|| format!("sethostname({name})"))?;
    fs::write("/etc/hostname", format!("{name}\n")).context("writing /etc/hostname")?;
    fs::write(
        "/etc/hosts",
        format!("127.0.0.1 localhost\n127.0.1.1 {name}\n::1 localhost\n"),
    )
    .context("writing /etc/hosts")
}

/// Init's main loop: reap every child (orphans too: the kubelet after kubeadm exits), and keep
/// a console shell running when the kernel command line asks for one (`testos.shell`).
fn reap_forever() -> ! {
    use nix::sys::wait::{WaitStatus, waitpid};
    let want_shell = fs::read_to_string("/proc/cmdline")
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "testos.shell"));
    let spawn_shell = || {
        // setsid -c: the console becomes the shell's controlling terminal (job control, ^C).
        command("setsid")
            .args(["-c", "/bin/sh", "-l"])
            .stdin(Stdio::inherit())
            .spawn()
            .map(|c| c.id())
            .map_err(|e| println!("vmetal-testos: cannot start a shell: {e}"))
            .ok()
    };
    let mut shell = if want_shell { spawn_shell() } else { None };
    loop {
        match waitpid(None::<nix::unistd::Pid>, None) {
            Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) => {
                if want_shell && shell.is_some_and(|s| i64::from(s) == i64::from(pid.as_raw())) {
                    std::thread::sleep(Duration::from_secs(1));
                    shell = spawn_shell();
                }
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            // No children right now; some may appear (a shell, a restarted daemon) later.
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// kubeadm

/// `kubeadm join` arguments.
struct JoinArgs {
    endpoint: String,
    token: String,
    check: CaCheck,
    node_name: Option<String>,
}

/// A flag's value: `--flag value` or `--flag=value`.
fn flag_value<'a>(
    flag: &str,
    inline: Option<&'a str>,
    rest: &mut impl Iterator<Item = &'a String>,
) -> Result<&'a str> {
    match inline {
        Some(v) => Ok(v),
        None => rest
            .next()
            .map(String::as_str)
            .with_context(|| format!("{flag} needs a value")),
    }
}

fn parse_join_args(args: &[String]) -> Result<JoinArgs> {
    let mut endpoint = None;
    let mut token = None;
    let mut hash = None;
    let mut skip_ca = false;
    let mut node_name = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (arg.as_str(), None),
        };
        match flag {
            "--token" | "--discovery-token" => token = Some(flag_value(flag, inline, &mut it)?),
            "--discovery-token-ca-cert-hash" => hash = Some(flag_value(flag, inline, &mut it)?),
            "--discovery-token-unsafe-skip-ca-verification" => skip_ca = true,
            "--node-name" => node_name = Some(flag_value(flag, inline, &mut it)?.to_lowercase()),
            f if f.starts_with('-') => bail!(
                "flag {f} is not supported by the test OS's kubeadm (it knows --token, \
                 --discovery-token-ca-cert-hash, --discovery-token-unsafe-skip-ca-verification, \
                 --node-name)"
            ),
            // Never echo a positional: a misplaced token would end up on the console.
            _ if endpoint.is_some() => bail!("kubeadm join takes one <host:port> endpoint"),
            _ => endpoint = Some(arg.clone()),
        }
    }
    let endpoint = endpoint.context("kubeadm join needs the API server endpoint <host:port>")?;
    let token = token.context("kubeadm join needs --token <id>.<secret>")?;
    if bootstrap_token_shape(token).is_none() {
        bail!("the --token value is not a bootstrap token (<6 of [a-z0-9]>.<16 of [a-z0-9]>)");
    }
    let check = match (hash, skip_ca) {
        (Some(h), _) => CaCheck::Pinned(h.to_string()),
        (None, true) => CaCheck::AcceptAny,
        (None, false) => bail!(
            "kubeadm join needs --discovery-token-ca-cert-hash sha256:<hash> (or \
             --discovery-token-unsafe-skip-ca-verification)"
        ),
    };
    Ok(JoinArgs {
        endpoint,
        token: token.to_string(),
        check,
        node_name,
    })
}

/// `(id, secret)` of a well-formed bootstrap token (the API server's own rule).
fn bootstrap_token_shape(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

fn kubeadm(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        Some("join") => match kubeadm_join(args.get(1..).unwrap_or(&[])) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kubeadm: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some("version") => {
            println!(
                "kubeadm version: vmetal-testos {} (join only)",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "kubeadm: the test OS implements only `kubeadm join <host:port> --token <token> \
                 --discovery-token-ca-cert-hash sha256:<hash>`"
            );
            ExitCode::from(64)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn this_node_name(explicit: Option<String>) -> Result<String> {
    let name = match explicit {
        Some(n) => n,
        None => fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading /proc/sys/kernel/hostname")?
            .trim()
            .to_lowercase(),
    };
    if name.is_empty() || name == "(none)" {
        bail!("the machine has no host name; set one (cloud-config hostname) or pass --node-name");
    }
    Ok(name)
}

fn kubeadm_join(args: &[String]) -> Result<()> {
    let a = parse_join_args(args)?;
    let name = this_node_name(a.node_name.clone())?;
    let facts = NodeFacts::from_machine(&name, Path::new("/"))
        .context("cannot read this machine's CPUs and memory from /proc")?;
    println!(
        "kubeadm: joining {} as node {name} ({} CPUs, {} MiB)",
        a.endpoint, facts.cpus, facts.memory_mib
    );
    let cmd = JoinCommand {
        kind: JoinKind::Kubeadm,
        endpoint: a.endpoint.clone(),
        token: a.token.clone(),
        ca_cert_hash: match &a.check {
            CaCheck::Pinned(h) => Some(h.clone()),
            CaCheck::AcceptAny => None,
        },
    };
    let cluster = Cluster::connect(&cmd, &a.check)?;
    runtime()?.block_on(register(&cluster, &facts))?;
    match cluster.pin_status() {
        PinStatus::Verified => {
            println!("kubeadm: the cluster CA matches --discovery-token-ca-cert-hash");
        }
        PinStatus::Unchecked => println!(
            "kubeadm: WARNING: {} presented only its serving certificate, not its CA, so \
             --discovery-token-ca-cert-hash could not be checked; joined without verifying the \
             cluster's identity",
            a.endpoint
        ),
        PinStatus::NotPinned => println!(
            "kubeadm: WARNING: --discovery-token-unsafe-skip-ca-verification: the cluster's \
             identity was not verified"
        ),
        PinStatus::Pending | PinStatus::Mismatch(_) => {}
    }
    let pid = start_kubelet(&a, &name)?;
    println!(
        "kubeadm: This node has joined the cluster: Node {name} is registered at {}; the \
         kubelet (pid {pid}) renews its Lease every {} s.",
        a.endpoint,
        vmetal_lab::join::LEASE_RENEW.as_secs()
    );
    Ok(())
}

/// Register the Node until it exists, retrying for [`JOIN_TIMEOUT`]; a CA mismatch is final.
async fn register(cluster: &Cluster, facts: &NodeFacts) -> Result<()> {
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let result = match cluster.register(facts).await {
            Ok(()) => cluster.node_exists(&facts.name).await,
            Err(e) => Err(e),
        };
        let error = match result {
            Ok(true) => return Ok(()),
            Ok(false) => format!("Node {} is not there after registering it", facts.name),
            Err(
                e @ (JoinError::CaCertHashMismatch { .. } | JoinError::InvalidCaCertHash { .. }),
            ) => {
                return Err(e.into());
            }
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= JOIN_TIMEOUT {
            bail!(
                "could not join after {attempts} attempts in {} s: {error}",
                start.elapsed().as_secs()
            );
        }
        eprintln!("kubeadm: attempt {attempts}: {error}; retrying in 3 s");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// Start `vmetal-testos kubelet` in the background; the token goes through a 0600 file.
fn start_kubelet(a: &JoinArgs, name: &str) -> Result<u32> {
    let token_file = Path::new(TOKEN_FILE);
    if let Some(dir) = token_file.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
    }
    write_file(token_file, a.token.as_bytes(), 0o600, false)?;
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut c = command(&exe.display().to_string());
    c.args(["kubelet", "--endpoint", &a.endpoint, "--node-name", name])
        .args(["--token-file", TOKEN_FILE]);
    match &a.check {
        CaCheck::Pinned(h) => c.args(["--discovery-token-ca-cert-hash", h]),
        CaCheck::AcceptAny => c.arg("--discovery-token-unsafe-skip-ca-verification"),
    };
    // Its own process group: it outlives kubeadm and the runcmd shell, and init reaps it.
    let child = c
        .process_group(0)
        .spawn()
        .context("cannot start the kubelet")?;
    Ok(child.id())
}

// ---------------------------------------------------------------------------------------------
// kubelet

fn kubelet(args: &[String]) -> Result<()> {
    let mut endpoint = None;
    let mut name = None;
    let mut token_file = None;
    let mut check = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (arg.as_str(), None),
        };
        match flag {
            "--endpoint" => endpoint = Some(flag_value(flag, inline, &mut it)?.to_string()),
            "--node-name" => name = Some(flag_value(flag, inline, &mut it)?.to_string()),
            "--token-file" => token_file = Some(flag_value(flag, inline, &mut it)?.to_string()),
            "--discovery-token-ca-cert-hash" => {
                check = Some(CaCheck::Pinned(
                    flag_value(flag, inline, &mut it)?.to_string(),
                ));
            }
            "--discovery-token-unsafe-skip-ca-verification" => check = Some(CaCheck::AcceptAny),
            other => bail!("unknown argument {other:?}; the kubelet is started by kubeadm join"),
        }
    }
    let endpoint = endpoint.context("--endpoint <host:port> is required")?;
    let name = name.context("--node-name is required")?;
    let token_file = token_file.context("--token-file is required")?;
    let check = check.context("--discovery-token-ca-cert-hash is required")?;
    let token = fs::read_to_string(&token_file)
        .with_context(|| format!("cannot read the bootstrap token from {token_file}"))?
        .trim()
        .to_string();
    let facts = NodeFacts::from_machine(&name, Path::new("/"))
        .context("cannot read this machine's CPUs and memory from /proc")?;
    let cmd = JoinCommand {
        kind: JoinKind::Kubeadm,
        endpoint,
        token,
        ca_cert_hash: None,
    };
    let cluster = Cluster::connect(&cmd, &check)?;
    let since = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    runtime()?.block_on(async {
        let mut tick = 0u32;
        loop {
            tokio::time::sleep(vmetal_lab::join::LEASE_RENEW).await;
            tick = tick.wrapping_add(1);
            if let Err(e) = cluster.renew_lease(&facts).await {
                eprintln!("kubelet: renewing the Lease of node {name}: {e}");
            }
            if tick.is_multiple_of(STATUS_EVERY)
                && let Err(e) = cluster.post_ready(&facts, &since).await
            {
                eprintln!("kubelet: posting the status of node {name}: {e}");
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// curl

/// curl's exit codes the applet uses.
const CURL_USAGE: u8 = 2;
const CURL_CONNECT: u8 = 7;
const CURL_HTTP_ERROR: u8 = 22;
const CURL_WRITE: u8 = 23;

/// What `curl` was asked to do.
#[derive(Debug, Default, PartialEq, Eq)]
struct CurlArgs {
    url: String,
    fail: bool,
    silent: bool,
    show_error: bool,
    location: bool,
    insecure: bool,
    output: Option<String>,
    cacert: Option<String>,
}

fn parse_curl_args(args: &[String]) -> Result<CurlArgs, String> {
    let mut a = CurlArgs::default();
    let mut url = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("option {name} needs a value"))
        };
        match arg.as_str() {
            "--fail" => a.fail = true,
            "--silent" => a.silent = true,
            "--show-error" => a.show_error = true,
            "--location" => a.location = true,
            "--insecure" => a.insecure = true,
            "-o" | "--output" => a.output = Some(value(arg)?),
            "--cacert" => a.cacert = Some(value(arg)?),
            "-X" | "--request" => {
                let method = value(arg)?;
                if method != "GET" {
                    return Err(format!("only GET is supported, not {method}"));
                }
            }
            s if s.starts_with("--") => return Err(format!("option {s} is not supported")),
            s if s.starts_with('-') && s.len() > 1 => {
                for c in s.chars().skip(1) {
                    match c {
                        'f' => a.fail = true,
                        's' => a.silent = true,
                        'S' => a.show_error = true,
                        'L' => a.location = true,
                        'k' => a.insecure = true,
                        other => return Err(format!("option -{other} is not supported")),
                    }
                }
            }
            _ if url.is_some() => return Err("only one URL is supported".into()),
            _ => url = Some(arg.clone()),
        }
    }
    a.url = url.ok_or("no URL given")?;
    if !(a.url.starts_with("https://") || a.url.starts_with("http://")) {
        return Err("only http:// and https:// URLs are supported".into());
    }
    Ok(a)
}

/// A real HTTP(S) GET, enough for `curl -fsSLk <url> | sh -` and scripts fetching files. Never
/// prints the URL (the vCluster join URL carries the token).
fn curl(args: &[String]) -> ExitCode {
    let a = match parse_curl_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("curl: {e} (the test OS's curl does GET with -f -s -S -L -k -o --cacert)");
            return ExitCode::from(CURL_USAGE);
        }
    };
    let complain = |msg: String| {
        if !a.silent || a.show_error {
            eprintln!("curl: {msg}");
        }
    };
    match runtime()
        .map_err(|e| (CURL_CONNECT, e.to_string()))
        .and_then(|rt| rt.block_on(fetch(&a)))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            complain(format!("({code}) {msg}"));
            ExitCode::from(code)
        }
    }
}

async fn fetch(a: &CurlArgs) -> Result<(), (u8, String)> {
    let mut cas = Vec::new();
    if let Some(path) = &a.cacert {
        cas.push(fs::read_to_string(path).map_err(|e| (77, format!("cannot read {path}: {e}")))?);
    }
    let tls = vmetal_bmc::redfish::tls::client_config(a.insecure, &cas)
        .map_err(|e| (77, format!("TLS setup: {}", e.0)))?;
    let redirects = if a.location {
        reqwest::redirect::Policy::limited(10)
    } else {
        reqwest::redirect::Policy::none()
    };
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(redirects)
        .connect_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| (CURL_CONNECT, e.without_url().to_string()))?;
    let connect_error = |e: reqwest::Error| {
        let e = e.without_url();
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        (CURL_CONNECT, msg)
    };
    let response = client.get(&a.url).send().await.map_err(connect_error)?;
    let status = response.status();
    if a.fail && status.as_u16() >= 400 {
        return Err((
            CURL_HTTP_ERROR,
            format!("The requested URL returned error: {}", status.as_u16()),
        ));
    }
    let body = response.bytes().await.map_err(connect_error)?;
    let written = match &a.output {
        Some(path) => fs::write(path, &body),
        None => std::io::stdout()
            .write_all(&body)
            .and_then(|()| std::io::stdout().flush()),
    };
    written.map_err(|e| (CURL_WRITE, format!("writing the body: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    const TOKEN: &str = "abcdef.0123456789abcdef";

    #[test]
    fn kubeadm_join_flags() {
        let hash = format!("sha256:{}", "ab".repeat(32));
        let a = parse_join_args(&args(&format!(
            "10.0.2.2:6443 --token {TOKEN} --discovery-token-ca-cert-hash {hash}"
        )))
        .unwrap();
        assert_eq!(a.endpoint, "10.0.2.2:6443");
        assert_eq!(a.token, TOKEN);
        assert_eq!(a.check, CaCheck::Pinned(hash.clone()));
        let a = parse_join_args(&args(&format!(
            "--token={TOKEN} --discovery-token-unsafe-skip-ca-verification --node-name=Srv-1 e:1"
        )))
        .unwrap();
        assert_eq!(
            (a.check, a.node_name.as_deref()),
            (CaCheck::AcceptAny, Some("srv-1"))
        );
    }

    #[test]
    fn kubeadm_join_errors_never_show_the_token() {
        for bad in [
            format!("e:1 --token {TOKEN}"),
            format!("e:1 {TOKEN} --discovery-token-unsafe-skip-ca-verification"),
            format!("e:1 --token {TOKEN}x --discovery-token-unsafe-skip-ca-verification"),
            format!("e:1 --token {TOKEN} --control-plane"),
            "e:1".to_string(),
        ] {
            let err = parse_join_args(&args(&bad)).err().unwrap();
            let text = format!("{err:#}");
            assert!(!text.contains("0123456789abcdef"), "{text}");
        }
    }

    #[test]
    fn curl_flags_as_the_vcluster_join_uses_them() {
        let a = parse_curl_args(&args("-fsSLk https://vc:443/node/join?token=x")).unwrap();
        assert!(a.fail && a.silent && a.show_error && a.location && a.insecure);
        assert_eq!(a.url, "https://vc:443/node/join?token=x");
        let a = parse_curl_args(&args("--fail -o /tmp/f http://h/x")).unwrap();
        assert_eq!(a.output.as_deref(), Some("/tmp/f"));
        for bad in [
            "-d x http://h/",
            "-X POST http://h/",
            "ftp://h/",
            "",
            "http://a http://b",
        ] {
            assert!(parse_curl_args(&args(bad)).is_err(), "{bad}");
        }
    }
}
