//! QEMU VMs as lab servers (`vmetal up --vm`): each VM sits behind a virtual Redfish or IPMI
//! BMC and gets a BareMetalHost, like metal3-dev-env's libvirt VMs behind sushy-tools.
//!
//! The VM's NIC is a tap on the provisioning bridge, so it PXE-boots from `vmetal boot`.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use anyhow::Context as _;
use vmetal_lab::ipmi::{IpmiService, RunningIpmi};
use vmetal_lab::qemu::{Accel, DiskFormat, QemuConfig, QemuMachine, QemuNet};
use vmetal_lab::redfish::{RedfishConfig, RedfishService, RunningRedfish};
use vmetal_lab::{ServerIdentity, SimulatedServer};

use crate::up::{LAB_PASSWORD, LAB_USERNAME};

/// Which virtual BMC fronts a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmBmc {
    /// Redfish over HTTP (`redfish+http://…/redfish/v1/Systems/<name>`).
    Redfish,
    /// IPMI 2.0 lanplus (`ipmi://…`).
    Ipmi,
}

/// One VM of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// BareMetalHost name (and Redfish system id).
    pub name: String,
    /// MAC of its virtio NIC, the host's `bootMACAddress`.
    pub mac: String,
    /// Its BMC.
    pub bmc: VmBmc,
    /// Tap device on the provisioning bridge (must exist); none means QEMU user networking,
    /// which cannot PXE-boot from vmetal.
    pub tap: Option<String>,
    /// Disk size in bytes (a sparse raw file, kept across restarts).
    pub disk_size: u64,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Fixed address the boot network's DHCP hands out in reservation mode (`10.0.0.10/24`,
    /// the host's `vmetal.io/ip-address` annotation).
    pub address: Option<String>,
}

impl FromStr for VmSpec {
    type Err = String;

    /// `name=vm-1,mac=52:54:00:00:00:01,tap=tap0,bmc=redfish,disk=8G,cpus=2,memory=2048,ip=10.0.0.10/24`;
    /// only `name` and `mac` are required.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut spec = VmSpec {
            name: String::new(),
            mac: String::new(),
            bmc: VmBmc::Redfish,
            tap: None,
            disk_size: 8 << 30,
            cpus: 2,
            memory_mib: 2048,
            address: None,
        };
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("--vm: expected key=value, got {part:?}"))?;
            let value = value.trim();
            match key.trim() {
                "name" => spec.name = value.to_string(),
                "mac" => {
                    spec.mac = vmetal_api::mac::MacAddress::from_str(value)
                        .map_err(|e| format!("--vm mac={value}: {e}"))?
                        .to_string()
                }
                "tap" => spec.tap = Some(value.to_string()),
                "bmc" => {
                    spec.bmc = match value {
                        "redfish" => VmBmc::Redfish,
                        "ipmi" => VmBmc::Ipmi,
                        _ => return Err(format!("--vm bmc={value}: expected redfish or ipmi")),
                    }
                }
                "disk" => spec.disk_size = parse_size(value)?,
                "cpus" => {
                    spec.cpus =
                        value.parse().ok().filter(|c| *c > 0).ok_or_else(|| {
                            format!("--vm cpus={value}: expected a positive number")
                        })?
                }
                "memory" => {
                    spec.memory_mib =
                        value.parse().ok().filter(|m| *m >= 256).ok_or_else(|| {
                            format!("--vm memory={value}: expected MiB, at least 256")
                        })?
                }
                "ip" => {
                    if vmetal_boot::hosts::parse_cidr(value).is_none() {
                        return Err(format!(
                            "--vm ip={value}: expected an address with a prefix, like 10.0.0.10/24"
                        ));
                    }
                    spec.address = Some(value.to_string())
                }
                other => {
                    return Err(format!(
                        "--vm: unknown key {other:?} (name, mac, tap, bmc, disk, cpus, memory, ip)"
                    ));
                }
            }
        }
        if spec.name.is_empty() || spec.mac.is_empty() {
            return Err("--vm needs at least name=<host> and mac=<MAC>".into());
        }
        Ok(spec)
    }
}

/// `8G`, `512M`, `1073741824`.
fn parse_size(value: &str) -> Result<u64, String> {
    let (digits, unit) = match value.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => value.split_at(i),
        None => (value, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("--vm disk={value}: expected a size like 8G"))?;
    let shift = match unit {
        "" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => {
            return Err(format!(
                "--vm disk={value}: unknown unit {unit:?} (K, M, G, T)"
            ));
        }
    };
    n.checked_mul(1u64 << shift)
        .filter(|b| *b >= 64 << 20)
        .ok_or_else(|| format!("--vm disk={value}: must be between 64M and 16E"))
}

/// A VM of the running lab.
pub struct LabVm {
    /// The spec it was started from.
    pub spec: VmSpec,
    /// Its power and boot state, as both BMC front ends see it.
    pub server: SimulatedServer,
    /// The VM.
    pub vm: QemuMachine,
    /// `spec.bmc.address` of its BareMetalHost.
    pub bmc_address: String,
}

/// The VMs and their BMCs.
pub struct VmLab {
    /// The VMs, in spec order.
    pub vms: Vec<LabVm>,
    /// The accelerator the VMs run with.
    pub accel: Accel,
    _redfish: Option<RunningRedfish>,
    _ipmi: Vec<RunningIpmi>,
}

