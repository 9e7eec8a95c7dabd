//! The simulated machine behind a virtual BMC: a PXE boot runs the vmetal agent against a
//! fixture hardware tree and sparse disk files; a disk boot reads the config drive and "starts"
//! the OS by recording its metadata and user data.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vmetal_agent::partition::{Table, read_table};
use vmetal_agent::{AgentConfig, FixtureSpec, fat, read_config_drive};
use vmetal_bmc::BootModeOverride;

use crate::sim::{BootSource, ServerBackend};

/// How often a running agent asks the agent API for work while there is none.
const LOOKUP_RETRY: Duration = Duration::from_millis(200);

/// What the simulated OS found when it booted from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootedOs {
    /// The disk it booted from (`sda`).
    pub disk: String,
    /// `local-hostname` (or `hostname`, `name`) from the config drive's metadata.
    pub hostname: String,
    /// `openstack/latest/meta_data.json` as found (empty without a config drive).
    pub meta_data: String,
    /// `openstack/latest/user_data`, which cloud-init would run.
    pub user_data: Option<Vec<u8>>,
}

#[derive(Default)]
struct State {
    agent: Option<tokio::task::JoinHandle<()>>,
    os: Option<BootedOs>,
    /// Bumped by every boot and power-off, so a delayed boot of an earlier power cycle
    /// does nothing.
    generation: u64,
    last_agent_error: Option<String>,
    agent_runs: u64,
    /// The OS's cluster join (dropped, and so stopped, on power-off or reboot).
    join: Option<crate::join::JoinTask>,
}

struct Inner {
    spec: FixtureSpec,
    workdir: PathBuf,
    agent_api_url: String,
    boot_delay: Duration,
    state: Mutex<State>,
}

