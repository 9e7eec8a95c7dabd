//! `status.hardware`: what inspection found on a host (Metal3's `HardwareDetails`), plus the PCI
//! devices and GPU summary vmetal adds so Machines can ask for accelerators.
//!
//! Field names and JSON keys follow Metal3; the `pciDevices` and `gpus` keys are vmetal's own.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

fn is_zero_i32(n: &i32) -> bool {
    *n == 0
}

/// The hardware inventory of one host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HardwareDetails {
    /// Manufacturer, product and serial number from DMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_vendor: Option<HardwareSystemVendor>,
    /// BIOS/UEFI firmware identification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// Installed memory in MiB.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub ram_mebibytes: i64,
    /// Network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
    /// Block devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage: Vec<Storage>,
    /// Processors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Hostname reported by the inspection agent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// PCI devices (vmetal extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pci_devices: Vec<PciDevice>,
    /// GPUs grouped by vendor and model, derived from `pciDevices` (vmetal extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuSummary>,
}

impl HardwareDetails {
    /// Number of logical CPUs, 0 when unknown.
    pub fn cpu_count(&self) -> i64 {
        self.cpu.as_ref().map_or(0, |c| i64::from(c.count))
    }

    /// Total number of GPUs across all groups.
    pub fn gpu_count(&self) -> i64 {
        self.gpus.iter().map(|g| i64::from(g.count)).sum()
    }

    /// Recompute `gpus` from `pciDevices`.
    pub fn refresh_gpu_summary(&mut self) {
        self.gpus = summarize_gpus(&self.pci_devices);
    }
}

/// DMI system identification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HardwareSystemVendor {
    /// System manufacturer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub manufacturer: String,
    /// Product name (model).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub product_name: String,
    /// Serial number.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serial_number: String,
}

/// Firmware identification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Firmware {
    /// BIOS/UEFI details.
    #[serde(default)]
    pub bios: Bios,
}

/// BIOS/UEFI vendor, version and release date.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Bios {
    /// Release date as the firmware reports it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub date: String,
    /// Firmware vendor.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vendor: String,
    /// Firmware version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// One network interface.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Nic {
    /// Interface name (e.g. `eth0`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Vendor and product, as `0x8086 0x1572`-style ids or names.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// MAC address, lower case with colons.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// An IPv4 or IPv6 address seen on the interface during inspection.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
    /// Link speed in Gbps.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub speed_gbps: i32,
    /// VLANs seen on the interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlans: Vec<Vlan>,
    /// The untagged VLAN id.
    #[serde(default, rename = "vlanId")]
    pub vlan_id: i32,
    /// Whether the interface PXE-booted the agent.
    #[serde(default)]
    pub pxe: bool,
    /// Switch port information from LLDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lldp: Option<Lldp>,
    /// PCI address of the NIC (`0000:00:03.0`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pci_address: String,
}

/// A VLAN on a NIC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Vlan {
    /// VLAN id (0-4094).
    #[serde(default)]
    pub id: i32,
    /// VLAN name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// LLDP neighbour data for a NIC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lldp {
    /// Chassis id of the switch.
    #[serde(default, rename = "switchID", skip_serializing_if = "String::is_empty")]
    pub switch_id: String,
    /// Port id on the switch.
    #[serde(default, rename = "portID", skip_serializing_if = "String::is_empty")]
    pub port_id: String,
    /// System name of the switch.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub switch_system_name: String,
}

/// Disk technology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DiskType {
    /// Rotational disk.
    #[serde(rename = "HDD")]
    Hdd,
    /// Solid-state disk on SATA/SAS.
    #[serde(rename = "SSD")]
    Ssd,
    /// NVMe device.
    #[serde(rename = "NVME")]
    Nvme,
}

/// One block device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Kernel device path (`/dev/sda`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Other paths for the same device (`/dev/disk/by-path/...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternate_names: Vec<String>,
    /// Whether the device is rotational (always written: `false` means solid state).
    #[serde(default)]
    pub rotational: bool,
    /// HDD, SSD or NVME.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub disk_type: Option<DiskType>,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub size_bytes: i64,
    /// Vendor string.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vendor: String,
    /// Model string.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// Serial number.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serial_number: String,
    /// World wide name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wwn: String,
    /// WWN vendor extension.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wwn_vendor_extension: String,
    /// WWN with the vendor extension appended.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wwn_with_extension: String,
    /// SCSI host:channel:target:lun.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hctl: String,
}

