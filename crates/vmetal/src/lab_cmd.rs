//! `vmetal lab`: serve virtual BMCs (Redfish and IPMI) over simulated servers, so the rest of
//! vmetal — and `vmetal bmc`, ipmitool or curl — can drive a rack with no hardware.

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Args, Subcommand};
use vmetal_lab::ipmi::IpmiService;
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
    /// Serve N simulated servers behind one Redfish service and one IPMI port each.
    Bmc(LabBmcArgs),
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
}

/// Run `vmetal lab`.
pub fn run(args: LabArgs) -> anyhow::Result<()> {
    let LabCommand::Bmc(args) = args.command;
    anyhow::ensure!(args.systems >= 1, "--systems must be at least 1");
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let servers: Vec<SimulatedServer> = (0..args.systems)
            .map(|i| SimulatedServer::new(ServerIdentity::numbered(i)))
            .collect();
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
        println!(
            "# {} simulated servers; credentials {} / <password>",
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
        Ok(())
    })
}
