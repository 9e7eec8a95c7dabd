//! What every reconcile shares: the Kubernetes client, the BMC driver pool, the event recorder
//! and the tunables.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bmc_pool::BmcPool;
use crate::metrics::Metrics;

/// Tunables of the host controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Hosts allowed in inspecting/provisioning/deprovisioning at once (Metal3's
    /// `PROVISIONING_LIMIT`); others wait with `operationalStatus: delayed`.
    pub max_concurrent_operations: usize,
    /// Poll interval in stable states (power drift).
    pub steady_poll: Duration,
    /// Poll interval while an agent cycle runs (events from the agent API wake us sooner).
    pub operation_poll: Duration,
    /// An agent that has not finished its command in this long fails the operation.
    pub operation_timeout: Duration,
    /// First back-off after a failure; doubles per consecutive failure.
    pub backoff_base: Duration,
    /// Longest back-off.
    pub backoff_cap: Duration,
    /// Reconciles running at once.
    pub concurrency: u16,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_operations: 20,
            steady_poll: Duration::from_secs(60),
            operation_poll: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30 * 60),
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(300),
            concurrency: 16,
        }
    }
}

/// Shared by all reconciles.
pub struct Context {
    /// Kubernetes client.
    pub client: kube::Client,
    /// BMC drivers.
    pub bmcs: BmcPool,
    /// Tunables.
    pub config: ControllerConfig,
    /// Hosts holding an operation slot (`namespace/name`).
    pub busy: Mutex<HashSet<String>>,
    /// The resourceVersion of the last write to each host (`namespace/name`), so a reconcile
    /// that runs on a cached copy older than our own write waits for the cache instead of
    /// repeating work.
    pub written: Mutex<std::collections::HashMap<String, u64>>,
    /// Prometheus metrics (transitions, operation durations, BMC calls).
    pub metrics: Metrics,
}

impl Context {
    /// A context.
    pub fn new(client: kube::Client, bmcs: BmcPool, config: ControllerConfig) -> Arc<Self> {
        Self::with_metrics(client, bmcs, config, Metrics::default())
    }

    /// A context recording into `metrics` (BMC calls included).
    pub fn with_metrics(
        client: kube::Client,
        mut bmcs: BmcPool,
        config: ControllerConfig,
        metrics: Metrics,
    ) -> Arc<Self> {
        bmcs.set_metrics(metrics.clone());
        Arc::new(Self {
            client,
            bmcs,
            config,
            busy: Mutex::new(HashSet::new()),
            written: Mutex::new(std::collections::HashMap::new()),
            metrics,
        })
    }

    /// Take an operation slot for `host` if one is free (or it already has one).
    pub fn try_acquire_slot(&self, host: &str) -> bool {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if busy.contains(host) {
            return true;
        }
        if busy.len() >= self.config.max_concurrent_operations {
            return false;
        }
        busy.insert(host.to_string());
        true
    }

    /// Remember the resourceVersion a write of `host` produced.
    pub fn wrote(&self, host: &str, object: &impl kube::Resource) {
        if let Some(rv) = object
            .meta()
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
        {
            let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
            let slot = written.entry(host.to_string()).or_insert(0);
            *slot = (*slot).max(rv);
        }
    }

    /// Whether `object` is older than our last write of `host` (the cache has not caught up).
    /// resourceVersions are compared as numbers, which holds for etcd and the embedded server;
    /// anything else is never considered stale.
    pub fn is_stale(&self, host: &str, object: &impl kube::Resource) -> bool {
        let Some(seen) = object
            .meta()
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return false;
        };
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .is_some_and(|w| seen < *w)
    }

    /// Give back `host`'s slot.
    pub fn release_slot(&self, host: &str) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(host);
    }
}
