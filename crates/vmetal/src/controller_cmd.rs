//! `vmetal controller`: the host and machine controllers behind leader election, the agent API
//! (served by every replica), and `/metrics`, `/healthz`, `/readyz`, against any cluster.
//!
//! Agents may reach any replica: the agent API answers from the cluster's objects, so it needs
//! no leadership. Only the reconcilers, which write host state, run on the leader alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use vmetal_controller::bmc_pool::{BmcPool, RealBmcFactory};
use vmetal_controller::leader::{self, LeaderConfig, LeaderElector, LeaderStatus};
use vmetal_controller::machine::{MachineControllerConfig, TenantCluster};
use vmetal_controller::metrics::Metrics;
use vmetal_controller::{Context, ControllerConfig};

use crate::observe;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Options of `vmetal controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Kubeconfig (default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Watch BareMetalHosts and Machines in this namespace only (default: all namespaces).
    #[arg(long, env = "VMETAL_NAMESPACE")]
    pub namespace: Option<String>,
    /// Agent API (and image directory) address; agents reach it through `vmetal boot`.
    #[arg(long, default_value = "0.0.0.0:6385", value_name = "ADDR")]
    pub agent_bind: SocketAddr,
    /// `/metrics`, `/healthz` and `/readyz` address.
    #[arg(long, default_value = "0.0.0.0:8081", value_name = "ADDR")]
    pub metrics_bind: SocketAddr,
    /// Serve this directory under `/images/` on the agent API address.
    #[arg(long, value_name = "DIR")]
    pub images_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Run the controllers only while holding the leader Lease (needed with >1 replica).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else vmetal-system).
    #[arg(long, value_name = "NS")]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "vmetal-controller", value_name = "NAME")]
    pub leader_election_id: String,
    /// A standby takes over after seeing the Lease unchanged this long (seconds).
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,
    /// The leader stops reconciling when it could not renew for this long (seconds).
    #[arg(long, default_value_t = 10)]
    pub renew_deadline: u64,
    /// Seconds between acquire/renew attempts.
    #[arg(long, default_value_t = 2)]
    pub retry_period: u64,
    /// Hosts allowed in inspecting/provisioning/deprovisioning at once.
    #[arg(long, default_value_t = 20)]
    pub max_concurrent_operations: usize,
    /// Agents give up on an image download that sends nothing for this long (seconds).
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub image_download_stall_timeout: u64,
}

/// What [`start`] runs.
#[derive(Clone)]
pub struct ControllerOptions {
    /// Watch one namespace only.
    pub namespace: Option<String>,
    /// Agent API address (`None`: no agent API in this process).
    pub agent_bind: Option<SocketAddr>,
    /// Observability address (`None`: none).
    pub metrics_bind: Option<SocketAddr>,
    /// Directory served under `/images/` next to the agent API.
    pub images_dir: Option<PathBuf>,
    /// Leader election (`None`: always run the controllers).
    pub leader: Option<LeaderConfig>,
    /// Host controller tunables.
    pub controller: ControllerConfig,
    /// Machine controller tunables.
    pub machines: MachineControllerConfig,
    /// Tenant clusters whose Nodes the machine controller watches to see joins.
    pub tenants: Vec<TenantCluster>,
    /// Heartbeat interval told to agents.
    pub agent_heartbeat: Duration,
    /// Agents give up on an image download that sends nothing this long.
    pub download_stall_timeout: Duration,
    /// Timeout of one BMC call.
    pub bmc_timeout: Duration,
    /// Metrics to record into (a fresh registry by default).
    pub metrics: Metrics,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            namespace: None,
            agent_bind: None,
            metrics_bind: None,
            images_dir: None,
            leader: None,
            controller: ControllerConfig::default(),
            machines: MachineControllerConfig::default(),
            tenants: Vec::new(),
            agent_heartbeat: Duration::from_secs(5),
            download_stall_timeout: Duration::from_secs(120),
            bmc_timeout: Duration::from_secs(10),
            metrics: Metrics::default(),
        }
    }
}

/// A running controller process.
pub struct RunningController {
    /// Where the agent API listens.
    pub agent_addr: Option<SocketAddr>,
    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    pub metrics_addr: Option<SocketAddr>,
    /// Its metrics.
    pub metrics: Metrics,
    /// Leadership (always leading without leader election).
    pub leader: LeaderStatus,
    shutdown: Option<oneshot::Sender<()>>,
    main: JoinHandle<()>,
    servers: Vec<JoinHandle<()>>,
}

impl RunningController {
    /// Whether this instance runs the reconcilers now.
    pub fn is_leader(&self) -> bool {
        self.leader.is_leader()
    }

    /// Graceful stop: reconcilers finish, the leader Lease is released, servers close.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.main).await;
        for s in &self.servers {
            s.abort();
        }
    }

    /// Wait until stopped by `stop` or by the controllers ending.
    pub async fn wait(&mut self) {
        let _ = (&mut self.main).await;
    }

    /// Crash: everything stops mid-flight, the Lease is left to expire.
    pub fn abort(self) {
        self.main.abort();
        for s in &self.servers {
            s.abort();
        }
    }
}

/// Start the controller process's pieces on `client`.
pub async fn start(
    client: kube::Client,
    options: ControllerOptions,
) -> anyhow::Result<RunningController> {
    let metrics = options.metrics.clone();
    let mut servers = Vec::new();

    let mut agent_addr = None;
    if let Some(bind) = options.agent_bind {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen for agents on {bind}"))?;
        agent_addr = Some(listener.local_addr()?);
        let api = vmetal_provisioner::agent_api::AgentApi::new(
            client.clone(),
            options.namespace.clone(),
            options.agent_heartbeat,
        )
        .with_download_stall_timeout(options.download_stall_timeout);
        let mut app = observe::count_agent_requests(
            vmetal_provisioner::agent_api::router(api),
            metrics.clone(),
        );
        if let Some(dir) = &options.images_dir {
            app = app.nest_service("/images", tower_http::services::ServeDir::new(dir));
        }
        servers.push(tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(%err, "agent API stopped");
            }
        }));
    }

    let (leader_status, elector) = match &options.leader {
        Some(config) => {
            let elector = LeaderElector::new(client.clone(), config.clone(), metrics.clone());
            (elector.status(), Some(Arc::new(elector)))
        }
        None => (LeaderStatus::always_leading(), None),
    };

    let mut metrics_addr = None;
    if let Some(bind) = options.metrics_bind {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen for metrics on {bind}"))?;
        metrics_addr = Some(listener.local_addr()?);
        let ready: observe::Readiness = match &elector {
            // A standby is ready too: it serves the agent API and can take over.
            Some(_) => {
                let status = leader_status.clone();
                Arc::new(move || {
                    if status.api_reachable() {
                        Ok(())
                    } else {
                        Err("the Kubernetes API server was not reachable in the last leader election round".into())
                    }
                })
            }
            None => observe::always_ready(),
        };
        let app = observe::routes(metrics.clone(), ready);
        servers.push(tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(%err, "metrics server stopped");
            }
        }));
    }

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = shutdown_rx.await;
    };
    let options_metrics = metrics.clone();
    let mut lead = controllers(client, options);
    let main = match elector {
        Some(elector) => tokio::spawn(async move { elector.run(shutdown, lead).await }),
        None => {
            metrics.leader.set(1);
            let (stop_tx, stop_rx) = watch::channel(false);
            tokio::spawn(async move {
                let run = lead(stop_rx);
                tokio::pin!(run);
                tokio::select! {
                    _ = &mut run => return,
                    _ = shutdown => {}
                }
                let _ = stop_tx.send(true);
                run.await;
            })
        }
    };
    Ok(RunningController {
        agent_addr,
        metrics_addr,
        metrics: options_metrics,
        leader: leader_status,
        shutdown: Some(shutdown_tx),
        main,
        servers,
    })
}

/// One leadership term of the reconcilers.
type Term = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The reconcilers, as the leader runs them: fresh state (context, BMC sessions) every term.
fn controllers(
    client: kube::Client,
    options: ControllerOptions,
) -> impl FnMut(watch::Receiver<bool>) -> Term + Send + 'static {
    move |stop| {
        let bmcs = BmcPool::new(
            Arc::new(RealBmcFactory),
            vmetal_bmc::ConnectOptions {
                timeout: options.bmc_timeout,
                ..Default::default()
            },
        );
        let ctx = Context::with_metrics(
            client.clone(),
            bmcs,
            options.controller.clone(),
            options.metrics.clone(),
        );
        let namespace = options.namespace.clone();
        let mut machines = options.machines.clone();
        machines.namespace = machines.namespace.or_else(|| namespace.clone());
        let tenants = options.tenants.clone();
        let client = client.clone();
        Box::pin(async move {
            tokio::join!(
                vmetal_controller::host::run(ctx, namespace, leader::stopped(stop.clone())),
                vmetal_controller::machine::run(client, tenants, machines, leader::stopped(stop)),
            );
        })
    }
}

/// A client from `--kubeconfig`, else `$KUBECONFIG` / `~/.kube/config` / in-cluster.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {} is not usable", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration: pass --kubeconfig, set KUBECONFIG, or run in a cluster",
        )?,
    };
    kube::Client::try_from(config).context("cannot build a Kubernetes client")
}

/// Set up logging in `format`, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

impl ControllerArgs {
    /// The options these flags describe.
    pub fn options(&self) -> anyhow::Result<ControllerOptions> {
        let leader = if self.leader_elect {
            let secs = Duration::from_secs;
            if !(self.lease_duration > self.renew_deadline
                && self.renew_deadline > self.retry_period)
            {
                anyhow::bail!(
                    "leader election timing must satisfy --lease-duration > --renew-deadline > --retry-period (got {} > {} > {})",
                    self.lease_duration,
                    self.renew_deadline,
                    self.retry_period
                );
            }
            let namespace = self
                .leader_election_namespace
                .clone()
                .or_else(|| {
                    std::env::var("POD_NAMESPACE")
                        .ok()
                        .filter(|s| !s.is_empty())
                })
                .unwrap_or_else(|| "vmetal-system".into());
            Some(LeaderConfig {
                lease_duration: secs(self.lease_duration),
                renew_deadline: secs(self.renew_deadline),
                retry_period: secs(self.retry_period),
                ..LeaderConfig::new(
                    namespace,
                    self.leader_election_id.clone(),
                    leader::default_identity(),
                )
            })
        } else {
            None
        };
        Ok(ControllerOptions {
            namespace: self.namespace.clone(),
            agent_bind: Some(self.agent_bind),
            metrics_bind: Some(self.metrics_bind),
            images_dir: self.images_dir.clone(),
            leader,
            controller: ControllerConfig {
                max_concurrent_operations: self.max_concurrent_operations,
                ..ControllerConfig::default()
            },
            machines: MachineControllerConfig {
                namespace: self.namespace.clone(),
                ..MachineControllerConfig::default()
            },
            download_stall_timeout: Duration::from_secs(self.image_download_stall_timeout.max(1)),
            ..ControllerOptions::default()
        })
    }
}

/// Run `vmetal controller` until SIGTERM or Ctrl-C, then stop reconciling and release the
/// leader Lease so a standby takes over at once.
pub fn run(args: ControllerArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let options = args.options()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let client = client(args.kubeconfig.as_deref()).await?;
        let identity = options.leader.as_ref().map(|l| l.identity.clone());
        let mut running = start(client, options).await?;
        tracing::info!(
            agent_api = ?running.agent_addr,
            metrics = ?running.metrics_addr,
            identity = ?identity,
            "vmetal controller started"
        );
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot listen for SIGTERM")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
            _ = running.wait() => {
                anyhow::bail!("the controllers stopped on their own");
            }
        }
        tracing::info!("shutting down");
        running.stop().await;
        Ok(())
    })
}
