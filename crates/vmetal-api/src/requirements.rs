//! Hardware requirements of a `Machine` and how a host's inspected hardware is checked against
//! them, including the "smallest host that fits" ordering the machine controller uses.
//!
//! Memory is a Kubernetes quantity (`64Gi`, `128G`, `512Mi`) parsed here without floating point.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::hardware::HardwareDetails;

/// Minimum hardware a `Machine` needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HardwareRequirements {
    /// Minimum number of logical CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cpus: Option<i32>,
    /// Minimum memory as a quantity (`64Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_memory: Option<Quantity>,
    /// GPUs needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<GpuRequirement>,
}

/// GPUs a `Machine` needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuRequirement {
    /// How many GPUs (of the given vendor/model, if set).
    pub count: i32,
    /// Vendor, case-insensitive (`NVIDIA`, `AMD`, `Intel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Model substring, case-insensitive (`H100` matches `H100 SXM5 80GB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Why a requirement could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementsError {
    /// A memory quantity is malformed.
    #[error(
        "memory quantity {value:?} is not valid: use an integer with an optional suffix \
         (Ki, Mi, Gi, Ti, Pi, k, M, G, T, P), e.g. 64Gi"
    )]
    InvalidQuantity {
        /// The quantity as given.
        value: String,
    },
    /// A count is negative.
    #[error("{field} is {value}; it must be zero or more")]
    Negative {
        /// Which field.
        field: &'static str,
        /// The value given.
        value: i64,
    },
}

/// One way a host falls short of the requirements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shortfall {
    /// The host was never inspected, so nothing is known about it.
    NotInspected,
    /// Too few CPUs.
    Cpus {
        /// Needed.
        needed: i64,
        /// Present.
        found: i64,
    },
    /// Too little memory (MiB).
    Memory {
        /// Needed, MiB.
        needed_mib: i64,
        /// Present, MiB.
        found_mib: i64,
    },
    /// Too few matching GPUs.
    Gpus {
        /// Needed.
        needed: i64,
        /// Matching GPUs present.
        found: i64,
    },
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotInspected => f.write_str("no hardware details (host not inspected)"),
            Self::Cpus { needed, found } => write!(f, "needs {needed} CPUs, has {found}"),
            Self::Memory {
                needed_mib,
                found_mib,
            } => write!(f, "needs {needed_mib} MiB memory, has {found_mib} MiB"),
            Self::Gpus { needed, found } => {
                write!(f, "needs {needed} matching GPUs, has {found}")
            }
        }
    }
}

/// Parse a Kubernetes quantity into bytes (binary and decimal suffixes, integer values only,
/// plus decimal fractions like `1.5Gi` that land on whole bytes).
pub fn parse_quantity_bytes(q: &str) -> Result<i64, RequirementsError> {
    let invalid = || RequirementsError::InvalidQuantity {
        value: q.to_string(),
    };
    let s = q.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let multiplier: i128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return Err(invalid()),
    };
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(invalid());
    }
    if frac_part.len() > 9 {
        return Err(invalid());
    }
    let int: i128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().map_err(|_| invalid())?
    };
    let frac: i128 = if frac_part.is_empty() {
        0
    } else {
        frac_part.parse().map_err(|_| invalid())?
    };
    let scale = 10i128.pow(frac_part.len() as u32);
    let total = int
        .checked_mul(multiplier)
        .and_then(|v| v.checked_add(frac * multiplier / scale))
        .ok_or_else(invalid)?;
    i64::try_from(total).map_err(|_| invalid())
}

impl HardwareRequirements {
    /// Check the requirements themselves are well formed.
    pub fn validate(&self) -> Result<(), RequirementsError> {
        if let Some(c) = self.min_cpus
            && c < 0
        {
            return Err(RequirementsError::Negative {
                field: "spec.requirements.minCpus",
                value: i64::from(c),
            });
        }
        if let Some(g) = &self.gpus
            && g.count < 0
        {
            return Err(RequirementsError::Negative {
                field: "spec.requirements.gpus.count",
                value: i64::from(g.count),
            });
        }
        if let Some(m) = &self.min_memory {
            parse_quantity_bytes(&m.0)?;
        }
        Ok(())
    }

