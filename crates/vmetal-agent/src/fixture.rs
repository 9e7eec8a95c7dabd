//! Fake `/proc` and `/sys` trees for tests and simulated servers: [`write_tree`] writes exactly
//! what [`crate::inventory::collect`] reads, and [`expected_details`] says what it will find.

use std::fs;
use std::io;
use std::path::Path;

use vmetal_api::hardware::{
    Bios, Cpu, DiskType, Firmware, HardwareDetails, HardwareSystemVendor, Nic, PciDevice, Storage,
};

/// The hardware of one fake machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureSpec {
    /// Logical CPUs.
    pub cpus: u32,
    /// CPU model name.
    pub cpu_model: String,
    /// Installed memory in MiB (a whole number of GiB round-trips exactly).
    pub ram_mib: u64,
    /// NICs: (name, MAC, speed in Gbps).
    pub nics: Vec<(String, String, u32)>,
    /// Disks: (kernel name like `sda`/`nvme0n1`, size in bytes, rotational, model, serial).
    pub disks: Vec<(String, u64, bool, String, String)>,
    /// GPUs: (PCI vendor id, device id, name), hex ids without `0x`.
    pub gpus: Vec<(String, String, String)>,
    /// DMI system manufacturer.
    pub manufacturer: String,
    /// DMI product name.
    pub product: String,
    /// DMI serial number.
    pub serial: String,
    /// BIOS version.
    pub bios_version: String,
}

/// Memory the fake kernel keeps for itself, so `MemTotal` is below the installed size.
const KERNEL_RESERVED_KIB: u64 = 180 * 1024;
const BIOS_VENDOR: &str = "vmetal";
const BIOS_DATE: &str = "01/01/2026";
const NIC_PCI: (&str, &str, &str) = ("8086", "1572", "020000");
const BMC_VGA: (&str, &str, &str, &str) = ("0000:02:00.0", "1a03", "2000", "030000");

fn nic_pci_address(i: usize) -> String {
    format!("0000:{:02x}:00.0", 0x18 + i)
}

fn gpu_pci_address(i: usize) -> String {
    format!("0000:{:02x}:00.0", 0x40 + i)
}

/// Write the tree for `spec` under `root` (creating directories as needed).
pub fn write_tree(spec: &FixtureSpec, root: &Path) -> io::Result<()> {
    let w = |rel: &str, content: &str| -> io::Result<()> {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(path, format!("{content}\n"))
    };

    let mut cpuinfo = String::new();
    for n in 0..spec.cpus {
        cpuinfo.push_str(&format!(
            "processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: {}\ncpu MHz\t\t: 2400.000\nflags\t\t: fpu vme lm sse2 avx2\n\n",
            spec.cpu_model
        ));
    }
    w("proc/cpuinfo", &cpuinfo)?;
    w("proc/sys/kernel/arch", "x86_64")?;
    let mem_kib = (spec.ram_mib * 1024).saturating_sub(KERNEL_RESERVED_KIB);
    w(
        "proc/meminfo",
        &format!("MemTotal:       {mem_kib} kB\nMemFree:        {mem_kib} kB"),
    )?;
    w("proc/sys/kernel/hostname", "localhost")?;

    w("sys/class/dmi/id/sys_vendor", &spec.manufacturer)?;
    w("sys/class/dmi/id/product_name", &spec.product)?;
    w("sys/class/dmi/id/product_serial", &spec.serial)?;
    w("sys/class/dmi/id/bios_vendor", BIOS_VENDOR)?;
    w("sys/class/dmi/id/bios_version", &spec.bios_version)?;
    w("sys/class/dmi/id/bios_date", BIOS_DATE)?;

    let pci_dev = |addr: &str, vendor: &str, device: &str, class: &str| -> io::Result<()> {
        let base = format!("sys/bus/pci/devices/{addr}");
        w(&format!("{base}/vendor"), &format!("0x{vendor}"))?;
        w(&format!("{base}/device"), &format!("0x{device}"))?;
        w(&format!("{base}/class"), &format!("0x{class}"))
    };
    pci_dev(BMC_VGA.0, BMC_VGA.1, BMC_VGA.2, BMC_VGA.3)?;

    // A virtual interface without a device link, which the inventory must skip.
    w("sys/class/net/lo/address", "00:00:00:00:00:00")?;
    for (i, (name, mac, gbps)) in spec.nics.iter().enumerate() {
        let addr = nic_pci_address(i);
        pci_dev(&addr, NIC_PCI.0, NIC_PCI.1, NIC_PCI.2)?;
        w(&format!("sys/class/net/{name}/address"), mac)?;
        w(
            &format!("sys/class/net/{name}/speed"),
            &(gbps * 1000).to_string(),
        )?;
        let link = root.join(format!("sys/class/net/{name}/device"));
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("../../../bus/pci/devices/{addr}"), link)?;
        }
    }

    for (i, (vendor, device, _)) in spec.gpus.iter().enumerate() {
        pci_dev(&gpu_pci_address(i), vendor, device, "030200")?;
    }

    for (name, size, rotational, model, serial) in &spec.disks {
        let base = format!("sys/block/{name}");
        w(&format!("{base}/size"), &(size / 512).to_string())?;
        w(
            &format!("{base}/queue/rotational"),
            if *rotational { "1" } else { "0" },
        )?;
        w(&format!("{base}/device/model"), model)?;
        w(&format!("{base}/device/serial"), serial)?;
    }
    Ok(())
}

