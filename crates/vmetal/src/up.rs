//! `vmetal up`: everything in one process on one machine — the embedded API server with the
//! vmetal CRDs, the host controller, the agent API (plus an image directory served over HTTP),
//! and optionally a simulated rack of N servers behind virtual Redfish and IPMI BMCs, with
//! their Secrets and BareMetalHosts created.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::task::JoinHandle;
use vmetal_api::BareMetalHost;
use vmetal_apiserver::{ApiServerConfig, RunningApiServer};
use vmetal_controller::bmc_pool::{BmcPool, RealBmcFactory};
use vmetal_controller::{Context, ControllerConfig};
use vmetal_lab::ipmi::{IpmiService, RunningIpmi};
use vmetal_lab::redfish::{RedfishConfig, RedfishService, RunningRedfish};
use vmetal_lab::{ServerIdentity, SimulatedServer};

/// How to start the stack.
#[derive(Debug, Clone)]
pub struct UpConfig {
    /// Objects, certificates, kubeconfig, lab disks and images live here.
    pub data_dir: PathBuf,
    /// API server address.
    pub apiserver_bind: SocketAddr,
    /// Agent API and image server address (what agents and BMC virtual media reach).
    pub agent_bind: SocketAddr,
    /// Simulated servers to create (0 = none).
    pub lab: u32,
    /// Namespace of the lab's hosts.
    pub lab_namespace: String,
    /// How long a simulated server takes to boot.
    pub boot_delay: Duration,
    /// Host controller tunables.
    pub controller: ControllerConfig,
    /// Machine controller tunables.
    pub machines: vmetal_controller::machine::MachineControllerConfig,
    /// Address of the tenant cluster's API server (started with `--lab`; port 0 picks one).
    pub tenant_bind: SocketAddr,
    /// Start the host and machine controllers (tests of `vmetal controller` run their own).
    pub run_controller: bool,
    /// Builds the agent API's client from the admin kubeconfig (default: a plain client);
    /// tests wrap it to record the API calls the agent API makes.
    pub agent_client: Option<fn(kube::Config) -> kube::Result<kube::Client>>,
    /// DHCP, TFTP and HTTP boot on a provisioning interface (`--boot-interface`), if any.
    pub boot: Option<vmetal_boot::service::BootOptions>,
    /// QEMU VMs behind virtual BMCs (`--vm`), in `lab_namespace`.
    pub vms: Vec<crate::vms::VmSpec>,
    /// Agents give up on an image download that sends nothing this long (default: 120 s).
    pub download_stall_timeout: Option<Duration>,
}

impl UpConfig {
    /// Defaults for `vmetal up`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            apiserver_bind: SocketAddr::from(([127, 0, 0, 1], 6443)),
            agent_bind: SocketAddr::from(([127, 0, 0, 1], 6385)),
            lab: 0,
            lab_namespace: "default".into(),
            boot_delay: Duration::from_millis(500),
            controller: ControllerConfig {
                operation_poll: Duration::from_secs(2),
                operation_timeout: Duration::from_secs(300),
                ..ControllerConfig::default()
            },
            machines: Default::default(),
            tenant_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            run_controller: true,
            agent_client: None,
            boot: None,
            vms: Vec::new(),
            download_stall_timeout: None,
        }
    }
}

/// One simulated server of the lab.
pub struct LabServer {
    /// BareMetalHost name.
    pub name: String,
    /// The simulated server (power, boot override).
    pub server: SimulatedServer,
    /// Its backend: fixture hardware, disks, the agent.
    pub machine: Arc<vmetal_lab::agent_backend::SimulatedMachine>,
    /// The hardware it has.
    pub spec: vmetal_agent::fixture::FixtureSpec,
    /// `spec.bmc.address` of its BareMetalHost.
    pub bmc_address: String,
}