    /// Whether nothing is required.
    pub fn is_empty(&self) -> bool {
        self.min_cpus.unwrap_or(0) <= 0
            && self.min_memory.is_none()
            && self.gpus.as_ref().is_none_or(|g| g.count <= 0)
    }

    /// Every way `hardware` falls short; empty means the host fits.
    pub fn shortfalls(
        &self,
        hardware: Option<&HardwareDetails>,
    ) -> Result<Vec<Shortfall>, RequirementsError> {
        self.validate()?;
        if self.is_empty() {
            return Ok(Vec::new());
        }
        let Some(hw) = hardware else {
            return Ok(vec![Shortfall::NotInspected]);
        };
        let mut out = Vec::new();
        if let Some(needed) = self.min_cpus.map(i64::from)
            && hw.cpu_count() < needed
        {
            out.push(Shortfall::Cpus {
                needed,
                found: hw.cpu_count(),
            });
        }
        if let Some(q) = &self.min_memory {
            let needed_bytes = parse_quantity_bytes(&q.0)?;
            // Round up: 1 byte over a MiB boundary still needs that MiB.
            let needed_mib = (needed_bytes + (1 << 20) - 1) >> 20;
            if hw.ram_mebibytes < needed_mib {
                out.push(Shortfall::Memory {
                    needed_mib,
                    found_mib: hw.ram_mebibytes,
                });
            }
        }
        if let Some(g) = &self.gpus
            && g.count > 0
        {
            let found = matching_gpus(g, hw);
            if found < i64::from(g.count) {
                out.push(Shortfall::Gpus {
                    needed: i64::from(g.count),
                    found,
                });
            }
        }
        Ok(out)
    }

    /// Whether `hardware` meets every requirement.
    pub fn fits(&self, hardware: Option<&HardwareDetails>) -> Result<bool, RequirementsError> {
        Ok(self.shortfalls(hardware)?.is_empty())
    }
}

fn matching_gpus(req: &GpuRequirement, hw: &HardwareDetails) -> i64 {
    hw.gpus
        .iter()
        .filter(|g| {
            req.vendor
                .as_deref()
                .is_none_or(|v| g.vendor.eq_ignore_ascii_case(v.trim()))
        })
        .filter(|g| {
            req.model.as_deref().is_none_or(|m| {
                g.model
                    .to_ascii_lowercase()
                    .contains(&m.trim().to_ascii_lowercase())
            })
        })
        .map(|g| i64::from(g.count))
        .sum()
}

