//! `vmetal`: bare-metal servers as Kubernetes resources. One binary, one subcommand per process.

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
