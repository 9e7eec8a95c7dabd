//! A varied, deterministic rack of simulated servers: CPUs, memory, NICs, disks and GPUs by
//! server index, with the identity the virtual BMCs report.

use vmetal_agent::FixtureSpec;

use crate::sim::ServerIdentity;

const GIB: u64 = 1 << 30;
const CPU_MODELS: [&str; 4] = [
    "Intel(R) Xeon(R) Silver 4314 CPU @ 2.40GHz",
    "AMD EPYC 7313 16-Core Processor",
    "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz",
    "AMD EPYC 9454 48-Core Processor",
];
const CPU_COUNTS: [u32; 5] = [8, 16, 32, 64, 128];
const RAM_GIB: [u64; 5] = [32, 64, 128, 256, 512];
const NIC_GBPS: [u32; 4] = [10, 25, 25, 100];
const GPU_COUNTS: [usize; 3] = [2, 4, 8];

/// The hardware of server `index` of the lab rack.
///
/// The first NIC's MAC is the identity's `boot_mac`; other NICs differ in the third octet.
/// Every server has at least one disk of 8 GiB or more (disk files are sparse), and every
/// fourth server (index 3, 7, ...) has NVIDIA H100 GPUs.
pub fn lab_spec(index: u32) -> FixtureSpec {
    let id = ServerIdentity::numbered(index);
    let i = index as usize;
    let nics = (0..1 + i % 4)
        .map(|n| {
            let mac = if n == 0 {
                id.boot_mac.clone()
            } else {
                format!(
                    "52:54:{n:02x}:{:02x}:{:02x}:{:02x}",
                    (index >> 16) & 0xff,
                    (index >> 8) & 0xff,
                    index & 0xff
                )
            };
            (format!("eno{}", n + 1), mac, NIC_GBPS[n])
        })
        .collect();
    let serial = |kind: &str, n: usize| format!("{kind}{:06}{n}", index + 1);
    let disk = |n: usize| -> (String, u64, bool, String, String) {
        match (i + n) % 3 {
            0 => (
                format!("sd{}", (b'a' + n as u8) as char),
                480 * GIB,
                false,
                "Micron 5300 PRO".into(),
                serial("SSD", n),
            ),
            1 => (
                format!("nvme{n}n1"),
                960 * GIB,
                false,
                "Samsung PM9A3".into(),
                serial("NVME", n),
            ),
            _ => (
                format!("sd{}", (b'a' + n as u8) as char),
                4096 * GIB,
                true,
                "Seagate Exos 7E10".into(),
                serial("HDD", n),
            ),
        }
    };
    let gpus = if index % 4 == 3 {
        let count = GPU_COUNTS[(i / 4) % GPU_COUNTS.len()];
        vec![
            (
                "10de".to_string(),
                "2330".to_string(),
                "H100 SXM5 80GB".to_string()
            );
            count
        ]
    } else {
        Vec::new()
    };
    FixtureSpec {
        cpus: CPU_COUNTS[i % CPU_COUNTS.len()],
        cpu_model: CPU_MODELS[i % CPU_MODELS.len()].into(),
        ram_mib: RAM_GIB[(i / 2) % RAM_GIB.len()] * 1024,
        nics,
        disks: (0..1 + i % 3).map(disk).collect(),
        gpus,
        manufacturer: id.manufacturer,
        product: id.model,
        serial: id.serial_number,
        bios_version: id.bios_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rack_is_varied_and_deterministic() {
        let specs: Vec<FixtureSpec> = (0..12).map(lab_spec).collect();
        assert_eq!(specs, (0..12).map(lab_spec).collect::<Vec<_>>());
        for (i, s) in specs.iter().enumerate() {
            let id = ServerIdentity::numbered(i as u32);
            assert_eq!(s.nics[0].1, id.boot_mac);
            assert_eq!(s.serial, id.serial_number);
            assert!(s.disks.iter().any(|d| d.1 >= 8 * GIB));
            assert_eq!(!s.gpus.is_empty(), i % 4 == 3);
            let mut names: Vec<&String> = s.disks.iter().map(|d| &d.0).collect();
            names.dedup();
            assert_eq!(names.len(), s.disks.len());
        }
        let distinct = |f: fn(&FixtureSpec) -> String| {
            let mut v: Vec<String> = specs.iter().map(f).collect();
            v.sort();
            v.dedup();
            v.len()
        };
        assert!(distinct(|s| s.cpus.to_string()) >= 4);
        assert!(distinct(|s| s.ram_mib.to_string()) >= 4);
        assert!(distinct(|s| s.nics.len().to_string()) == 4);
        assert!(distinct(|s| s.disks.len().to_string()) == 3);
        assert!(distinct(|s| s.gpus.len().to_string()) >= 3);
        let all_macs: Vec<&String> = specs
            .iter()
            .flat_map(|s| s.nics.iter().map(|n| &n.1))
            .collect();
        let mut unique = all_macs.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), all_macs.len());
    }
}
