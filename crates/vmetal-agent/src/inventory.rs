//! Hardware inventory from `/proc` and `/sys` under a root path, so tests and simulated servers
//! can point it at a fixture tree instead of the real `/`.
//!
//! Memory is reported as `MemTotal` rounded up to the next GiB: the kernel keeps a few hundred
//! MiB for itself, and users ask for "32 GiB" machines, not 32 318 MiB ones.

use std::fs;
use std::path::{Path, PathBuf};

use vmetal_api::hardware::{
    Bios, Cpu, DiskType, Firmware, HardwareDetails, HardwareSystemVendor, Nic, PciDevice, Storage,
};

use crate::error::AgentError;

/// Block devices that are never install targets.
const SKIPPED_BLOCK_PREFIXES: [&str; 6] = ["loop", "ram", "zram", "dm-", "sr", "md"];

/// Collect the inventory of the machine whose `/proc` and `/sys` live under `root`.
///
/// Missing files leave fields empty; only a root with neither `proc/cpuinfo` nor
/// `proc/meminfo` is an error (it is not a Linux root at all).
pub fn collect(root: &Path) -> Result<HardwareDetails, AgentError> {
    let cpuinfo = read_trimmed(&root.join("proc/cpuinfo"));
    let meminfo = read_trimmed(&root.join("proc/meminfo"));
    if cpuinfo.is_none() && meminfo.is_none() {
        return Err(AgentError::Inventory {
            root: root.to_path_buf(),
            reason: "neither proc/cpuinfo nor proc/meminfo exists".into(),
        });
    }
    let arch = read_trimmed(&root.join("proc/sys/kernel/arch"));
    let mut details = HardwareDetails {
        system_vendor: system_vendor(root),
        firmware: firmware(root),
        ram_mebibytes: meminfo.as_deref().map_or(0, ram_mebibytes),
        nics: nics(root),
        storage: disks(root),
        cpu: cpuinfo.as_deref().map(|c| cpu(c, arch.as_deref())),
        hostname: read_trimmed(&root.join("proc/sys/kernel/hostname")).unwrap_or_default(),
        pci_devices: pci_devices(root),
        gpus: Vec::new(),
    };
    details.refresh_gpu_summary();
    Ok(details)
}

/// File contents without surrounding whitespace; `None` when missing, unreadable or empty.
fn read_trimmed(path: &Path) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Sorted names of the entries of a directory (empty when missing).
fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Parse `/proc/cpuinfo`; `kernel_arch` is `/proc/sys/kernel/arch` when present.
fn cpu(cpuinfo: &str, kernel_arch: Option<&str>) -> Cpu {
    let mut count = 0;
    let mut model = String::new();
    let mut flags: Vec<String> = Vec::new();
    let mut mhz = None;
    let mut arm = false;
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => count += 1,
            "model name" | "Model" | "cpu model" if model.is_empty() => model = value.into(),
            "flags" | "Features" if flags.is_empty() => {
                arm = key == "Features";
                flags = value.split_whitespace().map(String::from).collect();
            }
            "cpu MHz" if mhz.is_none() => mhz = value.parse::<f64>().ok(),
            _ => {}
        }
    }
    flags.sort();
    flags.dedup();
    let arch = match kernel_arch {
        Some(a) => a.to_string(),
        None if arm => "aarch64".into(),
        None if flags.iter().any(|f| f == "lm") => "x86_64".into(),
        None => std::env::consts::ARCH.into(),
    };
    Cpu {
        arch,
        model,
        clock_megahertz: mhz,
        flags,
        count,
    }
}

/// A `/proc/meminfo` field (`MemTotal`, `MemAvailable`, ...) in KiB.
pub(crate) fn meminfo_kib(meminfo: &str, field: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
}

/// `MemTotal` (kB) rounded up to a whole GiB, in MiB.
fn ram_mebibytes(meminfo: &str) -> i64 {
    let kib = meminfo_kib(meminfo, "MemTotal").unwrap_or(0);
    let mib = kib.div_ceil(1024);
    i64::try_from(mib.div_ceil(1024) * 1024).unwrap_or(i64::MAX)
}

fn system_vendor(root: &Path) -> Option<HardwareSystemVendor> {
    let dmi = root.join("sys/class/dmi/id");
    let v = HardwareSystemVendor {
        manufacturer: read_trimmed(&dmi.join("sys_vendor")).unwrap_or_default(),
        product_name: read_trimmed(&dmi.join("product_name")).unwrap_or_default(),
        serial_number: read_trimmed(&dmi.join("product_serial")).unwrap_or_default(),
    };
    (v != HardwareSystemVendor::default()).then_some(v)
}

fn firmware(root: &Path) -> Option<Firmware> {
    let dmi = root.join("sys/class/dmi/id");
    let bios = Bios {
        date: read_trimmed(&dmi.join("bios_date")).unwrap_or_default(),
        vendor: read_trimmed(&dmi.join("bios_vendor")).unwrap_or_default(),
        version: read_trimmed(&dmi.join("bios_version")).unwrap_or_default(),
    };
    (bios != Bios::default()).then_some(Firmware { bios })
}

