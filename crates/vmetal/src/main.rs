//! `vmetal`: bare-metal servers as Kubernetes resources. One binary, one subcommand per process.

mod bmc_cmd;
mod boot_cmd;
mod lab_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// vmetal manages bare-metal servers through Kubernetes resources (Metal3-compatible
/// BareMetalHost, vmetal Machine).
#[derive(Debug, Parser)]
#[command(name = "vmetal", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (BareMetalHost, Machine) as YAML.
    ///
    /// Pipe into `kubectl apply -f -`, or write one file per CRD with --dir.
    Crds {
        /// Write `<group>_<plural>.yaml` files into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print the vmetal version and the APIs it serves.
    Version,
    /// Run everything on this machine: API server, controller, agent API and, with --lab N,
    /// N simulated servers behind virtual Redfish and IPMI BMCs.
    Up {
        /// Simulated servers to create (mixed Redfish and IPMI).
        #[arg(long, default_value_t = 0)]
        lab: u32,
        /// Where objects, certificates, the kubeconfig, lab disks and images live.
        #[arg(long, default_value = ".vmetal-data", value_name = "DIR")]
        data_dir: PathBuf,
        /// API server address.
        #[arg(long, default_value = "127.0.0.1:6443")]
        bind: std::net::SocketAddr,
        /// Agent API and image server address.
        #[arg(long, default_value = "127.0.0.1:6385")]
        agent_bind: std::net::SocketAddr,
        /// Simulated boot time of a lab server, in milliseconds.
        #[arg(long, default_value_t = 500)]
        boot_delay_ms: u64,
        /// Also run DHCP, TFTP and HTTP boot (as `vmetal boot`) on this provisioning interface.
        #[arg(long, value_name = "IF", requires = "boot_server_ip")]
        boot_interface: Option<String>,
        /// DHCP mode of the boot services: proxy, reservation or off.
        #[arg(long, default_value = "proxy", value_name = "MODE")]
        boot_mode: vmetal_boot::dhcp::Mode,
        /// Our address on the provisioning network (next-server, URLs).
        #[arg(long, value_name = "IP", requires = "boot_interface")]
        boot_server_ip: Option<std::net::Ipv4Addr>,
        /// Do not answer known hosts' IPv6 router solicitations on --boot-interface (the
        /// answer announces nothing and spares iPXE a ~16 s wait for an IPv6 router).
        #[arg(long, requires = "boot_interface")]
        no_router_advertisements: bool,
        /// A QEMU VM behind a virtual BMC, as a BareMetalHost (repeatable):
        /// `name=vm-1,mac=52:54:00:00:00:01,tap=tap0,bmc=redfish|ipmi,disk=8G,cpus=2,memory=2048,ip=10.0.0.10/24`.
        /// Its tap must already be on the --boot-interface bridge.
        #[arg(long = "vm", value_name = "SPEC")]
        vms: Vec<vmetal::vms::VmSpec>,
        /// The agent ramdisk (`vmlinuz` and `initramfs`, built by ramdisk/build.sh) to serve
        /// over HTTP boot; copied into <data-dir>/boot.
        #[arg(long, value_name = "DIR", requires = "boot_interface")]
        ramdisk: Option<PathBuf>,
    },
    /// A scripted story on `vmetal up --lab`: a rack registers, three Machines (one needing a
    /// GPU) claim hosts, install and join the tenant cluster, one is deleted and its host
    /// re-used. Exits 0 only if every step happened.
    Demo {
        /// Keep the demo's state here (default: a temporary directory, removed afterwards).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Simulated servers in the rack (at least 4).
        #[arg(long, default_value_t = 6)]
        servers: u32,
    },
    /// Talk to a server's BMC (Redfish or IPMI) like ipmitool: power, boot device, info.
    ///
    /// Exit codes: 0 ok, 1 bad arguments, 3 BMC unreachable or timed out, 4 credentials
    /// rejected, 5 not supported by the BMC, 6 the BMC answered with an error.
    Bmc(bmc_cmd::BmcArgs),
    /// Virtual BMCs over simulated servers, for development and tests.
    Lab(lab_cmd::LabArgs),
    /// DHCP (proxy or reservation), TFTP, HTTP boot and the agent callback proxy on the
    /// provisioning network, configured from the cluster's BareMetalHosts.
    Boot(boot_cmd::BootArgs),
    /// Run the host and machine controllers (leader-elected) and the agent API against a
    /// Kubernetes cluster, with /metrics, /healthz and /readyz.
    Controller(vmetal::controller_cmd::ControllerArgs),
    /// Run the embedded Kubernetes-compatible API server on its own.
    ///
    /// Objects live in DATA_DIR/store.redb; a CA, serving certificate, bearer token and a
    /// kubeconfig (DATA_DIR/kubeconfig, mode 0600) are created on first start:
    /// `kubectl --kubeconfig DATA_DIR/kubeconfig get ns`.
    Apiserver {
        /// Where objects, certificates and the kubeconfig live.
        #[arg(long, default_value = ".vmetal-data", value_name = "DIR")]
        data_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:6443", value_name = "ADDR")]
        bind: std::net::SocketAddr,
        /// Also install the vmetal CRDs (BareMetalHost, Machine) if they are missing.
        #[arg(long)]
        install_crds: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Bmc(args) = cli.command {
        return match bmc_cmd::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(failure) => {
                eprintln!("vmetal bmc: {:#}", failure.error);
                ExitCode::from(failure.code)
            }
        };
    }
    if let Command::Demo { data_dir, servers } = cli.command {
        return run_demo(data_dir, servers);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vmetal: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crds { dir: None } => {
            print!("{}", vmetal_api::crds::all_yaml()?);
            Ok(())
        }
        Command::Crds { dir: Some(dir) } => write_crds(&dir),
        Command::Apiserver {
            data_dir,
            bind,
            install_crds,
        } => run_apiserver(data_dir, bind, install_crds),
        Command::Up {
            lab,
            data_dir,
            bind,
            agent_bind,
            boot_delay_ms,
            boot_interface,
            boot_mode,
            boot_server_ip,
            no_router_advertisements,
            vms,
            ramdisk,
        } => {
            if let Some(dir) = &ramdisk {
                vmetal::up::install_ramdisk(dir, &data_dir)?;
            }
            let mut config = vmetal::up::UpConfig::new(data_dir);
            config.vms = vms;
            config.lab = lab;
            config.apiserver_bind = bind;
            config.agent_bind = agent_bind;
            config.boot_delay = std::time::Duration::from_millis(boot_delay_ms);
            if let (false, Some(ip)) = (config.vms.is_empty(), boot_server_ip) {
                // VMs fetch images from the agent address and join the tenant cluster over
                // the provisioning network, where loopback addresses do not reach.
                config.tenant_bind = std::net::SocketAddr::from((ip, 0));
                if config.agent_bind.ip().is_loopback() {
                    config.agent_bind = std::net::SocketAddr::from((ip, config.agent_bind.port()));
                }
            }
            if let (Some(interface), Some(ip)) = (boot_interface, boot_server_ip) {
                let mut boot = vmetal_boot::service::BootOptions::new(interface, ip);
                boot.mode = boot_mode;
                boot.router_advertisements = !no_router_advertisements;
                config.boot = Some(boot);
            }
            run_up(config)
        }
        Command::Bmc(_) | Command::Demo { .. } => Ok(()), // handled in main for their exit codes
        Command::Lab(args) => lab_cmd::run(args),
        Command::Boot(args) => boot_cmd::run(args),
        Command::Controller(args) => vmetal::controller_cmd::run(args),
        Command::Version => {
            println!("vmetal {}", env!("CARGO_PKG_VERSION"));
            for crd in vmetal_api::crds::all() {
                for v in &crd.spec.versions {
                    println!(
                        "  serves {}/{} {}",
                        crd.spec.group, v.name, crd.spec.names.kind
                    );
                }
            }
            Ok(())
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

fn run_apiserver(
    data_dir: PathBuf,
    bind: std::net::SocketAddr,
    install_crds: bool,
) -> anyhow::Result<()> {
    init_logging();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = vmetal_apiserver::start(vmetal_apiserver::ApiServerConfig {
            bind,
            data_dir: Some(data_dir.clone()),
        })
        .await
        .with_context(|| {
            format!(
                "cannot start the API server with data dir {}",
                data_dir.display()
            )
        })?;
        if install_crds {
            vmetal_apiserver::server::install_crds(server.objects(), &vmetal_api::crds::all())
                .context("cannot install the vmetal CRDs")?;
        }
        let kubeconfig = server
            .kubeconfig_path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        println!("vmetal API server listening on {}", server.url());
        println!("kubeconfig: {kubeconfig}");
        println!("try: kubectl --kubeconfig {kubeconfig} get namespaces");
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?;
        println!("shutting down");
        Ok(())
    })
}

fn run_up(config: vmetal::up::UpConfig) -> anyhow::Result<()> {
    init_logging_quiet();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let lab = config.lab;
        let stack = vmetal::up::Stack::start(config).await?;
        let kubeconfig = stack
            .apiserver
            .kubeconfig_path()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string())
            .unwrap_or_default();
        println!("vmetal is up");
        println!("  API server: {}   kubeconfig: {kubeconfig}", stack.apiserver.url());
        println!("  agent API and images: {}", stack.agent_api_url());
        if let Some(tenant) = &stack.tenant {
            println!(
                "  tenant cluster: {}   kubeconfig: {}   join token Secret: {}",
                tenant.endpoint(),
                tenant.kubeconfig_path().map(|p| p.display().to_string()).unwrap_or_default(),
                vmetal::tenant::JOIN_SECRET
            );
            if let Ok(hash) = tenant.ca_cert_hash() {
                println!("  tenant CA hash (kubeadm caCertHash): {hash}");
            }
        }
        if let Some(boot) = &stack.boot {
            println!(
                "  boot: DHCP {:?}, TFTP {:?}, HTTP {}",
                boot.dhcp_addrs, boot.tftp_addr, boot.http_addr
            );
        }
        if let Some(vms) = &stack.vms {
            println!("  VMs ({:?}):", vms.accel);
            for vm in &vms.vms {
                println!(
                    "    {}  {}  BMC {}  serial log {}",
                    vm.spec.name,
                    vm.spec.mac,
                    vm.bmc_address,
                    vm.vm.serial_log().display()
                );
            }
        }
        if lab > 0 {
            println!("  lab: {lab} simulated servers (even ones on Redfish, odd ones on IPMI)");
            let ready = stack
                .report_progress(std::time::Duration::from_secs(120))
                .await?;
            if !ready {
                println!("  not every host is available yet; see `kubectl get bmh` and `kubectl get events`");
            }
        }
        let image = stack.image_url("demo.raw");
        println!();
        println!("next:");
        println!("  export KUBECONFIG={kubeconfig}");
        println!("  kubectl get bmh");
        if lab > 0 {
            println!(
                "  kubectl patch bmh server-1 --type merge -p '{{\"spec\":{{\"online\":true,\"image\":{{\"url\":\"{image}\",\"checksum\":\"{image}.sha256sum\",\"checksumType\":\"sha256\",\"format\":\"raw\"}}}}}}'"
            );
            println!("  kubectl get bmh server-1 -w");
        }
        println!("Ctrl-C stops vmetal; state is kept in the data directory.");
        tokio::signal::ctrl_c().await.context("cannot wait for Ctrl-C")?;
        println!("shutting down");
        stack.stop().await;
        Ok(())
    })
}

fn run_demo(data_dir: Option<PathBuf>, servers: u32) -> ExitCode {
    init_logging_quiet();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmetal demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = vmetal::demo::DemoOptions {
        data_dir,
        servers,
        ..Default::default()
    };
    match runtime.block_on(vmetal::demo::run(options)) {
        Ok(report) => {
            println!("\n{}", report.render());
            if report.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("vmetal demo: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging_quiet() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

fn write_crds(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create CRD directory {}", dir.display()))?;
    for crd in vmetal_api::crds::all() {
        let path = dir.join(vmetal_api::crds::file_name(&crd));
        let yaml = format!("---\n{}", vmetal_api::crds::to_yaml(&crd)?);
        std::fs::write(&path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
