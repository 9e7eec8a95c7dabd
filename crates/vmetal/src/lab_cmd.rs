//! `vmetal lab`: serve virtual BMCs (Redfish and IPMI) over simulated servers or one QEMU VM,
//! so the rest of vmetal — and `vmetal bmc`, ipmitool or curl — can drive servers with no hardware.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use vmetal_lab::ipmi::IpmiService;
use vmetal_lab::qemu::{Accel, DiskFormat, QemuConfig, QemuMachine, QemuNet};
use vmetal_lab::redfish::{RedfishConfig, RedfishService};
use vmetal_lab::{ServerIdentity, SimulatedServer};

/// Lab tools.
#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Serve N simulated servers behind one Redfish service and one IPMI port each, or, with
    /// --qemu-disk, one QEMU VM (like sushy-tools and virtualbmc in front of a libvirt VM).
    ///
    /// With --qemu-disk, power on starts QEMU with the boot order the BMC's boot override asks
    /// for (network: the virtio NIC first, then the disk; disk: the disk first, then the
    /// network), in legacy BIOS (SeaBIOS with the iPXE ROM) or UEFI (OVMF) mode; power off
    /// quits it; a guest that powers itself off reads Off. The serial console is appended to
    /// <workdir>/vm-serial.log. Needs qemu-system-x86, ipxe-qemu and ovmf.
    ///
    /// Example: vmetal lab bmc --qemu-disk vm.img --qemu-disk-size 20 --qemu-tap tap0
    Bmc(LabBmcArgs),
}

/// `--qemu-accel` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AccelArg {
    /// KVM if a short probe boot works under it, else TCG.
    Auto,
    /// Software emulation.
    Tcg,
    /// KVM, unprobed.
    Kvm,
}

/// `--qemu-disk-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormatArg {
    Raw,
    Qcow2,
}

#[derive(Debug, Args)]
struct LabBmcArgs {
    /// Redfish listen address (one service for all systems).
    #[arg(long, default_value = "127.0.0.1:8000")]
    redfish: SocketAddr,
    /// IPMI listen address of the first system; system i listens on port + i (port 0: any
    /// free port for each).
    #[arg(long, default_value = "127.0.0.1:6230")]
    ipmi: SocketAddr,
    /// How many simulated servers.
    #[arg(long, default_value_t = 1)]
    systems: u32,
    /// BMC user name.
    #[arg(long, default_value = "admin")]
    username: String,
    /// BMC password.
    #[arg(long, default_value = "password")]
    password: String,
    /// Serve Redfish over HTTPS with a generated certificate (use --insecure or the CA).
    #[arg(long)]
    tls: bool,
    /// Serve one QEMU VM with this disk file instead of simulated servers.
    #[arg(long, value_name = "PATH", conflicts_with = "systems")]
    qemu_disk: Option<PathBuf>,
    /// Create the disk (sparse) with this size in GiB when it does not exist.
    #[arg(long, value_name = "GiB", requires = "qemu_disk")]
    qemu_disk_size: Option<u64>,
    /// The disk's format [default: qcow2 if the file has the qcow2 magic, else raw].
    #[arg(long, value_enum, value_name = "FORMAT", requires = "qemu_disk")]
    qemu_disk_format: Option<FormatArg>,
    /// The VM NIC's MAC (the host's bootMACAddress).
    #[arg(
        long,
        value_name = "MAC",
        default_value = "52:54:00:00:00:01",
        requires = "qemu_disk"
    )]
    qemu_mac: String,
    /// Attach the NIC to this existing tap device (on the provisioning bridge); without it
    /// QEMU's user-mode network is used.
    #[arg(long, value_name = "IF", requires = "qemu_disk")]
    qemu_tap: Option<String>,
    /// VM memory in MiB.
    #[arg(
        long,
        value_name = "MiB",
        default_value_t = 2048,
        requires = "qemu_disk"
    )]
    qemu_memory: u64,
    /// VM CPUs.
    #[arg(long, value_name = "N", default_value_t = 2, requires = "qemu_disk")]
    qemu_cpus: u32,
    /// Accelerator.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto, requires = "qemu_disk")]
    qemu_accel: AccelArg,
    /// Where the QMP socket, QEMU's log and the serial log go [default: <disk>.lab/].
    #[arg(long, value_name = "DIR", requires = "qemu_disk")]
    qemu_workdir: Option<PathBuf>,
}

