//! The simulated server behind a virtual BMC: power, boot override, virtual media and identity,
//! plus a hook that tells the server's backend (nothing, or a QEMU VM) what to do.
//!
//! Both the Redfish and IPMI front ends change the same state, so a test can power a server on
//! over IPMI and see it on over Redfish.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use vmetal_bmc::{BootDevice, BootModeOverride, BootOverride, PowerState};

use crate::faults::Faults;

/// What the server boots from when it powers on or resets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSource {
    /// Network boot.
    Pxe,
    /// Local disk.
    Disk,
    /// The inserted virtual CD (its URL), or an empty drive.
    Cd(Option<String>),
    /// Firmware setup.
    BiosSetup,
    /// UEFI HTTP boot.
    UefiHttp,
}

/// The backend that makes power changes real (a QEMU VM), or observes them (tests).
pub trait ServerBackend: Send + Sync {
    /// The server was powered on (or reset) and boots from `source` in `mode`.
    fn boot(&self, source: &BootSource, mode: BootModeOverride);
    /// The server was powered off.
    fn power_off(&self);
    /// A graceful shutdown was asked for (ACPI power button); a backend without a guest OS to
    /// ask powers off at once.
    fn soft_off(&self) {
        self.power_off();
    }
}

/// Fixed identity of a simulated server, reported by both BMC front ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    /// Redfish system id (the last path segment of `/redfish/v1/Systems/<id>`).
    pub id: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Serial number.
    pub serial_number: String,
    /// SMBIOS UUID, lower-case hyphenated.
    pub uuid: String,
    /// BIOS version.
    pub bios_version: String,
    /// MAC of the NIC that PXE-boots.
    pub boot_mac: String,
}

impl ServerIdentity {
    /// A deterministic identity for server number `index` of a simulated rack.
    pub fn numbered(index: u32) -> Self {
        Self {
            id: format!("{}", index + 1),
            manufacturer: "vmetal".into(),
            model: "Simulated Server S1".into(),
            serial_number: format!("VMSIM{:06}", index + 1),
            uuid: format!("8f1e5a3c-0000-4000-8000-{:012x}", u64::from(index) + 1),
            bios_version: "1.0.0".into(),
            boot_mac: format!(
                "52:54:00:{:02x}:{:02x}:{:02x}",
                (index >> 16) & 0xff,
                (index >> 8) & 0xff,
                index & 0xff
            ),
        }
    }
}

/// The mutable state of a simulated server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedState {
    /// Power.
    pub power: PowerState,
    /// The pending boot override, if any.
    pub boot_override: Option<BootOverride>,
    /// The firmware mode the server boots in.
    pub boot_mode: BootModeOverride,
    /// URL of the inserted virtual CD.
    pub virtual_media: Option<String>,
    /// What the server booted from last (None before the first boot).
    pub last_boot: Option<BootSource>,
    /// How many times it booted (power on and resets).
    pub boot_count: u64,
}

struct Inner {
    identity: ServerIdentity,
    state: Mutex<SimulatedState>,
    backend: Mutex<Option<Arc<dyn ServerBackend>>>,
    faults: Faults,
}

/// A simulated server. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct SimulatedServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SimulatedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedServer")
            .field("identity", &self.inner.identity)
            .field("state", &self.state())
            .finish()
    }
}

impl SimulatedServer {
    /// A powered-off server with no boot override, booting UEFI.
    pub fn new(identity: ServerIdentity) -> Self {
        Self {
            inner: Arc::new(Inner {
                identity,
                state: Mutex::new(SimulatedState {
                    power: PowerState::Off,
                    boot_override: None,
                    boot_mode: BootModeOverride::Uefi,
                    virtual_media: None,
                    last_boot: None,
                    boot_count: 0,
                }),
                backend: Mutex::new(None),
                faults: Faults::default(),
            }),
        }
    }

    /// Attach the backend that acts on power changes.
    pub fn set_backend(&self, backend: Arc<dyn ServerBackend>) {
        *lock(&self.inner.backend) = Some(backend);
    }

    /// The server's identity.
    pub fn identity(&self) -> &ServerIdentity {
        &self.inner.identity
    }