/// A simulated server's hardware, disks and boot behaviour. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct SimulatedMachine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SimulatedMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedMachine")
            .field("workdir", &self.inner.workdir)
            .field("agent_running", &self.agent_running())
            .field("os", &self.os())
            .finish()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimulatedMachine {
    /// Write the fixture tree to `workdir/root` and create missing sparse disk files of the
    /// spec's sizes in `workdir/dev` (existing disks keep their contents across restarts).
    pub fn new(
        spec: FixtureSpec,
        workdir: PathBuf,
        agent_api_url: String,
        boot_delay: Duration,
    ) -> io::Result<Self> {
        vmetal_agent::write_tree(&spec, &workdir.join("root"))?;
        let dev = workdir.join("dev");
        std::fs::create_dir_all(&dev)?;
        for (name, size, ..) in &spec.disks {
            let path = dev.join(name);
            if !path.exists() {
                std::fs::File::create(&path)?.set_len(*size)?;
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                spec,
                workdir,
                agent_api_url,
                boot_delay,
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// The hardware this machine has.
    pub fn spec(&self) -> &FixtureSpec {
        &self.inner.spec
    }

    /// The OS that booted from disk, if the machine is up.
    pub fn os(&self) -> Option<BootedOs> {
        lock(&self.inner.state).os.clone()
    }

    /// Whether an agent is running (booted from PXE, not yet finished or powered off).
    pub fn agent_running(&self) -> bool {
        lock(&self.inner.state)
            .agent
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }

    /// How many agent runs have been started.
    pub fn agent_runs(&self) -> u64 {
        lock(&self.inner.state).agent_runs
    }

    /// The error the last agent run ended with, if it failed.
    pub fn last_agent_error(&self) -> Option<String> {
        lock(&self.inner.state).last_agent_error.clone()
    }

    /// The file backing disk `name` (`sda`, or `/dev/sda`).
    pub fn disk_path(&self, name: &str) -> PathBuf {
        vmetal_agent::run::device_path(&self.inner.workdir.join("dev"), name)
    }

    /// Stop whatever runs and clear the OS; returns the new generation.
    fn reset(&self) -> u64 {
        let mut st = lock(&self.inner.state);
        if let Some(agent) = st.agent.take() {
            agent.abort();
        }
        st.os = None;
        st.join = None;
        st.generation += 1;
        st.generation
    }

    fn agent_config(&self) -> AgentConfig {
        AgentConfig {
            api_url: self.inner.agent_api_url.clone(),
            mac_addresses: self.inner.spec.nics.iter().map(|n| n.1.clone()).collect(),
            root: self.inner.workdir.join("root"),
            dev_dir: self.inner.workdir.join("dev"),
            heartbeat_interval_override: None,
            lookup_retry: LOOKUP_RETRY,
        }
    }

    fn start_agent(&self, generation: u64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no tokio runtime: the simulated agent cannot run");
            return;
        };
        let me = self.clone();
        let config = self.agent_config();
        let delay = self.inner.boot_delay;
        let mut st = lock(&self.inner.state);
        st.agent_runs += 1;
        st.agent = Some(rt.spawn(async move {
            tokio::time::sleep(delay).await;
            let result = vmetal_agent::run(config).await;
            let mut st = lock(&me.inner.state);
            if st.generation == generation {
                st.last_agent_error = result.err().map(|e| e.to_string());
            }
        }));
    }

    fn boot_disk(&self, generation: u64) {
        let os = self.find_os();
        let mut st = lock(&self.inner.state);
        if st.generation == generation {
            // cloud-init's runcmd: the join step, if the user data has one.
            let join = os.as_ref().and_then(|os| {
                let cmd = crate::join::parse_join(os.user_data.as_deref()?)?;
                let facts = crate::join::NodeFacts::new(&os.hostname, &self.inner.spec);
                crate::join::spawn(cmd, facts)
            });
            st.os = os;
            st.join = join;
        }
    }

    /// Where the OS's cluster join stands (`None`: no OS up, or its user data has no join).
    pub fn join_state(&self) -> Option<crate::join::JoinState> {
        lock(&self.inner.state).join.as_ref().map(|j| j.state())
    }

    /// The first disk (spec order) with a config drive; else the first with a partition table.
    fn find_os(&self) -> Option<BootedOs> {
        let disks: Vec<(String, PathBuf)> = self
            .inner
            .spec
            .disks
            .iter()
            .map(|d| (d.0.clone(), self.disk_path(&d.0)))
            .collect();
        for (name, path) in &disks {
            if let Ok(Some(drive)) = read_config_drive(path) {
                return Some(booted_from_drive(name, &drive));
            }
        }
        disks
            .iter()
            .find(|(_, p)| has_partition_table(p))
            .map(|(name, _)| BootedOs {
                disk: name.clone(),
                hostname: String::new(),
                meta_data: String::new(),
                user_data: None,
            })
    }
}

fn has_partition_table(path: &Path) -> bool {
    std::fs::File::open(path)
        .and_then(|mut f| read_table(&mut f))
        .is_ok_and(|t| matches!(t, Table::Gpt(_) | Table::Mbr(_)))
}

fn booted_from_drive(disk: &str, drive: &[u8]) -> BootedOs {
    let meta_data = fat::read_file(drive, "openstack/latest/meta_data.json")
        .map(|m| String::from_utf8_lossy(&m).into_owned())
        .unwrap_or_default();
    let hostname = serde_json::from_str::<serde_json::Value>(&meta_data)
        .ok()
        .and_then(|v| {
            ["local-hostname", "hostname", "name"]
                .iter()
                .find_map(|k| v.get(*k).and_then(|h| h.as_str()).map(String::from))
        })
        .unwrap_or_default();
    BootedOs {
        disk: disk.to_string(),
        hostname,
        meta_data,
        user_data: fat::read_file(drive, "openstack/latest/user_data"),
    }
}

impl ServerBackend for SimulatedMachine {
    fn boot(&self, source: &BootSource, _mode: BootModeOverride) {
        let generation = self.reset();
        match source {
            BootSource::Pxe | BootSource::UefiHttp => self.start_agent(generation),
            BootSource::Disk => {
                let delay = self.inner.boot_delay;
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) if !delay.is_zero() => {
                        let me = self.clone();
                        rt.spawn(async move {
                            tokio::time::sleep(delay).await;
                            me.boot_disk(generation);
                        });
                    }
                    _ => self.boot_disk(generation),
                }
            }
            BootSource::Cd(_) | BootSource::BiosSetup => {}
        }
    }

    fn power_off(&self) {
        self.reset();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn machine(dir: &Path) -> SimulatedMachine {
        SimulatedMachine::new(
            crate::rack::lab_spec(1),
            dir.to_path_buf(),
            "http://127.0.0.1:9".into(),
            Duration::ZERO,
        )
        .unwrap()
    }

    #[test]
    fn disks_are_sparse_files_of_the_spec_size() {
        let dir = tempfile::tempdir().unwrap();
        let m = machine(dir.path());
        for (name, size, ..) in &m.spec().disks {
            let meta = std::fs::metadata(m.disk_path(name)).unwrap();
            assert_eq!(meta.len(), *size);
        }
        assert_eq!(m.disk_path("/dev/sda"), dir.path().join("dev/sda"));
    }

    #[test]
    fn pxe_boot_without_a_runtime_is_harmless_and_blank_disks_do_not_boot() {
        let dir = tempfile::tempdir().unwrap();
        let m = machine(dir.path());
        m.boot(&BootSource::Pxe, BootModeOverride::Uefi);
        assert!(!m.agent_running());
        m.boot(&BootSource::Disk, BootModeOverride::Uefi);
        assert_eq!(m.os(), None);
    }
}