/// The simulated rack and its BMCs.
pub struct Lab {
    /// The servers.
    pub servers: Vec<LabServer>,
    _redfish: RunningRedfish,
    _ipmi: Vec<RunningIpmi>,
}

/// The running stack.
pub struct Stack {
    /// The API server.
    pub apiserver: RunningApiServer,
    /// A client for it (admin).
    pub client: kube::Client,
    /// The lab, with `--lab`.
    pub lab: Option<Lab>,
    /// The tenant cluster Machines join, with `--lab`.
    pub tenant: Option<crate::tenant::TenantCluster>,
    agent_addr: SocketAddr,
    agent_task: JoinHandle<()>,
    /// Metrics of the controller and agent API, served at `/metrics` on the agent address.
    pub metrics: vmetal_controller::metrics::Metrics,
    controller: Option<(JoinHandle<()>, tokio::sync::oneshot::Sender<()>)>,
    /// The boot services, with `--boot-interface`.
    pub boot: Option<vmetal_boot::RunningBoot>,
    /// The QEMU VMs, with `--vm`.
    pub vms: Option<crate::vms::VmLab>,
    config: UpConfig,
}

/// Lab BMC user.
pub const LAB_USERNAME: &str = "admin";
/// Lab BMC password.
pub const LAB_PASSWORD: &str = "password";

impl Stack {
    /// Start everything.
    pub async fn start(config: UpConfig) -> anyhow::Result<Stack> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        let apiserver = vmetal_apiserver::start(ApiServerConfig {
            bind: config.apiserver_bind,
            data_dir: Some(config.data_dir.clone()),
        })
        .await
        .context("cannot start the API server")?;
        vmetal_apiserver::server::install_crds(apiserver.objects(), &vmetal_api::crds::all())
            .context("cannot install the vmetal CRDs")?;
        let client = client_for(&apiserver).await?;