/// Physical NICs: those with a `device` link (virtual ones and `lo` have none).
fn nics(root: &Path) -> Vec<Nic> {
    let net = root.join("sys/class/net");
    let mut out = Vec::new();
    for name in dir_names(&net) {
        let dir = net.join(&name);
        if name == "lo" || fs::symlink_metadata(dir.join("device")).is_err() {
            continue;
        }
        let dev = nic_function(&dir.join("device"));
        let pci_address = dev
            .as_deref()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .map(String::from)
            .or_else(|| link_name(&dir.join("device")))
            .unwrap_or_default();
        let dev = dev.unwrap_or_else(|| dir.join("device"));
        let vendor = read_trimmed(&dev.join("vendor"));
        let device = read_trimmed(&dev.join("device"));
        let model = match (vendor, device) {
            (Some(v), Some(d)) => format!("{v} {d}"),
            _ => String::new(),
        };
        // `speed` is -1 or unreadable without link; Mbps otherwise.
        let speed_mbps = read_trimmed(&dir.join("speed"))
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(0);
        out.push(Nic {
            name,
            model,
            mac: read_trimmed(&dir.join("address"))
                .unwrap_or_default()
                .to_ascii_lowercase(),
            speed_gbps: i32::try_from(speed_mbps.max(0) / 1000).unwrap_or(0),
            pci_address,
            ..Default::default()
        });
    }
    out
}

/// The PCI function behind a NIC's `device` link. A virtio NIC's link names the virtio bus
/// device (`virtio0`), whose parent is the PCI function with the vendor and device ids.
fn nic_function(link: &Path) -> Option<PathBuf> {
    let dev = fs::canonicalize(link).ok()?;
    let is_virtio = dev
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("virtio"));
    match dev.parent() {
        Some(parent) if is_virtio && parent.join("vendor").is_file() => Some(parent.to_path_buf()),
        _ => Some(dev),
    }
}

/// The last component of a symlink's target (`../../0000:00:03.0` → `0000:00:03.0`).
fn link_name(link: &Path) -> Option<String> {
    let target: PathBuf = fs::read_link(link).ok()?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .map(String::from)
}

fn disks(root: &Path) -> Vec<Storage> {
    let block = root.join("sys/block");
    let mut out = Vec::new();
    for name in dir_names(&block) {
        if SKIPPED_BLOCK_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dir = block.join(&name);
        let sectors = read_trimmed(&dir.join("size"))
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(0);
        if sectors == 0 {
            continue;
        }
        let rotational = read_trimmed(&dir.join("queue/rotational")).as_deref() == Some("1");
        let disk_type = if name.starts_with("nvme") {
            DiskType::Nvme
        } else if rotational {
            DiskType::Hdd
        } else {
            DiskType::Ssd
        };
        let hctl = link_name(&dir.join("device"))
            .filter(|n| n.split(':').count() == 4 && n.split(':').all(|p| p.parse::<u32>().is_ok()))
            .unwrap_or_default();
        let field = |f: &str| read_trimmed(&dir.join("device").join(f)).unwrap_or_default();
        out.push(Storage {
            name: format!("/dev/{name}"),
            rotational,
            disk_type: Some(disk_type),
            size_bytes: sectors.saturating_mul(512),
            vendor: field("vendor"),
            model: field("model"),
            serial_number: field("serial"),
            wwn: field("wwid"),
            hctl,
            ..Default::default()
        });
    }
    out
}

fn pci_devices(root: &Path) -> Vec<PciDevice> {
    let pci = root.join("sys/bus/pci/devices");
    let mut out = Vec::new();
    for address in dir_names(&pci) {
        let dir = pci.join(&address);
        let (Some(vendor), Some(device)) = (
            read_trimmed(&dir.join("vendor")),
            read_trimmed(&dir.join("device")),
        ) else {
            continue;
        };
        let class = read_trimmed(&dir.join("class")).unwrap_or_default();
        out.push(pci_device_from_ids(&address, &vendor, &device, &class));
    }
    out
}

/// A [`PciDevice`] from raw sysfs ids (`0x10de`), normalised and named where known.
pub(crate) fn pci_device_from_ids(
    address: &str,
    vendor: &str,
    device: &str,
    class: &str,
) -> PciDevice {
    let vendor_id = hex_id(vendor, 4);
    let device_id = hex_id(device, 4);
    let (vendor_name, device_name) = known_pci_names(&vendor_id, &device_id);
    PciDevice {
        address: address.to_string(),
        class_id: hex_id(class, 6),
        vendor_id,
        device_id,
        vendor_name: vendor_name.into(),
        device_name: device_name.into(),
    }
}

/// `0x10DE` → `10de`, zero-padded to `width` digits.
fn hex_id(raw: &str, width: usize) -> String {
    let s = raw.trim().trim_start_matches("0x").to_ascii_lowercase();
    format!("{s:0>width$}")
}

