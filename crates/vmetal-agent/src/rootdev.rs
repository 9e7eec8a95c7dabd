//! Which disk the image goes to: Metal3/Ironic root device hint semantics over the inventory.
//!
//! `model`/`vendor` match as substrings, the other strings exactly; `minSizeGigabytes` is in GiB
//! (1024³ bytes, as Ironic counts disk sizes). Without hints the smallest disk of at least
//! 4 GiB wins, as in ironic-python-agent.

use vmetal_api::hardware::Storage;
use vmetal_api::host::RootDeviceHints;

use crate::error::AgentError;

const GIB: i64 = 1 << 30;
/// Disks smaller than this are never picked without hints (IPA's minimum).
const MIN_DEFAULT_ROOT_BYTES: i64 = 4 * GIB;

/// Pick the install disk among `disks` (inventory order) for `hints`.
///
/// With hints the first disk matching all of them wins; without, the smallest disk of at
/// least 4 GiB.
pub fn choose_root_device<'a>(
    disks: &'a [Storage],
    hints: Option<&RootDeviceHints>,
) -> Result<&'a Storage, AgentError> {
    let names = || {
        disks
            .iter()
            .map(|d| format!("{} ({} GiB)", d.name, d.size_bytes / GIB))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match hints.filter(|h| **h != RootDeviceHints::default()) {
        Some(h) => disks
            .iter()
            .find(|d| matches(d, h))
            .ok_or_else(|| AgentError::NoRootDevice {
                reason: format!("hints {} match none of [{}]", describe(h), names()),
            }),
        None => disks
            .iter()
            .filter(|d| d.size_bytes >= MIN_DEFAULT_ROOT_BYTES)
            .min_by_key(|d| d.size_bytes)
            .ok_or_else(|| AgentError::NoRootDevice {
                reason: format!(
                    "no hints given and no disk of at least 4 GiB in [{}]",
                    names()
                ),
            }),
    }
}

/// Whether `disk` satisfies every hint that is set.
fn matches(disk: &Storage, h: &RootDeviceHints) -> bool {
    let exact = |hint: &str, value: &str| hint.is_empty() || hint == value;
    let contains = |hint: &str, value: &str| hint.is_empty() || value.contains(hint);
    let device_name = h.device_name.is_empty()
        || disk.name == h.device_name
        || disk.alternate_names.contains(&h.device_name);
    device_name
        && exact(&h.hctl, &disk.hctl)
        && contains(&h.model, &disk.model)
        && contains(&h.vendor, &disk.vendor)
        && exact(&h.serial_number, &disk.serial_number)
        && exact(&h.wwn, &disk.wwn)
        && exact(&h.wwn_with_extension, &disk.wwn_with_extension)
        && exact(&h.wwn_vendor_extension, &disk.wwn_vendor_extension)
        && h.min_size_gigabytes
            .is_none_or(|min| disk.size_bytes / GIB >= min)
        && h.rotational.is_none_or(|r| r == disk.rotational)
}