/// The QEMU VM of `vmetal lab bmc --qemu-disk`.
fn qemu_vm(args: &LabBmcArgs, disk: &Path) -> anyhow::Result<(SimulatedServer, QemuMachine)> {
    let mut format = args.qemu_disk_format.map(|f| match f {
        FormatArg::Raw => DiskFormat::Raw,
        FormatArg::Qcow2 => DiskFormat::Qcow2,
    });
    if !disk.exists() {
        let size = args.qemu_disk_size.with_context(|| {
            format!(
                "the disk {} does not exist: give --qemu-disk-size GiB to create it",
                disk.display()
            )
        })?;
        let f = *format.get_or_insert(DiskFormat::Raw);
        vmetal_lab::qemu::create_disk(disk, size << 30, f)?;
        println!("# created the {f:?} disk {} ({size} GiB)", disk.display());
    }
    let format = match format {
        Some(f) => f,
        None => sniff_format(disk)?,
    };
    let workdir = args.qemu_workdir.clone().unwrap_or_else(|| {
        let mut dir = disk.as_os_str().to_owned();
        dir.push(".lab");
        PathBuf::from(dir)
    });
    let mut identity = ServerIdentity::numbered(0);
    identity.model = "QEMU Standard PC (vmetal lab)".into();
    identity.boot_mac = args.qemu_mac.to_ascii_lowercase();
    let mut config = QemuConfig::new("vm", workdir, identity.boot_mac.clone(), disk);
    config.disk_format = format;
    config.memory_mib = args.qemu_memory;
    config.cpus = args.qemu_cpus;
    config.smbios = Some(identity.clone());
    config.net = match &args.qemu_tap {
        Some(ifname) => QemuNet::Tap {
            ifname: ifname.clone(),
        },
        None => QemuNet::User,
    };
    config.accel = match args.qemu_accel {
        AccelArg::Auto => vmetal_lab::qemu::probe_accel(&config.qemu),
        AccelArg::Tcg => Accel::Tcg,
        AccelArg::Kvm => Accel::Kvm,
    };
    println!(
        "# QEMU VM: {:?} disk {}, {} CPUs, {} MiB, {:?}; serial console {}",
        config.disk_format,
        disk.display(),
        config.cpus,
        config.memory_mib,
        config.accel,
        config.serial_log.display()
    );
    let machine = QemuMachine::new(config)
        .with_context(|| format!("cannot set up the QEMU VM for {}", disk.display()))?;
    let server = SimulatedServer::new(identity);
    server.set_backend(Arc::new(machine.clone()));
    machine.attach(&server);
    Ok((server, machine))
}

/// qcow2 files start with "QFI\xfb"; anything else is taken as raw.
fn sniff_format(disk: &Path) -> anyhow::Result<DiskFormat> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut file =
        std::fs::File::open(disk).with_context(|| format!("cannot open {}", disk.display()))?;
    let n = file
        .read(&mut magic)
        .with_context(|| format!("cannot read {}", disk.display()))?;
    Ok(if n == 4 && magic == *b"QFI\xfb" {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    })
}

/// Run `vmetal lab`.
pub fn run(args: LabArgs) -> anyhow::Result<()> {
    let LabCommand::Bmc(args) = args.command;
    anyhow::ensure!(args.systems >= 1, "--systems must be at least 1");
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let qemu = match &args.qemu_disk {
        Some(disk) => {
            // The VM's life (starts, stops, why it went off) is logged; stdout keeps the table.
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .try_init();
            Some(qemu_vm(&args, disk)?)
        }
        None => None,
    };
    runtime.block_on(async move {
        let servers: Vec<SimulatedServer> = match &qemu {
            Some((server, _)) => vec![server.clone()],
            None => (0..args.systems)
                .map(|i| SimulatedServer::new(ServerIdentity::numbered(i)))
                .collect(),
        };
        let redfish = RedfishService::start(
            args.redfish,
            servers.clone(),
            RedfishConfig {
                username: args.username.clone(),
                password: args.password.clone(),
                tls: args.tls,
            },
        )
        .await
        .with_context(|| format!("cannot serve Redfish on {}", args.redfish))?;
        let mut ipmi = Vec::new();
        for (i, server) in servers.iter().enumerate() {
            // Port 0 lets the OS pick a free port per system.
            let port = if args.ipmi.port() == 0 {
                0
            } else {
                u16::try_from(usize::from(args.ipmi.port()) + i)
                    .context("IPMI ports run past 65535; lower --systems or the --ipmi port")?
            };
            let bind = SocketAddr::new(args.ipmi.ip(), port);
            let svc = IpmiService::start(
                bind,
                server.clone(),
                args.username.clone(),
                args.password.clone(),
            )
            .await
            .with_context(|| format!("cannot serve IPMI on {bind}"))?;
            ipmi.push(svc);
        }
        let scheme = if args.tls {
            "redfish+https"
        } else {
            "redfish+http"
        };
        let what = if qemu.is_some() {
            "QEMU VM"
        } else {
            "simulated servers"
        };
        println!(
            "# {} {what}; credentials {} / <password>",
            servers.len(),
            args.username
        );
        println!("# name\tbootMACAddress\tredfish bmc.address\tipmi bmc.address");
        for (server, svc) in servers.iter().zip(&ipmi) {
            let id = server.identity();
            println!(
                "server-{}\t{}\t{scheme}://{}/redfish/v1/Systems/{}\tipmi://{}",
                id.id,
                id.boot_mac,
                redfish.local_addr(),
                id.id,
                svc.local_addr()
            );
        }
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?;
        drop(ipmi);
        drop(redfish);
        if let Some((_, machine)) = &qemu {
            machine.shutdown();
        }
        Ok(())
    })
}
