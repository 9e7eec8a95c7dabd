//! The agent's main loop: look up this machine's cycle, then heartbeat, running each command
//! the controller hands out exactly once and reporting progress and results until `finish`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use vmetal_api::agent::{
    AgentCommand, CommandProgress, CommandResult, DeployCommand, Heartbeat, HostIdentity,
    LookupResponse, WipeMode,
};

use crate::client::{ApiClient, Lookup};
use crate::error::AgentError;

/// Longest pause between retries of a failing call.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How the agent finds its controller and its machine.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Base URL of the agent API (`http://10.0.0.1:6385`).
    pub api_url: String,
    /// MACs to look up with; empty means every NIC of the inventory.
    pub mac_addresses: Vec<String>,
    /// Where `/proc` and `/sys` are (`/` in production, a fixture tree in tests).
    pub root: PathBuf,
    /// Where `/dev/<name>` devices are (`/dev` in production, a directory of disk files in tests).
    pub dev_dir: PathBuf,
    /// Heartbeat interval instead of the one the lookup returns.
    pub heartbeat_interval_override: Option<Duration>,
    /// Pause between lookups while there is nothing to do (and the first retry delay).
    pub lookup_retry: Duration,
}

/// How a run ended: the controller said `finish`.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentOutcome {
    /// The host the agent ran on.
    pub host: HostIdentity,
    /// The cycle that finished.
    pub cycle: String,
    /// Every command result of the cycle, oldest first.
    pub results: Vec<CommandResult>,
}

/// Run one cycle: lookup (retrying until the controller has work for this machine), then
/// heartbeat and execute commands until `finish`. Only a rejected token or an unusable
/// configuration ends the run with an error; network failures are retried.
pub async fn run(config: AgentConfig) -> Result<AgentOutcome, AgentError> {
    let api = ApiClient::new(&config.api_url)?;
    let macs: Vec<String> = if config.mac_addresses.is_empty() {
        let root = config.root.clone();
        let inventory = blocking(move || crate::inventory::collect(&root)).await?;
        inventory.nics.into_iter().map(|n| n.mac).collect()
    } else {
        config
            .mac_addresses
            .iter()
            .map(|m| m.to_ascii_lowercase())
            .collect()
    };
    let retry = config.lookup_retry.max(Duration::from_millis(1));
    let lookup = lookup_until_found(&api, &macs, retry).await?;
    tracing::info!(host = %lookup.host.name, namespace = %lookup.host.namespace, cycle = %lookup.cycle, "agent cycle started");
    // A zero interval would spin (and `tokio::time::interval` refuses it).
    let interval = config
        .heartbeat_interval_override
        .unwrap_or(Duration::from_millis(lookup.heartbeat_interval_ms))
        .max(Duration::from_millis(1));
    Cycle {
        api,
        config: &config,
        lookup,
        interval,
        results: Vec::new(),
        done: HashSet::new(),
    }
    .run()
    .await
}

async fn lookup_until_found(
    api: &ApiClient,
    macs: &[String],
    retry: Duration,
) -> Result<LookupResponse, AgentError> {
    let mut backoff = retry;
    loop {
        match api.lookup(macs).await {
            Ok(Lookup::Found(found)) => return Ok(found),
            Ok(Lookup::NotYet { status }) => {
                tracing::debug!(status, "lookup: nothing to do yet");
                backoff = retry;
                tokio::time::sleep(retry).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "lookup failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
            }
        }
    }
}

fn next_backoff(d: Duration) -> Duration {
    (d * 2).clamp(Duration::from_millis(10), MAX_BACKOFF)
}

/// State of one cycle's heartbeat loop.
struct Cycle<'a> {
    api: ApiClient,
    config: &'a AgentConfig,
    lookup: LookupResponse,
    interval: Duration,
    results: Vec<CommandResult>,
    done: HashSet<String>,
}

impl Cycle<'_> {
    async fn run(mut self) -> Result<AgentOutcome, AgentError> {
        loop {
            let command = self.heartbeat_retrying(None).await?;
            let id = match &command {
                AgentCommand::Finish => {
                    tracing::info!(cycle = %self.lookup.cycle, "agent cycle finished");
                    return Ok(AgentOutcome {
                        host: self.lookup.host,
                        cycle: self.lookup.cycle,
                        results: self.results,
                    });
                }
                AgentCommand::Wait => None,
                AgentCommand::Inspect { id } | AgentCommand::Wipe { id, .. } => Some(id.clone()),
                AgentCommand::Deploy(d) => Some(d.id.clone()),
            };
            match id {
                Some(id) if !self.done.contains(&id) => {
                    let result = self.execute(&id, command).await?;
                    self.done.insert(id);
                    self.results.push(result);
                }
                // Nothing new: the controller has not caught up with our results yet.
                _ => tokio::time::sleep(self.interval).await,
            }
        }
    }

    fn heartbeat(&self, running: Option<CommandProgress>) -> Heartbeat {
        Heartbeat {
            host: self.lookup.host.clone(),
            cycle: self.lookup.cycle.clone(),
            running,
            results: self.results.clone(),
        }
    }

    /// Heartbeat until a reply arrives; only a rejected token is fatal.
    async fn heartbeat_retrying(
        &self,
        running: Option<CommandProgress>,
    ) -> Result<AgentCommand, AgentError> {
        let hb = self.heartbeat(running);
        let mut backoff = self.interval.min(MAX_BACKOFF);
        loop {
            match self.api.heartbeat(&self.lookup.token, &hb).await {
                Ok(reply) => return Ok(reply.command),
                Err(e @ AgentError::TokenRejected { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = next_backoff(backoff);
                }
            }
        }
    }

    /// Run one command while heartbeating its progress.
    async fn execute(&self, id: &str, command: AgentCommand) -> Result<CommandResult, AgentError> {
        tracing::info!(id, "running command");
        let progress = Arc::new(Mutex::new(CommandProgress {
            id: id.to_string(),
            step: "starting".into(),
            done_bytes: 0,
            total_bytes: None,
        }));
        let work = execute_command(self.config, command, progress.clone());
        tokio::pin!(work);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.tick().await;
        let outcome = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = ticker.tick() => {
                    let snapshot = lock(&progress).clone();
                    // Replies are ignored while busy: one command at a time.
                    match self.api.heartbeat(&self.lookup.token, &self.heartbeat(Some(snapshot))).await {
                        Err(e @ AgentError::TokenRejected { .. }) => return Err(e),
                        Err(e) => tracing::warn!(error = %e, "progress heartbeat failed"),
                        Ok(_) => {}
                    }
                }
            }
        };
        let mut result = CommandResult {
            id: id.to_string(),
            error: None,
            error_kind: None,
            inventory: None,
            root_device: None,
            written_sha256: None,
        };
        match outcome {
            Ok(Done::Inventory(hw)) => result.inventory = Some(*hw),
            Ok(Done::Deployed {
                root_device,
                sha256,
            }) => {
                result.root_device = Some(root_device);
                result.written_sha256 = sha256;
            }
            Ok(Done::Wiped) => {}
            Err(e) => {
                tracing::warn!(id, error = %e, "command failed");
                result.error_kind = Some(e.kind());
                result.error = Some(e.to_string());
            }
        }
        Ok(result)
    }
}

