//! `vmetal boot`: DHCP (proxy or reservation), TFTP, HTTP boot and the agent callback proxy
//! on the provisioning network, configured live from the cluster's BareMetalHosts.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use vmetal_boot::dhcp::{DhcpConfig, Mode};
use vmetal_boot::http::HttpConfig;
use vmetal_boot::service::BootServiceConfig;
use vmetal_boot::{HostsHandle, KnownHosts};
use vmetal_provisioner::ipxe::BootConfig;

/// DHCP mode.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    /// ProxyDHCP beside the site's DHCP server: boot information only.
    Proxy,
    /// Full DHCP leasing the addresses in the hosts' annotations.
    Reservation,
    /// No DHCP; TFTP and HTTP only.
    Off,
}

/// Options of `vmetal boot`.
#[derive(Debug, Args)]
pub struct BootArgs {
    /// DHCP mode.
    #[arg(long, value_enum, default_value = "proxy")]
    mode: ModeArg,
    /// Provisioning interface every UDP socket binds to (SO_BINDTODEVICE).
    #[arg(long, value_name = "IF")]
    interface: Option<String>,
    /// Our address on the provisioning network (next-server, server identifier, URLs).
    #[arg(long, value_name = "IP")]
    server_ip: Ipv4Addr,
    /// HTTP boot server port.
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// Directory served over TFTP and under /ipxe/ (Debian's `ipxe` package).
    #[arg(long, default_value = "/usr/lib/ipxe", value_name = "DIR")]
    tftp_root: PathBuf,
    /// Directory served under /boot/ (vmlinuz, initramfs).
    #[arg(long, value_name = "DIR")]
    artifacts_dir: Option<PathBuf>,
    /// Agent kernel URL put into the iPXE scripts (default: our /boot/vmlinuz).
    #[arg(long, value_name = "URL")]
    kernel_url: Option<String>,
    /// Agent initramfs URL (default: our /boot/initramfs).
    #[arg(long, value_name = "URL")]
    initramfs_url: Option<String>,
    /// The controller's agent API; agents reach it through our /v1 callback proxy.
    #[arg(long, value_name = "URL")]
    agent_api: Option<String>,
    /// UEFI x86 binary: ipxe.efi or snponly.efi.
    #[arg(long, default_value = "ipxe.efi")]
    efi_binary: String,
    /// ARM64 UEFI binary.
    #[arg(long, default_value = "snp-arm64.efi")]
    arm64_binary: String,
    /// Boot MACs that belong to no BareMetalHost.
    #[arg(long)]
    allow_unknown: bool,
    /// Reservation-mode lease file.
    #[arg(long, default_value = "vmetal-boot-leases.json", value_name = "FILE")]
    lease_file: PathBuf,
    /// Do not answer known hosts' IPv6 router solicitations on --interface (answering them
    /// spares iPXE a ~16 s wait for an IPv6 router; the answer announces nothing).
    #[arg(long)]
    no_router_advertisements: bool,
    /// Watch BareMetalHosts in this namespace only.
    #[arg(long)]
    namespace: Option<String>,
    /// Kubeconfig (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
}

async fn client(kubeconfig: Option<PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match &kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {} is not usable", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig: pass --kubeconfig, set KUBECONFIG, or run in a cluster")?,
    };
    kube::Client::try_from(config).context("cannot build a Kubernetes client")
}

/// Run `vmetal boot` until Ctrl-C.
pub fn run(args: BootArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    // Multus readiness: exit (and be restarted) until the provisioning network is attached.
    if let Some(interface) = &args.interface {
        let found =
            vmetal_boot::multus::read_interfaces().context("cannot list network interfaces")?;
        vmetal_boot::multus::check(&found, interface, std::net::IpAddr::V4(args.server_ip))
            .context("the provisioning network is not ready")?;
    }
    let mode = match args.mode {
        ModeArg::Proxy => Mode::Proxy,
        ModeArg::Reservation => Mode::Reservation,
        ModeArg::Off => Mode::Off,
    };
    let mut dhcp = DhcpConfig::new(mode, args.server_ip, args.http_port);
    dhcp.allow_unknown = args.allow_unknown;
    dhcp.boot_files.efi_x86 = args.efi_binary;
    dhcp.boot_files.efi_arm64 = args.arm64_binary;
    let base = dhcp.http_base.clone();
    let config = BootServiceConfig {
        interface: args.interface,
        dhcp_bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67),
        pxe_bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 4011),
        tftp_bind: Some(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 69)),
        tftp_root: args.tftp_root.clone(),
        http_bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.http_port)),
        http: HttpConfig {
            boot: BootConfig {
                kernel_url: args
                    .kernel_url
                    .unwrap_or_else(|| format!("{base}/boot/vmlinuz")),
                initramfs_url: args
                    .initramfs_url
                    .unwrap_or_else(|| format!("{base}/boot/initramfs")),
                // Agents call back through our proxy, which reaches the controller.
                agent_api_url: base.clone(),
                extra_kernel_args: vec![],
            },
            artifacts_dir: args.artifacts_dir,
            ipxe_dir: Some(args.tftp_root),
            allow_unknown: args.allow_unknown,
        },
        agent_api: args.agent_api,
        lease_file: Some(args.lease_file),
        router_advertisements: !args.no_router_advertisements && mode != Mode::Off,
        dhcp,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let client = client(args.kubeconfig).await?;
        let hosts = HostsHandle::new(KnownHosts::new());
        let watch = tokio::spawn(vmetal_boot::watch::watch_hosts(
            client,
            args.namespace,
            hosts.clone(),
        ));
        let running = vmetal_boot::start(config, hosts).await?;
        println!(
            "vmetal boot: DHCP {:?}, TFTP {:?}, HTTP {}",
            running.dhcp_addrs, running.tftp_addr, running.http_addr
        );
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?;
        watch.abort();
        drop(running);
        Ok(())
    })
}