    /// The fault injector both BMC front ends consult for this server.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// A snapshot of the current state.
    pub fn state(&self) -> SimulatedState {
        lock(&self.inner.state).clone()
    }

    /// Current power state.
    pub fn power_state(&self) -> PowerState {
        lock(&self.inner.state).power
    }

    /// Power on; no-op when already on.
    pub fn power_on(&self) {
        let boot = {
            let mut st = lock(&self.inner.state);
            if st.power == PowerState::On {
                return;
            }
            st.power = PowerState::On;
            Self::consume_boot(&mut st)
        };
        self.notify_boot(boot);
    }

    /// Hard power off; no-op when already off.
    pub fn power_off(&self) {
        {
            let mut st = lock(&self.inner.state);
            if st.power == PowerState::Off {
                return;
            }
            st.power = PowerState::Off;
        }
        if let Some(b) = self.backend() {
            b.power_off();
        }
    }

    /// Graceful shutdown: the power reads Off at once (the simulated OS obliges); the backend
    /// is asked to shut its guest down gracefully. No-op when already off.
    pub fn soft_off(&self) {
        {
            let mut st = lock(&self.inner.state);
            if st.power == PowerState::Off {
                return;
            }
            st.power = PowerState::Off;
        }
        if let Some(b) = self.backend() {
            b.soft_off();
        }
    }

    /// The backend saw its guest power itself off: the power reads Off and the backend is not
    /// told (it knows). Returns whether the server was on.
    pub fn guest_powered_off(&self) -> bool {
        let mut st = lock(&self.inner.state);
        let was_on = st.power == PowerState::On;
        st.power = PowerState::Off;
        was_on
    }

    /// The backend saw its guest reboot itself: boot again as a firmware would, consuming a
    /// one-time override (so a one-time PXE boot is followed by disk boots). Does nothing and
    /// returns false when the server is off (a power-off raced the reboot).
    pub fn guest_reset(&self) -> bool {
        let boot = {
            let mut st = lock(&self.inner.state);
            if st.power == PowerState::Off {
                return false;
            }
            Self::consume_boot(&mut st)
        };
        self.notify_boot(boot);
        true
    }

    /// A handle that does not keep the server alive, for backends that report to their server
    /// (the server owns its backend, so a strong handle back would be a cycle).
    pub fn downgrade(&self) -> WeakServer {
        WeakServer(Arc::downgrade(&self.inner))
    }

    /// Hard reset: reboot with the current override when on; powers on when off.
    pub fn reset(&self) {
        let boot = {
            let mut st = lock(&self.inner.state);
            st.power = PowerState::On;
            Self::consume_boot(&mut st)
        };
        self.notify_boot(boot);
    }

    /// Power cycle: off then on.
    pub fn power_cycle(&self) {
        self.power_off();
        self.power_on();
    }

    /// Set (or replace) the boot override.
    pub fn set_boot_override(&self, boot: BootOverride) {
        let mut st = lock(&self.inner.state);
        if let Some(mode) = boot.mode {
            st.boot_mode = mode;
        }
        st.boot_override = Some(boot);
    }

    /// Clear the boot override.
    pub fn clear_boot_override(&self) {
        lock(&self.inner.state).boot_override = None;
    }

    /// Insert a virtual CD.
    pub fn insert_media(&self, url: &str) {
        lock(&self.inner.state).virtual_media = Some(url.to_string());
    }

    /// Eject the virtual CD.
    pub fn eject_media(&self) {
        lock(&self.inner.state).virtual_media = None;
    }

    fn backend(&self) -> Option<Arc<dyn ServerBackend>> {
        lock(&self.inner.backend).clone()
    }

    /// Decide the boot source for a boot now and consume a one-time override.
    fn consume_boot(st: &mut SimulatedState) -> (BootSource, BootModeOverride) {
        let device = st.boot_override.map_or(BootDevice::Disk, |b| b.device);
        if st.boot_override.is_some_and(|b| !b.persistent) {
            st.boot_override = None;
        }
        let source = match device {
            BootDevice::Pxe => BootSource::Pxe,
            BootDevice::Disk => BootSource::Disk,
            BootDevice::Cd => BootSource::Cd(st.virtual_media.clone()),
            BootDevice::BiosSetup => BootSource::BiosSetup,
            BootDevice::UefiHttp => BootSource::UefiHttp,
        };
        st.last_boot = Some(source.clone());
        st.boot_count += 1;
        (source, st.boot_mode)
    }

