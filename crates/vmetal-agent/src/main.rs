//! `vmetal-agent`: the agent ramdisk's main job. Without a subcommand it reads the kernel
//! command line, brings the network up and runs agent cycles forever; subcommands run one
//! piece by hand (`run`, `inventory`, `write-image`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use vmetal_agent::cmdline::{self, BootSettings};
use vmetal_agent::error::redact_url;
use vmetal_agent::netup::{self, NetupConfig};
use vmetal_agent::{AgentConfig, AgentError};
use vmetal_api::agent::DeployCommand;
use vmetal_api::mac::normalize_mac;
use vmetal_api::states::{ChecksumType, ImageFormat};

/// Pause between lookups while the controller has nothing for this machine.
const LOOKUP_RETRY: Duration = Duration::from_secs(3);
/// Pause after a cycle ended (finished, or the token was rejected) before looking up again.
const CYCLE_PAUSE: Duration = Duration::from_secs(3);
/// Pause between rounds of DHCP when no NIC got a lease.
const NETUP_PAUSE: Duration = Duration::from_secs(10);
/// How often an unusable kernel command line is reported again.
const CMDLINE_NAG: Duration = Duration::from_secs(60);

/// The vmetal agent: inventory, image writes and wipes for the vmetal controller.
#[derive(Debug, Parser)]
#[command(name = "vmetal-agent", version)]
struct Cli {
    /// Log at debug level (RUST_LOG overrides).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run agent cycles against an agent API, as the ramdisk does (without the network setup).
    Run {
        /// Base URL of the agent API (`http://10.0.0.1:8080`).
        #[arg(long)]
        api: String,
        /// MAC to look up with (repeatable); default: every NIC.
        #[arg(long = "mac")]
        macs: Vec<String>,
        /// Where `/proc` and `/sys` are.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Where the disks' device nodes are.
        #[arg(long, default_value = "/dev")]
        dev_dir: PathBuf,
        /// Milliseconds between lookups while there is nothing to do.
        #[arg(long, default_value_t = LOOKUP_RETRY.as_millis() as u64)]
        lookup_interval_ms: u64,
        /// Stop after one cycle (exit 0 when it finished, 1 when it failed).
        #[arg(long)]
        once: bool,
    },
    /// Print the hardware inventory (HardwareDetails JSON) the controller would get.
    Inventory {
        /// Where `/proc` and `/sys` are.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Write one image exactly as a deploy does, and print bytes, seconds and MB/s.
    WriteImage {
        /// Image URL (http or https).
        #[arg(long)]
        url: String,
        /// Block device or existing file to write to.
        #[arg(long)]
        device: PathBuf,
        /// Image format.
        #[arg(long, value_enum, default_value_t = Format::Raw)]
        format: Format,
        /// Expected checksum (hex) or URL of a checksum file; required because the agent never
        /// declares an unverified image written.
        #[arg(long)]
        checksum: String,
        /// Checksum algorithm; default: detected from the length (sha256 or sha512).
        #[arg(long, value_enum)]
        checksum_type: Option<Algorithm>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Raw,
    Qcow2,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Algorithm {
    Sha256,
    Sha512,
    Md5,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmetal-agent: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            None => ramdisk_main(cli.debug).await,
            Some(Command::Run {
                api,
                macs,
                root,
                dev_dir,
                lookup_interval_ms,
                once,
            }) => {
                init_logging(cli.debug);
                let macs = macs
                    .iter()
                    .map(|m| {
                        normalize_mac(m).map_err(|_| {
                            anyhow::anyhow!("--mac {m:?} is not a MAC address (52:54:00:ab:cd:ef)")
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let config = AgentConfig {
                    api_url: api,
                    mac_addresses: macs,
                    root,
                    dev_dir,
                    heartbeat_interval_override: None,
                    lookup_retry: Duration::from_millis(lookup_interval_ms),
                };
                if once {
                    let outcome = vmetal_agent::run(config).await?;
                    tracing::info!(host = %outcome.host.name, cycle = %outcome.cycle, "cycle finished");
                    Ok(())
                } else {
                    cycles_forever(config).await
                }
            }
            Some(Command::Inventory { root }) => {
                init_logging(cli.debug);
                let hw = vmetal_agent::collect(&root)?;
                println!("{}", serde_json::to_string_pretty(&hw)?);
                Ok(())
            }
            Some(Command::WriteImage {
                url,
                device,
                format,
                checksum,
                checksum_type,
            }) => {
                init_logging(cli.debug);
                write_image(url, device, format, checksum, checksum_type).await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmetal-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr (the serial console in the ramdisk), colours only on a terminal.
fn init_logging(debug: bool) {
    let default = if debug {
        "debug,hyper=info,hyper_util=info,reqwest=info,h2=info,rustls=info"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The ramdisk's main job: settings from `/proc/cmdline`, network, then cycles forever.
/// Never returns: init would only restart it.
async fn ramdisk_main(debug_flag: bool) -> anyhow::Result<()> {
    let parsed = std::fs::read("/proc/cmdline")
        .map_err(|e| AgentError::Cmdline {
            reason: format!("cannot read /proc/cmdline: {e}"),
        })
        .and_then(|bytes| cmdline::parse(&String::from_utf8_lossy(&bytes)));
    let settings: BootSettings = match parsed {
        Ok(s) => s,
        Err(e) => {
            init_logging(debug_flag);
            // Nothing useful can happen without the API URL; say why until someone looks.
            loop {
                tracing::error!("{e}; the agent is idle");
                tokio::time::sleep(CMDLINE_NAG).await;
            }
        }
    };
    init_logging(debug_flag || settings.debug);
    tracing::info!(
        api = %redact_url(&settings.api_url),
        macs = %if settings.mac_addresses.is_empty() { "all NICs".to_string() } else { settings.mac_addresses.join(",") },
        version = env!("CARGO_PKG_VERSION"),
        "vmetal-agent starting"
    );
    for name in &settings.unknown {
        tracing::warn!("ignoring unknown kernel parameter {name}");
    }
    let net = NetupConfig::default();
    loop {
        match netup::bring_up(&net).await {
            Ok(_) => break,
            Err(e) => {
                tracing::error!("{e}; trying again in {} s", NETUP_PAUSE.as_secs());
                tokio::time::sleep(NETUP_PAUSE).await;
            }
        }
    }
    cycles_forever(AgentConfig {
        api_url: settings.api_url,
        mac_addresses: settings.mac_addresses,
        root: "/".into(),
        dev_dir: "/dev".into(),
        heartbeat_interval_override: None,
        lookup_retry: LOOKUP_RETRY,
    })
    .await
}

/// Run cycles one after another; a finished or failed cycle (or a panic) is logged, then the
/// agent looks up again after a pause.
async fn cycles_forever(config: AgentConfig) -> anyhow::Result<()> {
    loop {
        // A task, so that a panic in a cycle is reported instead of ending the process.
        match tokio::spawn(vmetal_agent::run(config.clone())).await {
            Ok(Ok(outcome)) => tracing::info!(
                host = %format!("{}/{}", outcome.host.namespace, outcome.host.name),
                cycle = %outcome.cycle,
                commands = outcome.results.len(),
                "cycle finished; looking up again in {} s",
                CYCLE_PAUSE.as_secs()
            ),
            Ok(Err(e)) => tracing::warn!(
                "cycle ended: {e}; looking up again in {} s",
                CYCLE_PAUSE.as_secs()
            ),
            Err(e) => tracing::error!(
                "cycle crashed: {e}; looking up again in {} s",
                CYCLE_PAUSE.as_secs()
            ),
        }
        tokio::time::sleep(CYCLE_PAUSE).await;
    }
}

async fn write_image(
    url: String,
    device: PathBuf,
    format: Format,
    checksum: String,
    checksum_type: Option<Algorithm>,
) -> anyhow::Result<()> {
    let cmd = DeployCommand {
        id: "write-image".into(),
        image_url: url,
        checksum,
        checksum_type: checksum_type.map(|a| match a {
            Algorithm::Sha256 => ChecksumType::Sha256,
            Algorithm::Sha512 => ChecksumType::Sha512,
            Algorithm::Md5 => ChecksumType::Md5,
        }),
        format: Some(match format {
            Format::Raw => ImageFormat::Raw,
            Format::Qcow2 => ImageFormat::Qcow2,
        }),
        root_device_hints: None,
        config_drive: None,
        download_stall_timeout_seconds: None,
    };
    let started = Instant::now();
    let report = vmetal_agent::write_image(&cmd, &device, |p| {
        tracing::info!(
            step = %p.step,
            mib = p.done_bytes >> 20,
            total_mib = p.total_bytes.map(|t| t >> 20),
            "progress"
        );
    })
    .await
    .with_context(|| {
        format!(
            "writing {} to {}",
            redact_url(&cmd.image_url),
            device.display()
        )
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let mb_per_s = report.image_end as f64 / 1e6 / seconds.max(1e-9);
    println!(
        "bytes_written={} seconds={seconds:.3} mb_per_s={mb_per_s:.1} downloaded_bytes={} checksum={} written_sha256={}",
        report.image_end,
        report.downloaded,
        report.checksum_algorithm,
        report.written_sha256.as_deref().unwrap_or("-")
    );
    Ok(())
}
