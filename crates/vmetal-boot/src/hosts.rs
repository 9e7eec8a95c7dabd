//! The known-hosts set: which MACs may boot, in which provisioning state, with which address
//! reservation; built from BareMetalHosts and swapped atomically when they change.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use vmetal_api::mac::MacAddress;
use vmetal_api::{BareMetalHost, ProvisioningState};

use crate::error::BootError;

/// Annotation prefixes read for reservations: vmetal's own and vCluster vMetal's.
pub const ANNOTATION_PREFIXES: [&str; 2] = ["vmetal.io/", "metal3.vcluster.com/"];

/// A fixed address for a host, from its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The host's address.
    pub address: Ipv4Addr,
    /// Prefix length of its subnet (`/24`).
    pub prefix_len: u8,
    /// Default gateway (option 3).
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns_servers: Vec<Ipv4Addr>,
    /// NTP servers (option 42).
    pub ntp_servers: Vec<Ipv4Addr>,
}

impl Reservation {
    /// The subnet mask for `prefix_len`.
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::from(self.prefix_len.min(32));
        Ipv4Addr::from(u32::MAX.checked_shl(32 - bits).unwrap_or(0))
    }
}

/// One bootable host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownHost {
    /// `namespace/name` of the BareMetalHost.
    pub name: String,
    /// Its provisioning state.
    pub state: ProvisioningState,
    /// Its address reservation, when annotated.
    pub reservation: Option<Reservation>,
}

impl KnownHost {
    /// Whether the host should run the agent now (else its script boots the local disk).
    pub fn runs_agent(&self) -> bool {
        matches!(
            self.state,
            ProvisioningState::Inspecting
                | ProvisioningState::Provisioning
                | ProvisioningState::Deprovisioning
                | ProvisioningState::Preparing
        )
    }
}

/// MAC → host, for every MAC a BareMetalHost boots from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownHosts {
    by_mac: HashMap<MacAddress, KnownHost>,
}

impl KnownHosts {
    /// An empty set: nothing boots.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) one MAC.
    pub fn insert(&mut self, mac: MacAddress, host: KnownHost) {
        self.by_mac.insert(mac, host);
    }

    /// The host owning a MAC.
    pub fn get(&self, mac: &MacAddress) -> Option<&KnownHost> {
        self.by_mac.get(mac)
    }

    /// How many MACs are known.
    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    /// Whether no MAC is known.
    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }

    /// Builds the set from BareMetalHosts: `spec.bootMACAddress` and every inspected NIC.
    /// A host with an invalid annotation is still booted, without a reservation; the
    /// problems are returned so the caller can log them.
    pub fn from_hosts<'a>(
        hosts: impl IntoIterator<Item = &'a BareMetalHost>,
    ) -> (Self, Vec<BootError>) {
        let mut set = Self::new();
        let mut problems = Vec::new();
        for bmh in hosts {
            let name = format!(
                "{}/{}",
                bmh.metadata.namespace.as_deref().unwrap_or("default"),
                bmh.metadata.name.as_deref().unwrap_or("")
            );
            let reservation = match reservation_from(&name, bmh) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(e);
                    None
                }
            };
            let host = KnownHost {
                name,
                state: bmh.provisioning_state(),
                reservation,
            };
            let nic_macs = bmh
                .hardware()
                .map(|hw| hw.nics.iter().map(|n| n.mac.as_str()).collect::<Vec<_>>())
                .unwrap_or_default();
            // NICs first so the boot MAC wins if two hosts claim the same address.
            for mac in nic_macs
                .into_iter()
                .chain(std::iter::once(bmh.spec.boot_mac_address.as_str()))
            {
                if let Ok(mac) = MacAddress::parse(mac) {
                    set.insert(mac, host.clone());
                }
            }
        }
        (set, problems)
    }
}

fn annotation<'a>(bmh: &'a BareMetalHost, key: &str) -> Option<(String, &'a str)> {
    ANNOTATION_PREFIXES.iter().find_map(|prefix| {
        let full = format!("{prefix}{key}");
        bmh.annotations().get(&full).map(|v| (full, v.as_str()))
    })
}

fn invalid(host: &str, key: String, value: &str, reason: &'static str) -> BootError {
    BootError::InvalidAnnotation {
        host: host.to_owned(),
        key,
        value: value.to_owned(),
        reason,
    }
}

fn address_list(host: &str, key: String, value: &str) -> Result<Vec<Ipv4Addr>, BootError> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().map_err(|_| {
                invalid(
                    host,
                    key.clone(),
                    value,
                    "expected IPv4 addresses separated by commas",
                )
            })
        })
        .collect()
}

