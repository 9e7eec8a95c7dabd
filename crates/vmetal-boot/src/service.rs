//! Starting the boot services together — DHCP on 67 and 4011, TFTP, HTTP boot with the
//! callback proxy — over one known-hosts handle, and stopping them.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use vmetal_provisioner::ipxe::BootConfig;

use crate::callback::CallbackProxy;
use crate::dhcp::server::{DhcpState, bind_udp};
use crate::dhcp::{DhcpConfig, Mode};
use crate::error::BootError;
use crate::hosts::{HostsHandle, KnownHosts};
use crate::http::{HttpConfig, router};
use crate::leases::Leases;
use crate::metrics::Metrics;
use crate::tftp::{self, TftpConfig};

/// Where and how the services run.
#[derive(Debug, Clone)]
pub struct BootServiceConfig {
    /// DHCP behaviour.
    pub dhcp: DhcpConfig,
    /// Interface every UDP socket is bound to (`SO_BINDTODEVICE`).
    pub interface: Option<String>,
    /// DHCP server address (normally `0.0.0.0:67`).
    pub dhcp_bind: SocketAddrV4,
    /// PXE boot server address (normally `0.0.0.0:4011`).
    pub pxe_bind: SocketAddrV4,
    /// TFTP address (normally `0.0.0.0:69`); `None` turns TFTP off.
    pub tftp_bind: Option<SocketAddrV4>,
    /// Directory served over TFTP and under `/ipxe/`.
    pub tftp_root: PathBuf,
    /// HTTP boot server address.
    pub http_bind: SocketAddr,
    /// What the HTTP server serves.
    pub http: HttpConfig,
    /// The controller's agent API, for the callback proxy; `None` turns it off.
    pub agent_api: Option<String>,
    /// Reservation-mode lease file.
    pub lease_file: Option<PathBuf>,
    /// Answer known hosts' IPv6 router solicitations on `interface` (see [`crate::ndp`]).
    pub router_advertisements: bool,
}

/// The running services; dropping it stops them.
#[derive(Debug)]
pub struct RunningBoot {
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// Where TFTP listens, if it runs.
    pub tftp_addr: Option<SocketAddr>,
    /// Where DHCP and the PXE boot server listen, if DHCP runs.
    pub dhcp_addrs: Vec<SocketAddr>,
    /// The known-hosts set the services read.
    pub hosts: HostsHandle,
    /// The counters.
    pub metrics: Metrics,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RunningBoot {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn spawn_logged<F>(what: &'static str, fut: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = Result<(), BootError>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            tracing::error!(service = what, error = %e, "boot service stopped");
        }
    })
}

