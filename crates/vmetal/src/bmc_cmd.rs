//! `vmetal bmc`: an operator's tool like ipmitool/redfishtool on top of the `Bmc` trait, taking
//! the same `bmc.address` a BareMetalHost uses.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use vmetal_api::bmc_address::BmcAddress;
use vmetal_bmc::{
    Bmc, BmcError, BootDevice, BootModeOverride, BootOverride, ConnectOptions, Credentials,
    PowerAction,
};

/// Exit codes of `vmetal bmc`, one per kind of failure.
pub mod exit {
    /// The BMC did not answer (unreachable or timed out).
    pub const UNREACHABLE: u8 = 3;
    /// The BMC rejected the credentials.
    pub const AUTH: u8 = 4;
    /// The BMC cannot do what was asked.
    pub const NOT_SUPPORTED: u8 = 5;
    /// The BMC answered with an error, garbage, or "busy".
    pub const BMC_ERROR: u8 = 6;
}

/// Talk to a BMC.
#[derive(Debug, Args)]
pub struct BmcArgs {
    /// BMC address as in a BareMetalHost's `spec.bmc.address` (`ipmi://10.0.0.5`,
    /// `redfish+https://10.0.0.6/redfish/v1/Systems/1`, ...).
    #[arg(long)]
    address: String,
    /// User name.
    #[arg(long, short = 'U')]
    username: String,
    /// File holding the password (`-` reads standard input); never pass it on the command line.
    #[arg(long, value_name = "FILE")]
    password_file: PathBuf,
    /// Do not verify the BMC's TLS certificate (`disableCertificateVerification`).
    #[arg(long)]
    insecure: bool,
    /// Extra CA certificate (PEM) to trust for HTTPS BMCs.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    command: BmcCommand,
}

#[derive(Debug, Subcommand)]
enum BmcCommand {
    /// Power control.
    Power {
        #[arg(value_enum)]
        action: PowerArg,
    },
    /// Choose the next boot device.
    Bootdev {
        #[arg(value_enum)]
        device: DeviceArg,
        /// Keep the override for every boot.
        #[arg(long)]
        persistent: bool,
        /// Boot in UEFI mode.
        #[arg(long, conflicts_with = "legacy")]
        uefi: bool,
        /// Boot in legacy BIOS mode.
        #[arg(long)]
        legacy: bool,
    },
    /// Manufacturer, model, serial, UUID, BIOS version and power state.
    Info,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PowerArg {
    Status,
    On,
    Off,
    SoftOff,
    Reset,
    Cycle,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeviceArg {
    Pxe,
    Disk,
    Cd,
    Bios,
    Http,
}

/// A failure with the exit code that names its kind.
#[derive(Debug)]
pub struct BmcFailure {
    /// Exit code.
    pub code: u8,
    /// Cause.
    pub error: anyhow::Error,
}

fn classify(e: BmcError) -> BmcFailure {
    let code = match e {
        BmcError::Unreachable { .. } | BmcError::Timeout { .. } => exit::UNREACHABLE,
        BmcError::AuthenticationFailed { .. } => exit::AUTH,
        BmcError::NotSupported { .. } => exit::NOT_SUPPORTED,
        BmcError::Rejected { .. } | BmcError::MalformedResponse { .. } | BmcError::Busy { .. } => {
            exit::BMC_ERROR
        }
    };
    BmcFailure {
        code,
        error: e.into(),
    }
}

fn usage(e: anyhow::Error) -> BmcFailure {
    BmcFailure { code: 1, error: e }
}

/// Run `vmetal bmc`.
pub fn run(args: BmcArgs) -> Result<(), BmcFailure> {
    let address = BmcAddress::parse(&args.address)
        .map_err(|e| usage(anyhow::Error::new(e).context("invalid --address")))?;
    let password = read_password(&args.password_file).map_err(usage)?;
    let mut ca_certificates_pem = Vec::new();
    if let Some(path) = &args.ca_file {
        ca_certificates_pem.push(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --ca-file {}", path.display()))
                .map_err(usage)?,
        );
    }
    let options = ConnectOptions {
        timeout: Duration::from_secs(args.timeout.max(1)),
        disable_certificate_verification: args.insecure,
        ca_certificates_pem,
        ..ConnectOptions::default()
    };
    let runtime = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")
        .map_err(usage)?;
    runtime.block_on(async move {
        let bmc = vmetal_bmc::connect(&address, Credentials::new(args.username, password), options)
            .map_err(classify)?;
        let result = execute(bmc.as_ref(), args.command).await;
        let _ = bmc.close().await;
        result.map_err(classify)
    })
}

async fn execute(bmc: &dyn Bmc, command: BmcCommand) -> Result<(), BmcError> {
    match command {
        BmcCommand::Power { action } => {
            let action = match action {
                PowerArg::Status => {
                    let state = bmc.power_state().await?;
                    println!(
                        "Chassis Power is {}",
                        if state.is_on() { "on" } else { "off" }
                    );
                    return Ok(());
                }
                PowerArg::On => PowerAction::On,
                PowerArg::Off => PowerAction::ForceOff,
                PowerArg::SoftOff => PowerAction::GracefulShutdown,
                PowerArg::Reset => PowerAction::ForceRestart,
                PowerArg::Cycle => PowerAction::PowerCycle,
            };
            bmc.power(action).await?;
            println!("Chassis Power Control: {action:?}");
        }
        BmcCommand::Bootdev {
            device,
            persistent,
            uefi,
            legacy,
        } => {
            let device = match device {
                DeviceArg::Pxe => BootDevice::Pxe,
                DeviceArg::Disk => BootDevice::Disk,
                DeviceArg::Cd => BootDevice::Cd,
                DeviceArg::Bios => BootDevice::BiosSetup,
                DeviceArg::Http => BootDevice::UefiHttp,
            };
            let mode = match (uefi, legacy) {
                (true, _) => Some(BootModeOverride::Uefi),
                (_, true) => Some(BootModeOverride::Legacy),
                _ => None,
            };
            bmc.set_boot_device(BootOverride {
                device,
                persistent,
                mode,
            })
            .await?;
            println!(
                "Set boot device to {device:?}{}",
                if persistent {
                    " (persistent)"
                } else {
                    " (next boot)"
                }
            );
        }
        BmcCommand::Info => {
            let info = bmc.system_info().await?;
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            println!("Manufacturer:  {}", show(&info.manufacturer));
            println!("Model:         {}", show(&info.model));
            println!("Serial number: {}", show(&info.serial_number));
            println!("UUID:          {}", show(&info.uuid));
            println!("BIOS version:  {}", show(&info.bios_version));
            println!(
                "Power:         {}",
                info.power_state
                    .map(|p| if p.is_on() { "on" } else { "off" })
                    .unwrap_or("-")
            );
        }
    }
    Ok(())
}

fn read_password(path: &PathBuf) -> anyhow::Result<String> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read the password from standard input")?;
        s
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --password-file {}", path.display()))?
    };
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}