/// The inventory [`crate::inventory::collect`] returns for a tree written from `spec`.
pub fn expected_details(spec: &FixtureSpec) -> HardwareDetails {
    let nics = {
        let mut nics: Vec<(usize, &(String, String, u32))> = spec.nics.iter().enumerate().collect();
        nics.sort_by(|a, b| a.1.0.cmp(&b.1.0));
        nics.into_iter()
            .map(|(i, (name, mac, gbps))| Nic {
                name: name.clone(),
                model: format!("0x{} 0x{}", NIC_PCI.0, NIC_PCI.1),
                mac: mac.to_ascii_lowercase(),
                speed_gbps: i32::try_from(*gbps).unwrap_or(i32::MAX),
                pci_address: nic_pci_address(i),
                ..Default::default()
            })
            .collect()
    };
    let mut storage: Vec<Storage> = spec
        .disks
        .iter()
        .map(|(name, size, rotational, model, serial)| Storage {
            name: format!("/dev/{name}"),
            rotational: *rotational,
            disk_type: Some(if name.starts_with("nvme") {
                DiskType::Nvme
            } else if *rotational {
                DiskType::Hdd
            } else {
                DiskType::Ssd
            }),
            size_bytes: i64::try_from(size / 512 * 512).unwrap_or(i64::MAX),
            model: model.clone(),
            serial_number: serial.clone(),
            ..Default::default()
        })
        .collect();
    storage.sort_by(|a, b| a.name.cmp(&b.name));

    let mut pci_devices = vec![pci(BMC_VGA.0, BMC_VGA.1, BMC_VGA.2, BMC_VGA.3)];
    for i in 0..spec.nics.len() {
        pci_devices.push(pci(&nic_pci_address(i), NIC_PCI.0, NIC_PCI.1, NIC_PCI.2));
    }
    for (i, (vendor, device, _name)) in spec.gpus.iter().enumerate() {
        pci_devices.push(pci(&gpu_pci_address(i), vendor, device, "030200"));
    }
    pci_devices.sort_by(|a, b| a.address.cmp(&b.address));

    let mut flags: Vec<String> = ["fpu", "vme", "lm", "sse2", "avx2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    flags.sort();
    let mut hw = HardwareDetails {
        system_vendor: Some(HardwareSystemVendor {
            manufacturer: spec.manufacturer.clone(),
            product_name: spec.product.clone(),
            serial_number: spec.serial.clone(),
        }),
        firmware: Some(Firmware {
            bios: Bios {
                date: BIOS_DATE.into(),
                vendor: BIOS_VENDOR.into(),
                version: spec.bios_version.clone(),
            },
        }),
        ram_mebibytes: i64::try_from(spec.ram_mib.div_ceil(1024) * 1024).unwrap_or(i64::MAX),
        nics,
        storage,
        cpu: (spec.cpus > 0).then(|| Cpu {
            arch: "x86_64".into(),
            model: spec.cpu_model.clone(),
            clock_megahertz: Some(2400.0),
            flags,
            count: i32::try_from(spec.cpus).unwrap_or(i32::MAX),
        }),
        hostname: "localhost".into(),
        pci_devices,
        gpus: Vec::new(),
    };
    hw.refresh_gpu_summary();
    hw
}

/// A PCI device as the inventory reports it (names from the agent's table).
fn pci(address: &str, vendor: &str, device: &str, class: &str) -> PciDevice {
    crate::inventory::pci_device_from_ids(address, vendor, device, class)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec() -> FixtureSpec {
        FixtureSpec {
            cpus: 16,
            cpu_model: "AMD EPYC 7543".into(),
            ram_mib: 65536,
            nics: vec![
                ("eno2".into(), "52:54:00:00:00:02".into(), 25),
                ("eno1".into(), "52:54:00:00:00:01".into(), 10),
            ],
            disks: vec![
                (
                    "sda".into(),
                    480 << 30,
                    false,
                    "SSD 480".into(),
                    "S1".into(),
                ),
                (
                    "nvme0n1".into(),
                    1 << 40,
                    false,
                    "NVMe 1T".into(),
                    "N1".into(),
                ),
                ("sdb".into(), 4 << 40, true, "HDD 4T".into(), "H1".into()),
            ],
            gpus: vec![
                ("10de".into(), "2330".into(), "H100 SXM5 80GB".into()),
                ("10de".into(), "2330".into(), "H100 SXM5 80GB".into()),
            ],
            manufacturer: "vmetal".into(),
            product: "S1".into(),
            serial: "SER1".into(),
            bios_version: "1.2.3".into(),
        }
    }

    #[test]
    fn collect_reads_back_what_write_tree_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec();
        write_tree(&spec, dir.path()).unwrap();
        let hw = crate::inventory::collect(dir.path()).unwrap();
        assert_eq!(hw, expected_details(&spec));
        assert_eq!(hw.cpu_count(), 16);
        assert_eq!(hw.ram_mebibytes, 65536);
        assert_eq!(hw.gpu_count(), 2);
        assert_eq!(hw.gpus[0].model, "H100 SXM5 80GB");
        assert_eq!(hw.nics[0].mac, "52:54:00:00:00:01");
        assert_eq!(hw.storage.len(), 3);
        assert_eq!(hw.storage[0].disk_type, Some(DiskType::Nvme));
        // Writing twice (a reboot of a simulated server) is fine.
        write_tree(&spec, dir.path()).unwrap();
    }
}