/// Binds every socket (so errors surface here) and starts the services.
pub async fn start(
    config: BootServiceConfig,
    hosts: HostsHandle,
) -> Result<RunningBoot, BootError> {
    let metrics = Metrics::new();
    let mut tasks = Vec::new();
    let mut dhcp_addrs = Vec::new();
    let iface = config.interface.as_deref();

    if config.dhcp.mode != Mode::Off {
        let leases = match &config.lease_file {
            Some(path) => Leases::load(path)?,
            None => Leases::new(),
        };
        let state = DhcpState {
            config: Arc::new(config.dhcp.clone()),
            hosts: hosts.clone(),
            leases: Arc::new(Mutex::new(leases)),
            lease_file: config.lease_file.clone(),
            metrics: metrics.clone(),
        };
        let sockets = [
            (config.dhcp_bind, crate::dhcp::SERVER_PORT),
            (config.pxe_bind, crate::dhcp::PXE_PORT),
        ];
        for (addr, port) in sockets {
            let socket = bind_udp("DHCP", addr, iface)?;
            let local = socket.local_addr().map_err(|source| BootError::Io {
                what: "DHCP",
                source,
            })?;
            dhcp_addrs.push(local);
            tasks.push(spawn_logged(
                "DHCP",
                crate::dhcp::server::serve(socket, port, state.clone()),
            ));
        }
    }

    if let (true, Some(ifname)) = (config.router_advertisements, iface) {
        // Only a speed-up: where raw sockets or IPv6 are unavailable, iPXE just waits longer.
        match crate::ndp::server::bind(ifname) {
            Ok(socket) => tasks.push(spawn_logged(
                "IPv6 router advertisements",
                crate::ndp::server::serve(socket, hosts.clone(), metrics.clone()),
            )),
            Err(e) => tracing::warn!(
                error = %e,
                "not answering IPv6 router solicitations; iPXE waits ~16 s for an IPv6 router on networks without one"
            ),
        }
    }

    let tftp_addr = match config.tftp_bind {
        Some(addr) => {
            tftp::server::canonical_root(&config.tftp_root)?;
            let socket = bind_udp("TFTP", addr, iface)?;
            let local = socket.local_addr().map_err(|source| BootError::Io {
                what: "TFTP",
                source,
            })?;
            let tftp_config = TftpConfig {
                root: config.tftp_root.clone(),
                interface: config.interface.clone(),
                default_timeout_secs: 1,
            };
            tasks.push(spawn_logged(
                "TFTP",
                tftp::serve(socket, tftp_config, metrics.clone()),
            ));
            Some(local)
        }
        None => None,
    };

    let proxy = config
        .agent_api
        .as_deref()
        .map(CallbackProxy::new)
        .transpose()?;
    let listener = tokio::net::TcpListener::bind(config.http_bind)
        .await
        .map_err(|source| BootError::Bind {
            what: "HTTP",
            address: config.http_bind,
            interface: None,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| BootError::Io {
        what: "HTTP",
        source,
    })?;
    let app = router(config.http.clone(), hosts.clone(), metrics.clone(), proxy);
    tasks.push(spawn_logged("HTTP", async move {
        axum::serve(listener, app)
            .await
            .map_err(|source| BootError::Io {
                what: "HTTP",
                source,
            })
    }));

    Ok(RunningBoot {
        http_addr,
        tftp_addr,
        dhcp_addrs,
        hosts,
        metrics,
        tasks,
    })
}

/// The boot services as `vmetal up --boot-interface` runs them: standard ports on one
/// interface, hosts from the stack's own BareMetalHosts.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// The provisioning interface every UDP socket binds to.
    pub interface: String,
    /// DHCP mode (proxy beside the site's DHCP server by default).
    pub mode: Mode,
    /// Our address on the provisioning network.
    pub server_ip: Ipv4Addr,
    /// HTTP boot server port.
    pub http_port: u16,
    /// Directory served over TFTP and under `/ipxe/`.
    pub tftp_root: PathBuf,
    /// Answer known hosts' IPv6 router solicitations (on unless DHCP is off).
    pub router_advertisements: bool,
}

impl BootOptions {
    /// Proxy mode on `interface` at `server_ip`, HTTP on 8080, Debian's iPXE binaries.
    pub fn new(interface: String, server_ip: Ipv4Addr) -> Self {
        Self {
            interface,
            mode: Mode::Proxy,
            server_ip,
            http_port: 8080,
            tftp_root: PathBuf::from("/usr/lib/ipxe"),
            router_advertisements: true,
        }
    }

    /// The service configuration: agents call back through our `/v1` proxy to `agent_api`;
    /// kernel and initramfs come from `data_dir/boot`, leases go to `data_dir`.
    pub fn service_config(&self, agent_api: &str, data_dir: &Path) -> BootServiceConfig {
        let dhcp = DhcpConfig::new(self.mode, self.server_ip, self.http_port);
        let base = dhcp.http_base.clone();
        BootServiceConfig {
            interface: Some(self.interface.clone()),
            dhcp_bind: crate::dhcp::server::any(crate::dhcp::SERVER_PORT),
            pxe_bind: crate::dhcp::server::any(crate::dhcp::PXE_PORT),
            tftp_bind: Some(crate::dhcp::server::any(69)),
            tftp_root: self.tftp_root.clone(),
            http_bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.http_port)),
            http: HttpConfig {
                boot: BootConfig {
                    kernel_url: format!("{base}/boot/vmlinuz"),
                    initramfs_url: format!("{base}/boot/initramfs"),
                    agent_api_url: base,
                    extra_kernel_args: vec![],
                },
                artifacts_dir: Some(data_dir.join("boot")),
                ipxe_dir: Some(self.tftp_root.clone()),
                allow_unknown: false,
            },
            agent_api: Some(agent_api.to_owned()),
            lease_file: Some(data_dir.join("boot-leases.json")),
            router_advertisements: self.router_advertisements && self.mode != Mode::Off,
            dhcp,
        }
    }
}

/// Starts the services with the known-hosts set kept live from the BareMetalHosts `client`
/// sees (in `namespace`, or everywhere); the watch stops with the services.
pub async fn start_watching(
    config: BootServiceConfig,
    client: kube::Client,
    namespace: Option<String>,
) -> Result<RunningBoot, BootError> {
    let hosts = HostsHandle::new(KnownHosts::new());
    let mut running = start(config, hosts.clone()).await?;
    running.tasks.push(tokio::spawn(crate::watch::watch_hosts(
        client, namespace, hosts,
    )));
    Ok(running)
}