        let images = config.data_dir.join("images");
        write_demo_image(&images)?;
        let listener = tokio::net::TcpListener::bind(config.agent_bind)
            .await
            .with_context(|| format!("cannot listen for agents on {}", config.agent_bind))?;
        let agent_addr = listener.local_addr()?;
        // The agent API gets its own client (and connection pool), independent of the controller.
        let agent_client = match config.agent_client {
            Some(make) => make(config_for(&apiserver).await?)
                .context("cannot build the agent API's client")?,
            None => client_for(&apiserver).await?,
        };
        let mut agent_api = vmetal_provisioner::agent_api::AgentApi::new(
            agent_client,
            None,
            Duration::from_millis(500),
        );
        if let Some(stall) = config.download_stall_timeout {
            agent_api = agent_api.with_download_stall_timeout(stall);
        }
        let metrics = vmetal_controller::metrics::Metrics::default();
        metrics.leader.set(1);
        let app = crate::observe::count_agent_requests(
            vmetal_provisioner::agent_api::router(agent_api),
            metrics.clone(),
        )
        .nest_service("/images", tower_http::services::ServeDir::new(&images))
        .merge(crate::observe::routes(
            metrics.clone(),
            crate::observe::always_ready(),
        ));
        let agent_task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(%err, "agent API stopped");
            }
        });

        let boot = match &config.boot {
            Some(opts) => Some(
                vmetal_boot::service::start_watching(
                    opts.service_config(&format!("http://{agent_addr}"), &config.data_dir),
                    client.clone(),
                    None,
                )
                .await
                .with_context(|| format!("cannot start the boot services on {}", opts.interface))?,
            ),
            None => None,
        };
        let tenant = if config.lab > 0 || !config.vms.is_empty() {
            let tenant = crate::tenant::TenantCluster::start(
                &config.data_dir.join("tenant"),
                config.tenant_bind,
            )
            .await?;
            tenant
                .publish_join_secret(
                    &client,
                    &config.lab_namespace,
                    crate::tenant::JOIN_SECRET,
                    Duration::from_secs(24 * 3600),
                )
                .await?;
            Some(tenant)
        } else {
            None
        };
        let mut stack = Stack {
            apiserver,
            client,
            lab: None,
            tenant,
            agent_addr,
            agent_task,
            metrics,
            controller: None,
            boot,
            vms: None,
            config,
        };
        if stack.config.run_controller {
            stack.start_controller();
        }
        if stack.config.lab > 0 {
            let lab = stack.start_lab().await?;
            stack.lab = Some(lab);
        }
        if !stack.config.vms.is_empty() {
            stack.vms = Some(stack.start_vms().await?);
        }
        Ok(stack)
    }

    /// Where agents call.
    pub fn agent_api_url(&self) -> String {
        format!("http://{}", self.agent_addr)
    }

    /// URL of a file in the image directory.
    pub fn image_url(&self, file: &str) -> String {
        format!("http://{}/images/{file}", self.agent_addr)
    }

    /// The image directory.
    pub fn image_dir(&self) -> PathBuf {
        self.config.data_dir.join("images")
    }

    /// (Re)start the host and machine controllers with a fresh context (nothing carried over in
    /// memory).
    pub fn start_controller(&mut self) {
        let bmcs = BmcPool::new(
            Arc::new(RealBmcFactory),
            vmetal_bmc::ConnectOptions {
                timeout: Duration::from_secs(5),
                ..Default::default()
            },
        );
        let ctx = Context::with_metrics(
            self.client.clone(),
            bmcs,
            self.config.controller.clone(),
            self.metrics.clone(),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let tenants: Vec<_> = self.tenant.iter().map(|t| t.controller_view()).collect();
        let (client, machines) = (self.client.clone(), self.config.machines.clone());
        let task = tokio::spawn(async move {
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let relay = async move {
                let _ = rx.await;
                let _ = stop_tx.send(true);
            };
            tokio::join!(
                vmetal_controller::host::run(ctx, None, stopped(stop_rx.clone())),
                vmetal_controller::machine::run(client, tenants, machines, stopped(stop_rx)),
                relay,
            );
        });
        self.controller = Some((task, tx));
    }

    /// Kill the controller abruptly (as a crash would): its task is aborted mid-flight.
    pub fn crash_controller(&mut self) {
        if let Some((task, _tx)) = self.controller.take() {
            task.abort();
        }
    }

    /// Stop gracefully.
    pub async fn stop(mut self) {
        if let Some((task, tx)) = self.controller.take() {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.agent_task.abort();
        // Dropping the VM lab quits every VM's QEMU.
        self.vms.take();
    }

    async fn start_vms(&self) -> anyhow::Result<crate::vms::VmLab> {
        let ns = &self.config.lab_namespace;
        let vms = crate::vms::start(&self.config.vms, &self.config.data_dir.join("vms")).await?;
        let hosts: Api<BareMetalHost> = Api::namespaced(self.client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        for vm in &vms.vms {
            let mut annotations = serde_json::Map::new();
            if let Some(address) = &vm.spec.address {
                annotations.insert("vmetal.io/ip-address".into(), address.clone().into());
            }
            // SeaBIOS: Debian's iPXE ROM PXE-boots, and disk images with a BIOS boot loader boot.
            let extra = serde_json::json!({
                "metadata": {"annotations": annotations, "labels": {"vmetal.io/vm": vm.spec.name}},
                "spec": {"bootMode": "legacy"},
            });
            ensure_host(
                &hosts,
                &secrets,
                &vm.spec.name,
                &vm.spec.mac,
                &vm.bmc_address,
                extra,
            )
            .await?;
        }
        Ok(vms)
    }

    async fn start_lab(&self) -> anyhow::Result<Lab> {
        let n = self.config.lab;
        let ns = &self.config.lab_namespace;
        let servers: Vec<SimulatedServer> = (0..n)
            .map(|i| SimulatedServer::new(ServerIdentity::numbered(i)))
            .collect();
        let redfish = RedfishService::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            servers.clone(),
            RedfishConfig {
                username: LAB_USERNAME.into(),
                password: LAB_PASSWORD.into(),
                tls: false,
            },
        )
        .await
        .context("cannot start the lab's Redfish BMC")?;
        let hosts: Api<BareMetalHost> = Api::namespaced(self.client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let mut ipmi = Vec::new();
        let mut lab_servers = Vec::new();
        for (i, server) in servers.into_iter().enumerate() {
            let index = i as u32;
            let id = server.identity().clone();
            let name = format!("server-{}", id.id);
            let spec = vmetal_lab::rack::lab_spec(index);
            let workdir = self.config.data_dir.join("lab").join(&name);
            let machine = Arc::new(vmetal_lab::agent_backend::SimulatedMachine::new(
                spec.clone(),
                workdir,
                self.agent_api_url(),
                self.config.boot_delay,
            )?);
            server.set_backend(machine.clone());
            // Mixed rack: even servers on Redfish, odd ones on IPMI.
            let bmc_address = if i % 2 == 0 {
                format!(
                    "redfish+http://{}/redfish/v1/Systems/{}",
                    redfish.local_addr(),
                    id.id
                )
            } else {
                let svc = IpmiService::start(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    server.clone(),
                    LAB_USERNAME.into(),
                    LAB_PASSWORD.into(),
                )
                .await
                .context("cannot start a lab IPMI BMC")?;
                let address = format!("ipmi://{}", svc.local_addr());
                ipmi.push(svc);
                address
            };
            ensure_host(
                &hosts,
                &secrets,
                &name,
                &id.boot_mac,
                &bmc_address,
                serde_json::json!({}),
            )
            .await?;
            lab_servers.push(LabServer {
                name,
                server,
                machine,
                spec,
                bmc_address,
            });
        }
        Ok(Lab {
            servers: lab_servers,
            _redfish: redfish,
            _ipmi: ipmi,
        })
    }

    /// Print progress until every lab host is `available` (or `timeout`).
    pub async fn report_progress(&self, timeout: Duration) -> anyhow::Result<bool> {
        let hosts: Api<BareMetalHost> =
            Api::namespaced(self.client.clone(), &self.config.lab_namespace);
        let start = Instant::now();
        let mut last = String::new();
        loop {
            let list = hosts.list(&ListParams::default()).await?;
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for h in &list.items {
                let state = h.provisioning_state().as_str();
                *counts
                    .entry(if state.is_empty() {
                        "(new)".into()
                    } else {
                        state.to_string()
                    })
                    .or_default() += 1;
            }
            let line = counts
                .iter()
                .map(|(s, n)| format!("{n} {s}"))
                .collect::<Vec<_>>()
                .join(", ");
            if line != last {
                println!("  [{:>5.1}s] hosts: {line}", start.elapsed().as_secs_f64());
                last = line;
            }
            let available = list
                .items
                .iter()
                .filter(|h| h.provisioning_state().is_available())
                .count();
            if !list.items.is_empty() && available == list.items.len() {
                return Ok(true);
            }
            if start.elapsed() > timeout {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn client_for(apiserver: &RunningApiServer) -> anyhow::Result<kube::Client> {
    let config = config_for(apiserver).await?;
    kube::Client::try_from(config).context("cannot build a Kubernetes client")
}

/// The admin client configuration from the API server's kubeconfig.
pub async fn config_for(apiserver: &RunningApiServer) -> anyhow::Result<kube::Config> {
    let path = apiserver
        .kubeconfig_path()
        .context("the API server wrote no kubeconfig")?;
    let kubeconfig = Kubeconfig::read_from(path).context("cannot read the kubeconfig")?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("cannot load the kubeconfig")
}

/// Create the BMC Secret and BareMetalHost of a lab server unless they exist (restarts keep
/// what the user changed).
async fn ensure_host(
    hosts: &Api<BareMetalHost>,
    secrets: &Api<Secret>,
    name: &str,
    mac: &str,
    bmc_address: &str,
    extra: serde_json::Value,
) -> anyhow::Result<()> {
    let secret_name = format!("{name}-bmc");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": secret_name},
        "stringData": {"username": LAB_USERNAME, "password": LAB_PASSWORD},
    }))?;
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // A restarted lab listens on new ports: keep the Secret, update the address below.
        }
        Err(e) => return Err(e).context("cannot create a lab BMC Secret"),
    }
    let mut value = serde_json::json!({
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "BareMetalHost",
        "metadata": {"name": name, "labels": {"vmetal.io/lab": "true"}},
        "spec": {
            "online": false,
            "bootMACAddress": mac,
            "bmc": {"address": bmc_address, "credentialsName": secret_name},
        },
    });
    merge_json(&mut value, extra);
    let host: BareMetalHost = serde_json::from_value(value)?;
    match hosts.create(&PostParams::default(), &host).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let patch = serde_json::json!({"spec": {"bmc": {"address": bmc_address}}});
            hosts
                .patch(
                    name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(patch),
                )
                .await
                .context("cannot update a lab host's BMC address")?;
            Ok(())
        }
        Err(e) => Err(e).context("cannot create a lab BareMetalHost"),
    }
}