impl Drop for VmLab {
    fn drop(&mut self) {
        for vm in &self.vms {
            vm.vm.shutdown();
        }
    }
}

/// Start the VMs' BMCs (QEMU starts when a BMC powers a VM on); disks and logs go to
/// `dir/<name>/`.
pub async fn start(specs: &[VmSpec], dir: &Path) -> anyhow::Result<VmLab> {
    let qemu = Path::new("qemu-system-x86_64");
    let accel = vmetal_lab::qemu::probe_accel(qemu);
    let mut vms = Vec::new();
    for spec in specs {
        let workdir = dir.join(&spec.name);
        std::fs::create_dir_all(&workdir)
            .with_context(|| format!("cannot create {}", workdir.display()))?;
        let disk = workdir.join("disk.raw");
        if !disk.exists() {
            vmetal_lab::qemu::create_disk(&disk, spec.disk_size, DiskFormat::Raw)
                .with_context(|| format!("cannot create the disk of VM {}", spec.name))?;
        }
        let mut identity = ServerIdentity::numbered(vms.len() as u32);
        identity.id = spec.name.clone();
        identity.model = "QEMU Standard PC (vmetal lab)".into();
        identity.boot_mac = spec.mac.clone();
        let mut config =
            QemuConfig::new(spec.name.clone(), workdir.clone(), spec.mac.clone(), disk);
        config.smbios = Some(identity.clone());
        config.accel = accel;
        config.cpus = spec.cpus;
        config.memory_mib = spec.memory_mib;
        config.serial_log = workdir.join("serial.log");
        config.net = match &spec.tap {
            Some(ifname) => QemuNet::Tap {
                ifname: ifname.clone(),
            },
            None => QemuNet::User,
        };
        let vm =
            QemuMachine::new(config).with_context(|| format!("cannot set up VM {}", spec.name))?;
        let server = SimulatedServer::new(identity);
        server.set_backend(std::sync::Arc::new(vm.clone()));
        vm.attach(&server);
        vms.push((spec.clone(), server, vm));
    }
    let redfish_servers: Vec<SimulatedServer> = vms
        .iter()
        .filter(|(s, ..)| s.bmc == VmBmc::Redfish)
        .map(|(_, server, _)| server.clone())
        .collect();
    let redfish = if redfish_servers.is_empty() {
        None
    } else {
        Some(
            RedfishService::start(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                redfish_servers,
                RedfishConfig {
                    username: LAB_USERNAME.into(),
                    password: LAB_PASSWORD.into(),
                    tls: false,
                },
            )
            .await
            .context("cannot start the Redfish BMC of the lab VMs")?,
        )
    };
    let mut ipmi = Vec::new();
    let mut lab_vms = Vec::new();
    for (spec, server, vm) in vms {
        let bmc_address = match (spec.bmc, &redfish) {
            (VmBmc::Redfish, Some(redfish)) => format!(
                "redfish+http://{}/redfish/v1/Systems/{}",
                redfish.local_addr(),
                spec.name
            ),
            _ => {
                let svc = IpmiService::start(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    server.clone(),
                    LAB_USERNAME.into(),
                    LAB_PASSWORD.into(),
                )
                .await
                .with_context(|| format!("cannot start the IPMI BMC of VM {}", spec.name))?;
                let address = format!("ipmi://{}", svc.local_addr());
                ipmi.push(svc);
                address
            }
        };
        lab_vms.push(LabVm {
            spec,
            server,
            vm,
            bmc_address,
        });
    }
    Ok(VmLab {
        vms: lab_vms,
        accel,
        _redfish: redfish,
        _ipmi: ipmi,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn vm_specs_parse_with_defaults_and_name_their_errors() {
        let spec: VmSpec =
            "name=vm-1,mac=52:54:00:AA:00:01,tap=tap0,bmc=ipmi,disk=4G,ip=10.0.0.10/24"
                .parse()
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.name, "vm-1");
        assert_eq!(spec.mac, "52:54:00:aa:00:01");
        assert_eq!(spec.bmc, VmBmc::Ipmi);
        assert_eq!(spec.tap.as_deref(), Some("tap0"));
        assert_eq!(spec.disk_size, 4 << 30);
        assert_eq!((spec.cpus, spec.memory_mib), (2, 2048));
        assert_eq!(spec.address.as_deref(), Some("10.0.0.10/24"));
        for (bad, says) in [
            ("mac=52:54:00:00:00:01", "name="),
            ("name=a,mac=zz", "mac=zz"),
            ("name=a,mac=52:54:00:00:00:01,disk=1M", "between"),
            ("name=a,mac=52:54:00:00:00:01,disk=8Q", "unknown unit"),
            ("name=a,mac=52:54:00:00:00:01,bmc=amt", "redfish or ipmi"),
            ("name=a,mac=52:54:00:00:00:01,ip=10.0.0.1", "prefix"),
            ("name=a,mac=52:54:00:00:00:01,colour=red", "unknown key"),
            ("name=a,mac=52:54:00:00:00:01,cpus=0", "positive"),
        ] {
            let err = bad.parse::<VmSpec>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