/// The hints that are set, for error messages (`model=~"Samsung", minSizeGigabytes>=100`).
fn describe(h: &RootDeviceHints) -> String {
    let mut parts = Vec::new();
    let mut s = |name: &str, op: &str, v: &str| {
        if !v.is_empty() {
            parts.push(format!("{name}{op}{v:?}"));
        }
    };
    s("deviceName", "=", &h.device_name);
    s("hctl", "=", &h.hctl);
    s("model", "~", &h.model);
    s("vendor", "~", &h.vendor);
    s("serialNumber", "=", &h.serial_number);
    s("wwn", "=", &h.wwn);
    s("wwnWithExtension", "=", &h.wwn_with_extension);
    s("wwnVendorExtension", "=", &h.wwn_vendor_extension);
    if let Some(min) = h.min_size_gigabytes {
        parts.push(format!("minSizeGigabytes>={min}"));
    }
    if let Some(r) = h.rotational {
        parts.push(format!("rotational={r}"));
    }
    parts.join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn disk(name: &str, gib: i64, rotational: bool, model: &str, serial: &str) -> Storage {
        Storage {
            name: name.into(),
            alternate_names: vec![format!("/dev/disk/by-path/pci-{serial}")],
            rotational,
            size_bytes: gib * GIB,
            vendor: "ATA".into(),
            model: model.into(),
            serial_number: serial.into(),
            wwn: format!("0x5000{serial}"),
            hctl: format!("0:0:{}:0", name.len()),
            ..Default::default()
        }
    }

    fn disks() -> Vec<Storage> {
        vec![
            disk("/dev/sda", 2000, true, "ST2000NM", "HDD1"),
            disk("/dev/sdb", 2, false, "SATADOM 2G", "DOM1"),
            disk("/dev/sdc", 480, false, "Samsung SSD 860", "SSD1"),
            disk("/dev/nvme0n1", 960, false, "Samsung PM9A3", "NVME1"),
        ]
    }

    #[test]
    fn hint_table() {
        let d = disks();
        let cases: Vec<(&str, RootDeviceHints, Option<&str>)> = vec![
            (
                "no hints: smallest of at least 4 GiB",
                RootDeviceHints::default(),
                Some("/dev/sdc"),
            ),
            (
                "model substring, first match",
                RootDeviceHints {
                    model: "Samsung".into(),
                    ..Default::default()
                },
                Some("/dev/sdc"),
            ),
            (
                "model substring plus size",
                RootDeviceHints {
                    model: "Samsung".into(),
                    min_size_gigabytes: Some(500),
                    ..Default::default()
                },
                Some("/dev/nvme0n1"),
            ),
            (
                "rotational",
                RootDeviceHints {
                    rotational: Some(true),
                    ..Default::default()
                },
                Some("/dev/sda"),
            ),
            (
                "serial is exact",
                RootDeviceHints {
                    serial_number: "SSD".into(),
                    ..Default::default()
                },
                None,
            ),
            (
                "serial exact match",
                RootDeviceHints {
                    serial_number: "NVME1".into(),
                    ..Default::default()
                },
                Some("/dev/nvme0n1"),
            ),
            (
                "device name",
                RootDeviceHints {
                    device_name: "/dev/sdb".into(),
                    ..Default::default()
                },
                Some("/dev/sdb"),
            ),
            (
                "alternate name",
                RootDeviceHints {
                    device_name: "/dev/disk/by-path/pci-SSD1".into(),
                    ..Default::default()
                },
                Some("/dev/sdc"),
            ),
            (
                "vendor substring",
                RootDeviceHints {
                    vendor: "AT".into(),
                    ..Default::default()
                },
                Some("/dev/sda"),
            ),
            (
                "wwn exact",
                RootDeviceHints {
                    wwn: "0x5000HDD1".into(),
                    ..Default::default()
                },
                Some("/dev/sda"),
            ),
            (
                "hctl exact",
                RootDeviceHints {
                    hctl: "0:0:12:0".into(),
                    ..Default::default()
                },
                Some("/dev/nvme0n1"),
            ),
            (
                "size in GiB: 960 GiB disk satisfies 960",
                RootDeviceHints {
                    min_size_gigabytes: Some(960),
                    ..Default::default()
                },
                Some("/dev/sda"),
            ),
            (
                "too big",
                RootDeviceHints {
                    min_size_gigabytes: Some(4000),
                    ..Default::default()
                },
                None,
            ),
        ];
        for (what, hints, want) in cases {
            let got = choose_root_device(&d, Some(&hints))
                .ok()
                .map(|s| s.name.as_str());
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn no_suitable_disk_names_the_disks() {
        let d = vec![disk("/dev/sdb", 2, false, "SATADOM", "DOM1")];
        let err = choose_root_device(&d, None).unwrap_err();
        assert!(err.to_string().contains("/dev/sdb (2 GiB)"), "{err}");
        let h = RootDeviceHints {
            model: "Intel".into(),
            ..Default::default()
        };
        let err = choose_root_device(&d, Some(&h)).unwrap_err();
        assert!(err.to_string().contains(r#"model~"Intel""#), "{err}");
    }
}