/// Names for a few ids seen in the lab and in common servers; empty when unknown.
fn known_pci_names(vendor: &str, device: &str) -> (&'static str, &'static str) {
    let vendor_name = match vendor {
        "10de" => "NVIDIA",
        "1002" => "AMD",
        "8086" => "Intel",
        "15b3" => "Mellanox",
        "14e4" => "Broadcom",
        "1af4" => "Red Hat (virtio)",
        "1a03" => "ASPEED",
        "144d" => "Samsung",
        "1da3" => "Habana",
        _ => return ("", ""),
    };
    let device_name = match (vendor, device) {
        ("10de", "2330") => "H100 SXM5 80GB",
        ("10de", "2331") => "H100 PCIe",
        ("10de", "20b0") => "A100 SXM4 40GB",
        ("10de", "20b2") => "A100 SXM4 80GB",
        ("10de", "26b9") => "L40S",
        ("1002", "74a1") => "Instinct MI300X",
        ("8086", "1572") => "Ethernet Controller X710 for 10GbE SFP+",
        ("8086", "1592") => "Ethernet Controller E810-C for QSFP",
        ("15b3", "101d") => "ConnectX-6 Dx",
        ("1af4", "1000") => "Virtio network device",
        ("1a03", "2000") => "ASPEED Graphics Family",
        _ => "",
    };
    (vendor_name, device_name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_of_an_x86_host_is_parsed() {
        let info = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6338\ncpu MHz\t\t: 2000.000\nflags\t\t: fpu lm sse2\n\n\
                    processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Gold 6338\ncpu MHz\t\t: 2100.000\nflags\t\t: fpu lm sse2\n";
        let c = cpu(info, None);
        assert_eq!(c.count, 2);
        assert_eq!(c.model, "Intel(R) Xeon(R) Gold 6338");
        assert_eq!(c.clock_megahertz, Some(2000.0));
        assert_eq!(c.arch, "x86_64");
        assert_eq!(c.flags, vec!["fpu", "lm", "sse2"]);
    }

    #[test]
    fn arm_cpuinfo_gives_aarch64() {
        let info = "processor\t: 0\nFeatures\t: fp asimd\nCPU part\t: 0xd0c\n";
        assert_eq!(cpu(info, None).arch, "aarch64");
        assert_eq!(cpu(info, Some("riscv64")).arch, "riscv64");
    }

    #[test]
    fn memtotal_rounds_up_to_whole_gib() {
        assert_eq!(ram_mebibytes("MemTotal:       32617404 kB\n"), 32768);
        assert_eq!(ram_mebibytes("MemTotal:       1048576 kB\n"), 1024);
        assert_eq!(ram_mebibytes("nothing"), 0);
    }

    #[test]
    fn pci_ids_are_normalised() {
        assert_eq!(hex_id("0x10DE\n", 4), "10de");
        assert_eq!(hex_id("0x30200", 6), "030200");
    }

    #[test]
    fn a_root_without_proc_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = collect(dir.path()).unwrap_err();
        assert!(err.to_string().contains("proc/cpuinfo"));
    }

    #[test]
    fn only_meminfo_is_enough_and_missing_sys_is_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("proc")).unwrap();
        fs::write(dir.path().join("proc/meminfo"), "MemTotal: 2000000 kB\n").unwrap();
        let hw = collect(dir.path()).unwrap();
        assert_eq!(hw.ram_mebibytes, 2048);
        assert!(hw.cpu.is_none() && hw.nics.is_empty() && hw.storage.is_empty());
    }

    #[test]
    fn virtio_nics_report_their_pci_function() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let pci = root.join("sys/devices/pci0000:00/0000:00:03.0");
        fs::create_dir_all(pci.join("virtio0/net/eth0")).unwrap();
        fs::write(pci.join("vendor"), "0x1af4\n").unwrap();
        fs::write(pci.join("device"), "0x1000\n").unwrap();
        fs::write(pci.join("virtio0/vendor"), "0x1af4\n").unwrap();
        fs::write(pci.join("virtio0/device"), "0x0001\n").unwrap();
        let eth0 = pci.join("virtio0/net/eth0");
        fs::write(eth0.join("address"), "52:54:00:E2:E0:01\n").unwrap();
        std::os::unix::fs::symlink("../../../virtio0", eth0.join("device")).unwrap();
        fs::create_dir_all(root.join("sys/class/net")).unwrap();
        std::os::unix::fs::symlink(
            "../../devices/pci0000:00/0000:00:03.0/virtio0/net/eth0",
            root.join("sys/class/net/eth0"),
        )
        .unwrap();
        let nics = nics(root);
        assert_eq!(nics.len(), 1, "{nics:?}");
        assert_eq!(nics[0].mac, "52:54:00:e2:e0:01");
        assert_eq!(nics[0].model, "0x1af4 0x1000");
        assert_eq!(nics[0].pci_address, "0000:00:03.0");
    }
}