    fn notify_boot(&self, (source, mode): (BootSource, BootModeOverride)) {
        if let Some(b) = self.backend() {
            b.boot(&source, mode);
        }
    }
}

/// A [`SimulatedServer`] handle that does not keep it alive.
#[derive(Clone)]
pub struct WeakServer(Weak<Inner>);

impl WeakServer {
    /// The server, if it still exists.
    pub fn upgrade(&self) -> Option<SimulatedServer> {
        self.0.upgrade().map(|inner| SimulatedServer { inner })
    }
}

impl std::fmt::Debug for WeakServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakServer")
    }
}

/// Lock, recovering from a poisoned mutex: the state is plain data and stays consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl ServerBackend for Recorder {
        fn boot(&self, source: &BootSource, mode: BootModeOverride) {
            lock(&self.0).push(format!("boot {source:?} {mode:?}"));
        }
        fn power_off(&self) {
            lock(&self.0).push("off".into());
        }
    }

    #[test]
    fn one_time_pxe_override_is_consumed_by_the_next_boot() {
        let server = SimulatedServer::new(ServerIdentity::numbered(0));
        let rec = Arc::new(Recorder::default());
        server.set_backend(rec.clone());
        server.set_boot_override(BootOverride::once(
            BootDevice::Pxe,
            Some(BootModeOverride::Uefi),
        ));
        server.power_on();
        assert_eq!(server.power_state(), PowerState::On);
        assert_eq!(server.state().boot_override, None);
        server.reset();
        server.power_off();
        server.power_off();
        assert_eq!(
            *lock(&rec.0),
            vec!["boot Pxe Uefi", "boot Disk Uefi", "off"]
        );
        assert_eq!(server.state().boot_count, 2);
    }

    #[test]
    fn persistent_override_survives_boots() {
        let server = SimulatedServer::new(ServerIdentity::numbered(3));
        server.set_boot_override(BootOverride {
            device: BootDevice::Cd,
            persistent: true,
            mode: Some(BootModeOverride::Legacy),
        });
        server.insert_media("http://images/boot.iso");
        server.power_on();
        server.reset();
        let st = server.state();
        assert_eq!(
            st.last_boot,
            Some(BootSource::Cd(Some("http://images/boot.iso".into())))
        );
        assert!(st.boot_override.is_some());
        assert_eq!(st.boot_mode, BootModeOverride::Legacy);
    }

    #[test]
    fn soft_off_asks_the_backend_and_guest_reports_change_power_without_calling_it() {
        let server = SimulatedServer::new(ServerIdentity::numbered(0));
        let rec = Arc::new(Recorder::default());
        server.set_backend(rec.clone());
        server.set_boot_override(BootOverride::once(
            BootDevice::Pxe,
            Some(BootModeOverride::Legacy),
        ));
        server.power_on();
        // The guest reboots itself: the one-time override is gone, so it boots from disk.
        assert!(server.guest_reset());
        assert_eq!(server.state().boot_count, 2);
        assert!(server.guest_powered_off());
        assert_eq!(server.power_state(), PowerState::Off);
        assert!(!server.guest_powered_off());
        assert!(!server.guest_reset(), "no reboot after the power went off");
        server.power_on();
        server.soft_off();
        server.soft_off();
        assert_eq!(server.power_state(), PowerState::Off);
        assert_eq!(
            *lock(&rec.0),
            vec![
                "boot Pxe Legacy",
                "boot Disk Legacy",
                "boot Disk Legacy",
                "off"
            ]
        );
        let weak = server.downgrade();
        assert!(weak.upgrade().is_some());
        drop(server);
        assert!(
            weak.upgrade().is_none(),
            "a weak handle keeps nothing alive"
        );
    }

    #[test]
    fn numbered_identities_are_distinct() {
        let a = ServerIdentity::numbered(0);
        let b = ServerIdentity::numbered(256);
        assert_ne!(a.uuid, b.uuid);
        assert_ne!(a.boot_mac, b.boot_mac);
        assert_eq!(a.id, "1");
        assert_eq!(b.boot_mac, "52:54:00:00:01:00");
    }
}
