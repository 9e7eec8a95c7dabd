//! Multus readiness: at start, the provisioning interface must exist in this network namespace
//! and carry the configured address, or the boot server exits saying what is missing.
//!
//! A pod started before Multus wrote its CNI configuration silently gets only the cluster
//! network; exiting makes the kubelet restart it until the attachment is there.

use std::net::IpAddr;

/// One network interface as the reader saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfInfo {
    /// Interface name (`net1`, `eth0`).
    pub name: String,
    /// Its IPv4 and IPv6 addresses.
    pub addresses: Vec<IpAddr>,
}

/// What is missing on the provisioning network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultusError {
    /// No interface of that name.
    #[error(
        "provisioning interface {interface} does not exist (this pod has: {present}); Multus has \
         not attached the provisioning network yet: check that Multus runs, that the \
         NetworkAttachmentDefinition exists in this namespace and that the pod annotation \
         k8s.v1.cni.cncf.io/networks names it with interface {interface}"
    )]
    InterfaceMissing {
        /// The interface wanted.
        interface: String,
        /// The interfaces there are, comma-separated.
        present: String,
    },
    /// The interface exists without the address.
    #[error(
        "provisioning interface {interface} does not carry {address} (it has: {found}); set the \
         address in the pod's k8s.v1.cni.cncf.io/networks annotation (\"ips\") to the same value \
         as --server-ip"
    )]
    AddressMissing {
        /// The interface.
        interface: String,
        /// The address wanted (`--server-ip`).
        address: IpAddr,
        /// The addresses it has, comma-separated.
        found: String,
    },
}

/// Pure: whether `want_if` is among `interfaces` and carries `want_addr`.
pub fn check(interfaces: &[IfInfo], want_if: &str, want_addr: IpAddr) -> Result<(), MultusError> {
    let Some(found) = interfaces.iter().find(|i| i.name == want_if) else {
        let mut names: Vec<&str> = interfaces.iter().map(|i| i.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        return Err(MultusError::InterfaceMissing {
            interface: want_if.to_string(),
            present: list_or_none(names.iter().map(|n| n.to_string())),
        });
    };
    if found.addresses.contains(&want_addr) {
        return Ok(());
    }
    Err(MultusError::AddressMissing {
        interface: want_if.to_string(),
        address: want_addr,
        found: list_or_none(found.addresses.iter().map(IpAddr::to_string)),
    })
}

fn list_or_none(items: impl Iterator<Item = String>) -> String {
    let all: Vec<String> = items.collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

/// The interfaces of this network namespace with their addresses (`getifaddrs`).
pub fn read_interfaces() -> std::io::Result<Vec<IfInfo>> {
    let mut out: Vec<IfInfo> = Vec::new();
    for entry in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let address = entry.address.as_ref().and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        });
        let index = match out.iter().position(|i| i.name == entry.interface_name) {
            Some(i) => i,
            None => {
                out.push(IfInfo {
                    name: entry.interface_name.clone(),
                    addresses: Vec::new(),
                });
                out.len() - 1
            }
        };
        if let Some(a) = address {
            out[index].addresses.push(a);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pod(net1: Option<&[&str]>) -> Vec<IfInfo> {
        let mut v = vec![
            IfInfo {
                name: "lo".into(),
                addresses: vec!["127.0.0.1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1]))],
            },
            IfInfo {
                name: "eth0".into(),
                addresses: vec![IpAddr::from([10, 244, 1, 7])],
            },
        ];
        if let Some(addrs) = net1 {
            v.push(IfInfo {
                name: "net1".into(),
                addresses: addrs.iter().filter_map(|a| a.parse().ok()).collect(),
            });
        }
        v
    }

    const WANT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(172, 22, 0, 2));

    #[test]
    fn interface_missing_names_what_the_pod_has() {
        let err = check(&pod(None), "net1", WANT).unwrap_err();
        assert_eq!(
            err,
            MultusError::InterfaceMissing {
                interface: "net1".into(),
                present: "eth0, lo".into()
            }
        );
        assert!(err.to_string().contains("k8s.v1.cni.cncf.io/networks"));
    }

    #[test]
    fn address_missing_names_the_addresses_found() {
        let err = check(&pod(Some(&["172.22.0.9", "fe80::1"])), "net1", WANT).unwrap_err();
        assert_eq!(
            err,
            MultusError::AddressMissing {
                interface: "net1".into(),
                address: WANT,
                found: "172.22.0.9, fe80::1".into()
            }
        );
        let none = check(&pod(Some(&[])), "net1", WANT).unwrap_err();
        assert!(none.to_string().contains("it has: none"), "{none}");
    }

    #[test]
    fn all_good() {
        assert_eq!(
            check(&pod(Some(&["fe80::1", "172.22.0.2"])), "net1", WANT),
            Ok(())
        );
    }

    #[test]
    fn reads_the_loopback_interface() {
        let found = read_interfaces().unwrap_or_default();
        assert!(found.iter().any(|i| i.name == "lo"), "no lo in {found:?}");
    }
}