/// Processor summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    /// Architecture (`x86_64`, `aarch64`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub arch: String,
    /// Model name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// Clock speed in MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_megahertz: Option<f64>,
    /// CPU feature flags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// Number of logical CPUs.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub count: i32,
}

/// One PCI device (vmetal extension).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PciDevice {
    /// PCI address (`0000:3b:00.0`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Vendor id as four lower-case hex digits (`10de`).
    pub vendor_id: String,
    /// Device id as four lower-case hex digits.
    pub device_id: String,
    /// Class code as six hex digits: class, subclass, programming interface (`030200`).
    pub class_id: String,
    /// Vendor name, where known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vendor_name: String,
    /// Device name, where known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_name: String,
}

/// GPUs of one vendor and model on a host (vmetal extension).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuSummary {
    /// Vendor name (`NVIDIA`, `AMD`, `Intel`, `Habana`) or the hex id when unknown.
    pub vendor: String,
    /// Model: the device name where known, else the hex device id.
    pub model: String,
    /// How many of them the host has.
    pub count: i32,
}

/// PCI vendors that make discrete GPUs or accelerators, with their display names.
const GPU_VENDORS: [(&str, &str); 4] = [
    ("10de", "NVIDIA"),
    ("1002", "AMD"),
    ("8086", "Intel"),
    ("1da3", "Habana"),
];

fn gpu_vendor_name(vendor_id: &str) -> Option<&'static str> {
    let id = vendor_id.trim_start_matches("0x").to_ascii_lowercase();
    GPU_VENDORS
        .iter()
        .find(|(v, _)| *v == id)
        .map(|(_, name)| *name)
}

impl PciDevice {
    /// Whether this device is a GPU or compute accelerator.
    ///
    /// A device counts when its class is display (0x03) or processing accelerator (0x12) and
    /// it comes from a GPU vendor. Servers' BMC VGA (ASPEED, Matrox) and emulated VGA are
    /// display-class too; the vendor check keeps them out.
    pub fn is_gpu(&self) -> bool {
        let class = self.class_id.trim_start_matches("0x");
        let is_display_or_accel = class.starts_with("03") || class.starts_with("12");
        is_display_or_accel && gpu_vendor_name(&self.vendor_id).is_some()
    }
}

/// Group GPUs by vendor and model, sorted by vendor then model.
pub fn summarize_gpus(devices: &[PciDevice]) -> Vec<GpuSummary> {
    let mut groups: std::collections::BTreeMap<(String, String), i32> = Default::default();
    for dev in devices.iter().filter(|d| d.is_gpu()) {
        let vendor = if dev.vendor_name.is_empty() {
            gpu_vendor_name(&dev.vendor_id)
                .unwrap_or("unknown")
                .to_string()
        } else {
            dev.vendor_name.clone()
        };
        let model = if dev.device_name.is_empty() {
            dev.device_id.to_ascii_lowercase()
        } else {
            dev.device_name.clone()
        };
        *groups.entry((vendor, model)).or_default() += 1;
    }
    groups
        .into_iter()
        .map(|((vendor, model), count)| GpuSummary {
            vendor,
            model,
            count,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(vendor: &str, device: &str, class: &str, name: &str) -> PciDevice {
        PciDevice {
            address: String::new(),
            vendor_id: vendor.into(),
            device_id: device.into(),
            class_id: class.into(),
            vendor_name: String::new(),
            device_name: name.into(),
        }
    }

    #[test]
    fn gpus_are_grouped_and_bmc_vga_is_ignored() {
        let devices = vec![
            dev("10de", "2330", "030200", "H100 SXM5 80GB"),
            dev("10de", "2330", "030200", "H100 SXM5 80GB"),
            dev("1a03", "2000", "030000", "ASPEED Graphics Family"),
            dev("8086", "1572", "020000", "X710 10GbE"),
            dev("1002", "740f", "120000", ""),
            dev("1234", "1111", "030000", "QEMU VGA"),
        ];
        let gpus = summarize_gpus(&devices);
        assert_eq!(
            gpus,
            vec![
                GpuSummary {
                    vendor: "AMD".into(),
                    model: "740f".into(),
                    count: 1
                },
                GpuSummary {
                    vendor: "NVIDIA".into(),
                    model: "H100 SXM5 80GB".into(),
                    count: 2
                },
            ]
        );
        let mut hw = HardwareDetails {
            pci_devices: devices,
            ..Default::default()
        };
        hw.refresh_gpu_summary();
        assert_eq!(hw.gpu_count(), 3);
    }

    #[test]
    fn no_gpus_means_empty_summary() {
        assert!(summarize_gpus(&[dev("8086", "1572", "020000", "")]).is_empty());
    }
}
