//! Reservation-mode leases: which MAC holds which address until when, persisted as a small
//! JSON file (written to a temporary file, then renamed) so a restart hands out the same ones.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vmetal_api::mac::MacAddress;

use crate::error::BootError;

/// One lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The leased address.
    pub address: Ipv4Addr,
    /// Seconds since the Unix epoch when it expires.
    pub expires_unix: u64,
}

/// All leases, by MAC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leases {
    leases: BTreeMap<MacAddress, Lease>,
}

impl Leases {
    /// No leases.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lease of a MAC, expired or not (an expired address is still the best guess).
    pub fn get(&self, mac: &MacAddress) -> Option<&Lease> {
        self.leases.get(mac)
    }

    /// Records a lease.
    pub fn insert(&mut self, mac: MacAddress, lease: Lease) {
        self.leases.insert(mac, lease);
    }

    /// Removes a MAC's lease (on DHCPRELEASE).
    pub fn remove(&mut self, mac: &MacAddress) -> Option<Lease> {
        self.leases.remove(mac)
    }

    /// Whether another MAC holds `address` with a lease that has not expired at `now`.
    pub fn held_by_other(&self, address: Ipv4Addr, mac: &MacAddress, now: u64) -> bool {
        self.leases
            .iter()
            .any(|(m, l)| m != mac && l.address == address && l.expires_unix > now)
    }

    /// Loads the file; a missing file means no leases.
    pub fn load(path: &Path) -> Result<Self, BootError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| BootError::Leases {
                path: path.to_path_buf(),
                reason: format!("not a vmetal lease file ({e}); move it away to start afresh"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::new()),
            Err(e) => Err(BootError::Leases {
                path: path.to_path_buf(),
                reason: format!("cannot read: {e}"),
            }),
        }
    }

    /// Writes the file atomically: a crash leaves the old or the new file, never half of one.
    pub fn save(&self, path: &Path) -> Result<(), BootError> {
        let fail = |reason: String| BootError::Leases {
            path: path.to_path_buf(),
            reason,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| fail(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json)
            .map_err(|e| fail(format!("cannot write {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(|e| fail(format!("cannot rename into place: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.json");
        assert_eq!(Leases::load(&path).unwrap(), Leases::new());
        let mut leases = Leases::new();
        let mac = MacAddress::parse("52:54:00:00:00:01").unwrap();
        leases.insert(
            mac,
            Lease {
                address: Ipv4Addr::new(10, 0, 0, 9),
                expires_unix: 100,
            },
        );
        leases.save(&path).unwrap();
        let back = Leases::load(&path).unwrap();
        assert_eq!(back, leases);
        assert!(back.held_by_other(
            Ipv4Addr::new(10, 0, 0, 9),
            &MacAddress::parse("52:54:00:00:00:02").unwrap(),
            50
        ));
        assert!(!back.held_by_other(Ipv4Addr::new(10, 0, 0, 9), &mac, 50));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(
            Leases::load(&path)
                .unwrap_err()
                .to_string()
                .contains("not a vmetal lease file")
        );
    }
}