/// Copy the agent ramdisk (`vmlinuz`, `initramfs` from ramdisk/build.sh) into
/// `data_dir/boot`, where the boot services serve it from.
pub fn install_ramdisk(from: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let boot = data_dir.join("boot");
    std::fs::create_dir_all(&boot).with_context(|| format!("cannot create {}", boot.display()))?;
    for file in ["vmlinuz", "initramfs"] {
        let src = from.join(file);
        anyhow::ensure!(
            src.is_file(),
            "{} is missing: build the agent ramdisk with ramdisk/build.sh",
            src.display()
        );
        std::fs::copy(&src, boot.join(file))
            .with_context(|| format!("cannot copy {} into {}", src.display(), boot.display()))?;
    }
    Ok(())
}

/// Merge `patch` into `base` (objects key by key, anything else replaced).
fn merge_json(base: &mut serde_json::Value, patch: serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(base), serde_json::Value::Object(patch)) => {
            for (k, v) in patch {
                merge_json(base.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (base, patch) => *base = patch,
    }
}

/// A small raw disk image (MBR, one partition) and its sha256sum file, for demos.
pub fn write_demo_image(dir: &Path) -> anyhow::Result<()> {
    use sha2::Digest;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("demo.raw");
    if path.exists() {
        return Ok(());
    }
    // 8 MiB of recognisable content: a header line, then a deterministic pattern.
    let mut image = vec![0u8; 8 << 20];
    let header = b"vmetal demo image: not bootable, but every byte is checked\n";
    image[..header.len()].copy_from_slice(header);
    for (i, chunk) in image.chunks_mut(4096).enumerate().skip(1) {
        let tag = format!("block {i:08}\n");
        chunk[..tag.len()].copy_from_slice(tag.as_bytes());
    }
    // An MBR with one Linux partition from 1 MiB to the end, as a whole-disk image has, so the
    // agent can add the config-drive partition after it.
    let sectors = (image.len() / 512) as u32;
    let entry = &mut image[446..462];
    entry.fill(0);
    entry[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[4] = 0x83;
    entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
    entry[12..16].copy_from_slice(&(sectors - 2048).to_le_bytes());
    image[510] = 0x55;
    image[511] = 0xaa;
    std::fs::write(&path, &image).with_context(|| format!("cannot write {}", path.display()))?;
    let digest: String = sha2::Sha256::digest(&image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        dir.join("demo.raw.sha256sum"),
        format!("{digest}  demo.raw\n"),
    )
    .context("cannot write the demo image checksum")?;
    Ok(())
}