/// Sort key for "smallest host that fits": fewest GPUs first (so GPU servers are kept for GPU
/// work), then fewest CPUs, then least memory; hosts without hardware details sort last. Ties
/// are broken by the caller (the machine controller uses the host name).
pub fn size_key(hardware: Option<&HardwareDetails>) -> (bool, i64, i64, i64) {
    match hardware {
        Some(hw) => (false, hw.gpu_count(), hw.cpu_count(), hw.ram_mebibytes),
        None => (true, 0, 0, 0),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::hardware::{Cpu, GpuSummary};

    fn hw(cpus: i32, ram_mib: i64, gpus: Vec<GpuSummary>) -> HardwareDetails {
        HardwareDetails {
            cpu: Some(Cpu {
                count: cpus,
                ..Default::default()
            }),
            ram_mebibytes: ram_mib,
            gpus,
            ..Default::default()
        }
    }

    fn h100(count: i32) -> GpuSummary {
        GpuSummary {
            vendor: "NVIDIA".into(),
            model: "H100 SXM5 80GB".into(),
            count,
        }
    }

    #[test]
    fn quantities() {
        for (q, bytes) in [
            ("64Gi", 64i64 << 30),
            ("512Mi", 512 << 20),
            ("1Ki", 1024),
            ("2G", 2_000_000_000),
            ("1.5Gi", 3 << 29),
            ("100", 100),
            (" 8Gi ", 8 << 30),
        ] {
            assert_eq!(parse_quantity_bytes(q).unwrap(), bytes, "{q}");
        }
        for bad in [
            "",
            "Gi",
            "1gi",
            "-1Gi",
            "1..2Gi",
            "12XB",
            "1e3",
            "99999999999999Ei",
        ] {
            assert!(
                matches!(
                    parse_quantity_bytes(bad),
                    Err(RequirementsError::InvalidQuantity { .. })
                ),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn empty_requirements_fit_even_uninspected_hosts() {
        let req = HardwareRequirements::default();
        assert!(req.fits(None).unwrap());
    }

    #[test]
    fn shortfalls_name_each_gap() {
        let req = HardwareRequirements {
            min_cpus: Some(32),
            min_memory: Some(Quantity("256Gi".into())),
            gpus: Some(GpuRequirement {
                count: 4,
                vendor: Some("nvidia".into()),
                model: Some("h100".into()),
            }),
        };
        let small = hw(16, 128 * 1024, vec![h100(2)]);
        let gaps = req.shortfalls(Some(&small)).unwrap();
        assert_eq!(
            gaps,
            vec![
                Shortfall::Cpus {
                    needed: 32,
                    found: 16
                },
                Shortfall::Memory {
                    needed_mib: 256 * 1024,
                    found_mib: 128 * 1024
                },
                Shortfall::Gpus {
                    needed: 4,
                    found: 2
                },
            ]
        );
        assert_eq!(gaps[0].to_string(), "needs 32 CPUs, has 16");
        let big = hw(64, 512 * 1024, vec![h100(8)]);
        assert!(req.fits(Some(&big)).unwrap());
        assert_eq!(req.shortfalls(None).unwrap(), vec![Shortfall::NotInspected]);
    }

    #[test]
    fn gpu_vendor_and_model_must_both_match() {
        let req = HardwareRequirements {
            gpus: Some(GpuRequirement {
                count: 1,
                vendor: Some("AMD".into()),
                model: None,
            }),
            ..Default::default()
        };
        assert!(!req.fits(Some(&hw(8, 1024, vec![h100(8)]))).unwrap());
        let req = HardwareRequirements {
            gpus: Some(GpuRequirement {
                count: 1,
                vendor: None,
                model: Some("A100".into()),
            }),
            ..Default::default()
        };
        assert!(!req.fits(Some(&hw(8, 1024, vec![h100(8)]))).unwrap());
    }

    #[test]
    fn memory_rounds_up_to_whole_mebibytes() {
        let req = HardwareRequirements {
            min_memory: Some(Quantity("1025Ki".into())),
            ..Default::default()
        };
        assert!(!req.fits(Some(&hw(1, 1, vec![]))).unwrap());
        assert!(req.fits(Some(&hw(1, 2, vec![]))).unwrap());
    }

    #[test]
    fn invalid_requirements_are_errors_not_mismatches() {
        let req = HardwareRequirements {
            min_cpus: Some(-1),
            ..Default::default()
        };
        assert!(matches!(
            req.fits(None),
            Err(RequirementsError::Negative { .. })
        ));
    }

    #[test]
    fn smallest_fit_prefers_cpu_only_hosts() {
        let gpu_box = hw(16, 64 * 1024, vec![h100(1)]);
        let big_cpu = hw(128, 1024 * 1024, vec![]);
        let small_cpu = hw(8, 32 * 1024, vec![]);
        let mut hosts = [Some(&gpu_box), None, Some(&big_cpu), Some(&small_cpu)];
        hosts.sort_by_key(|h| size_key(*h));
        assert_eq!(hosts[0], Some(&small_cpu));
        assert_eq!(hosts[1], Some(&big_cpu));
        assert_eq!(hosts[2], Some(&gpu_box));
        assert_eq!(hosts[3], None);
    }
}