/// The reservation from `ip-address` (CIDR), `gateway`, `dns-servers`, `ntp-servers`.
fn reservation_from(host: &str, bmh: &BareMetalHost) -> Result<Option<Reservation>, BootError> {
    let Some((key, cidr)) = annotation(bmh, "ip-address") else {
        return Ok(None);
    };
    let (address, prefix_len) = parse_cidr(cidr).ok_or_else(|| {
        invalid(
            host,
            key,
            cidr,
            "expected an IPv4 address with a prefix, like 10.0.0.5/24",
        )
    })?;
    let gateway = match annotation(bmh, "gateway") {
        Some((key, v)) => Some(
            v.trim()
                .parse()
                .map_err(|_| invalid(host, key, v, "expected one IPv4 address"))?,
        ),
        None => None,
    };
    let dns_servers = match annotation(bmh, "dns-servers") {
        Some((key, v)) => address_list(host, key, v)?,
        None => Vec::new(),
    };
    let ntp_servers = match annotation(bmh, "ntp-servers") {
        Some((key, v)) => address_list(host, key, v)?,
        None => Vec::new(),
    };
    Ok(Some(Reservation {
        address,
        prefix_len,
        gateway,
        dns_servers,
        ntp_servers,
    }))
}

/// `10.0.0.5/24` → (10.0.0.5, 24); a bare address means /32... which no DHCP client can use,
/// so the prefix is required.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = s.trim().split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    (1..=32)
        .contains(&prefix)
        .then_some(())
        .and_then(|()| Some((addr.parse().ok()?, prefix)))
}

/// The live known-hosts set shared between the watch and the servers.
#[derive(Debug, Clone, Default)]
pub struct HostsHandle(Arc<RwLock<Arc<KnownHosts>>>);

impl HostsHandle {
    /// A handle holding `hosts`.
    pub fn new(hosts: KnownHosts) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(hosts))))
    }

    /// The current set; cheap, and consistent for the whole of one request.
    pub fn snapshot(&self) -> Arc<KnownHosts> {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the set.
    pub fn replace(&self, hosts: KnownHosts) {
        let hosts = Arc::new(hosts);
        match self.0.write() {
            Ok(mut guard) => *guard = hosts,
            Err(poisoned) => *poisoned.into_inner() = hosts,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bmh(annotations: serde_json::Value) -> BareMetalHost {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "metal3.io/v1alpha1",
            "kind": "BareMetalHost",
            "metadata": {"name": "s1", "namespace": "rack", "annotations": annotations},
            "spec": {"bootMACAddress": "52-54-00-AA-BB-01"},
            "status": {"provisioning": {"state": "inspecting"},
                       "hardware": {"nics": [{"mac": "52:54:00:aa:bb:02"}]}}
        }))
        .unwrap()
    }

    #[test]
    fn boot_mac_and_nics_with_vmetal_or_vcluster_annotations() {
        for prefix in ANNOTATION_PREFIXES {
            let (set, problems) = KnownHosts::from_hosts([&bmh(serde_json::json!({
                format!("{prefix}ip-address"): "10.9.0.5/24",
                format!("{prefix}gateway"): "10.9.0.1",
                format!("{prefix}dns-servers"): "10.9.0.2, 10.9.0.3",
                format!("{prefix}ntp-servers"): "10.9.0.4",
            }))]);
            assert!(problems.is_empty());
            assert_eq!(set.len(), 2);
            let host = set
                .get(&MacAddress::parse("52:54:00:aa:bb:02").unwrap())
                .unwrap();
            assert_eq!(host.name, "rack/s1");
            assert!(host.runs_agent());
            let r = host.reservation.as_ref().unwrap();
            assert_eq!(r.address, Ipv4Addr::new(10, 9, 0, 5));
            assert_eq!(r.netmask(), Ipv4Addr::new(255, 255, 255, 0));
            assert_eq!(r.gateway, Some(Ipv4Addr::new(10, 9, 0, 1)));
            assert_eq!(r.dns_servers.len(), 2);
            assert_eq!(r.ntp_servers, vec![Ipv4Addr::new(10, 9, 0, 4)]);
        }
    }

    #[test]
    fn invalid_annotation_is_reported_and_host_still_known() {
        let (set, problems) = KnownHosts::from_hosts([&bmh(
            serde_json::json!({"vmetal.io/ip-address": "10.9.0.5"}),
        )]);
        assert_eq!(set.len(), 2);
        assert_eq!(problems.len(), 1);
        let msg = problems[0].to_string();
        assert!(
            msg.contains("rack/s1") && msg.contains("vmetal.io/ip-address"),
            "{msg}"
        );
    }
}