/// What a successful command produced.
enum Done {
    Inventory(Box<vmetal_api::hardware::HardwareDetails>),
    Deployed {
        root_device: String,
        sha256: Option<String>,
    },
    Wiped,
}

async fn execute_command(
    config: &AgentConfig,
    command: AgentCommand,
    progress: Arc<Mutex<CommandProgress>>,
) -> Result<Done, AgentError> {
    let root = config.root.clone();
    match command {
        AgentCommand::Inspect { .. } => {
            let hw = blocking(move || crate::inventory::collect(&root)).await?;
            Ok(Done::Inventory(Box::new(hw)))
        }
        AgentCommand::Deploy(cmd) => deploy(config, &cmd, progress).await,
        AgentCommand::Wipe { mode, .. } => {
            let hw = blocking(move || crate::inventory::collect(&root)).await?;
            for disk in hw.storage {
                let device = device_path(&config.dev_dir, &disk.name);
                set_step(&progress, &format!("wiping {}", disk.name));
                blocking(move || match mode {
                    WipeMode::Metadata => crate::wipe::wipe_metadata(&device),
                    WipeMode::Full => crate::wipe::wipe_full(&device),
                })
                .await?;
            }
            Ok(Done::Wiped)
        }
        AgentCommand::Wait | AgentCommand::Finish => Ok(Done::Wiped),
    }
}

async fn deploy(
    config: &AgentConfig,
    cmd: &DeployCommand,
    progress: Arc<Mutex<CommandProgress>>,
) -> Result<Done, AgentError> {
    let root = config.root.clone();
    let hw = blocking(move || crate::inventory::collect(&root)).await?;
    let disk = crate::rootdev::choose_root_device(&hw.storage, cmd.root_device_hints.as_ref())?;
    let device = device_path(&config.dev_dir, &disk.name);
    // Decode before writing so a bad config drive fails without touching the disk.
    let config_drive = match &cmd.config_drive {
        Some(b64) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| AgentError::ConfigDrive {
                    device: device.clone(),
                    reason: format!("the config drive is not valid base64: {e}"),
                })?,
        ),
        None => None,
    };
    let p = progress.clone();
    let report = crate::image::write_image(cmd, &device, move |update| *lock(&p) = update).await?;
    if let Some(fs) = config_drive {
        set_step(&progress, "config drive");
        let dev = device.clone();
        let end = report.image_end;
        blocking(move || crate::configdrive::write_config_drive(&dev, end, &fs)).await?;
    }
    Ok(Done::Deployed {
        root_device: disk.name.clone(),
        sha256: report.written_sha256,
    })
}

/// `/dev/sda` → `<dev_dir>/sda`.
pub fn device_path(dev_dir: &Path, name: &str) -> PathBuf {
    dev_dir.join(
        name.strip_prefix("/dev/")
            .unwrap_or(name)
            .trim_start_matches('/'),
    )
}

fn set_step(progress: &Mutex<CommandProgress>, step: &str) {
    let mut p = lock(progress);
    p.step = step.into();
    p.done_bytes = 0;
    p.total_bytes = None;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Run blocking disk or `/sys` work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(AgentError::Api {
            url: String::new(),
            reason: format!("agent task failed: {e}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_map_into_dev_dir() {
        let d = Path::new("/work/dev");
        assert_eq!(device_path(d, "/dev/sda"), Path::new("/work/dev/sda"));
        assert_eq!(device_path(d, "nvme0n1"), Path::new("/work/dev/nvme0n1"));
    }

    #[test]
    fn backoff_grows_to_a_cap() {
        assert_eq!(next_backoff(Duration::from_secs(1)), Duration::from_secs(2));
        assert_eq!(next_backoff(Duration::from_secs(20)), MAX_BACKOFF);
        assert_eq!(next_backoff(Duration::ZERO), Duration::from_millis(10));
    }
}
