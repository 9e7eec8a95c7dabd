//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder runs the controllers,
//! a standby takes over when the holder stops renewing, and a clean shutdown hands over at once.
//!
//! Like client-go, expiry is judged by how long *this* process has seen the Lease unchanged
//! (its own clock), never by comparing `renewTime` with a possibly skewed local clock. Every
//! write is a resourceVersion-checked replace, so two candidates can never both win a round.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

use crate::error::ControllerError;
use crate::metrics::Metrics;

/// Where the Lease lives, who we are, and the timing (client-go's defaults: 15s/10s/2s).
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// Our `holderIdentity`; unique per process (see [`default_identity`]).
    pub identity: String,
    /// How long a standby waits, after last seeing the Lease change, before taking it over.
    pub lease_duration: Duration,
    /// How long the leader keeps going without a successful renewal before it stops
    /// reconciling; shorter than `lease_duration` so it stops before anyone takes over.
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// A config with client-go's default timing.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: String) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// `$POD_NAME` (or `$HOSTNAME`, or `vmetal`) plus a random suffix, so a restarted pod with the
/// same name is a new candidate and never mistakes an old holder record for its own.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "vmetal".into());
    let mut suffix = [0u8; 4];
    if getrandom::fill(&mut suffix).is_err() {
        // No randomness: the process id still tells restarts apart.
        suffix = std::process::id().to_le_bytes();
    }
    let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    format!("{base}_{hex}")
}

/// What to do with the Lease in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free, released or expired: take it.
    Acquire,
    /// Someone else holds it.
    Wait {
        /// The current holder.
        holder: String,
    },
}

/// Pure: the decision for a Lease `spec` that has looked unchanged for `unchanged_for`.
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Decision {
    let holder = spec
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Acquire;
    }
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .filter(|d| *d > 0)
        .map(|d| Duration::from_secs(d as u64))
        .unwrap_or(default_duration);
    if unchanged_for >= duration {
        Decision::Acquire
    } else {
        Decision::Wait { holder }
    }
}

/// The outcome of one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// We hold the Lease (acquired or renewed just now).
    Leading,
    /// Someone else holds it (or won the race for it).
    Following {
        /// The holder, as far as we know.
        holder: String,
    },
}

/// Whether this process leads and whether it reached the API server lately (for `/readyz`).
#[derive(Debug, Clone, Default)]
pub struct LeaderStatus {
    leading: Arc<AtomicBool>,
    reachable: Arc<AtomicBool>,
}

impl LeaderStatus {
    /// A status for a process without leader election: always leading, always reachable.
    pub fn always_leading() -> Self {
        Self {
            leading: Arc::new(AtomicBool::new(true)),
            reachable: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Whether this process currently runs the controllers.
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// Whether the last election round reached the API server.
    pub fn api_reachable(&self) -> bool {
        self.reachable.load(Ordering::SeqCst)
    }
}

/// The resourceVersion we last saw and since when.
struct Observed {
    resource_version: String,
    since: Instant,
}

/// A candidate for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderConfig,
    observed: Mutex<Option<Observed>>,
    status: LeaderStatus,
    metrics: Metrics,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl LeaderElector {
    /// A candidate; `metrics.leader` follows its leadership.
    pub fn new(client: kube::Client, config: LeaderConfig, metrics: Metrics) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: Mutex::new(None),
            status: LeaderStatus::default(),
            metrics,
        }
    }

    /// The shared leadership status.
    pub fn status(&self) -> LeaderStatus {
        self.status.clone()
    }

    /// Our identity.
    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    fn lease_key(&self) -> String {
        format!("Lease {}/{}", self.config.namespace, self.config.name)
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One round: create, renew or take over the Lease if we may.
    pub async fn try_acquire_or_renew(&self) -> Result<Round, ControllerError> {
        let me = self.config.identity.clone();
        let existing = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| ControllerError::kube(self.lease_key(), e))?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Round::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Round::Following {
                    holder: String::new(),
                }),
                Err(e) => Err(ControllerError::kube(self.lease_key(), e)),
            };
        };
        let unchanged_for = {
            let version = lease.resource_version().unwrap_or_default();
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            match observed.as_ref() {
                Some(o) if o.resource_version == version => o.since.elapsed(),
                _ => {
                    *observed = Some(Observed {
                        resource_version: version,
                        since: Instant::now(),
                    });
                    Duration::ZERO
                }
            }
        };
        let decision = decide(
            lease.spec.as_ref(),
            &me,
            unchanged_for,
            self.config.lease_duration,
        );
        let spec = lease.spec.get_or_insert_with(Default::default);
        match decision {
            Decision::Wait { holder } => return Ok(Round::Following { holder }),
            Decision::Renew => {
                spec.renew_time = Some(now());
                spec.lease_duration_seconds = Some(self.duration_seconds());
            }
            Decision::Acquire => {
                spec.holder_identity = Some(me);
                spec.acquire_time = Some(now());
                spec.renew_time = Some(now());
                spec.lease_duration_seconds = Some(self.duration_seconds());
                spec.lease_transitions =
                    Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            }
        }
        // The resourceVersion we read is kept: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Round::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Round::Following {
                holder: String::new(),
            }),
            Err(e) => Err(ControllerError::kube(self.lease_key(), e)),
        }
    }

    /// Give the Lease up (clear `holderIdentity`) if we hold it, so a standby takes over at
    /// once instead of after the lease duration.
    pub async fn release(&self) -> Result<(), ControllerError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| ControllerError::kube(self.lease_key(), e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(now());
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else wrote it meanwhile: it is not ours to clear any more.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(ControllerError::kube(self.lease_key(), e)),
        }
    }

    /// One round bounded by `limit`, recording reachability; errors count as "not leading".
    async fn round(&self, limit: Duration) -> Option<Round> {
        match tokio::time::timeout(limit, self.try_acquire_or_renew()).await {
            Ok(Ok(round)) => {
                self.status.reachable.store(true, Ordering::SeqCst);
                Some(round)
            }
            Ok(Err(err)) => {
                self.status.reachable.store(false, Ordering::SeqCst);
                tracing::warn!(%err, "leader election round failed");
                None
            }
            Err(_) => {
                self.status.reachable.store(false, Ordering::SeqCst);
                tracing::warn!(lease = %self.lease_key(), "leader election round timed out");
                None
            }
        }
    }

    fn set_leading(&self, leading: bool) {
        self.status.leading.store(leading, Ordering::SeqCst);
        self.metrics.leader.set(i64::from(leading));
    }

    /// Campaign until `shutdown`; while leading, run `lead(stop)`, where `stop` turns `true`
    /// when leadership ends. Losing the Lease stops `lead` (aborted if it does not stop in
    /// time) and campaigns again; `shutdown` stops `lead` and then releases the Lease.
    pub async fn run<F, Fut>(&self, shutdown: impl Future<Output = ()>, mut lead: F)
    where
        F: FnMut(watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let retry = self.config.retry_period;
        tokio::pin!(shutdown);
        loop {
            // Candidate.
            loop {
                if let Some(Round::Leading) = self.round(retry).await {
                    break;
                }
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(retry) => {}
                }
            }
            tracing::info!(identity = %self.config.identity, lease = %self.lease_key(), "became leader");
            self.set_leading(true);
            let (stop_tx, stop_rx) = watch::channel(false);
            // Aborted with us: if this loop dies, the reconcilers must not outlive the lease.
            let mut task = AbortOnDrop(tokio::spawn(lead(stop_rx)));
            let mut renewed = Instant::now();
            let end = loop {
                tokio::select! {
                    _ = &mut shutdown => break End::Shutdown,
                    _ = &mut task.0 => break End::Finished,
                    _ = tokio::time::sleep(retry) => {}
                }
                let left = self.config.renew_deadline.saturating_sub(renewed.elapsed());
                match self
                    .round(left.min(retry).max(Duration::from_millis(10)))
                    .await
                {
                    Some(Round::Leading) => renewed = Instant::now(),
                    Some(Round::Following { holder }) => break End::Lost(holder),
                    None if renewed.elapsed() >= self.config.renew_deadline => {
                        break End::Lost("(renew deadline passed)".into());
                    }
                    None => {}
                }
            };
            let _ = stop_tx.send(true);
            // Stop before anyone else may take over: the rest of the lease is our grace.
            let grace = self
                .config
                .lease_duration
                .saturating_sub(renewed.elapsed())
                .max(retry);
            if !task.0.is_finished() && tokio::time::timeout(grace, &mut task.0).await.is_err() {
                task.0.abort();
            }
            self.set_leading(false);
            match end {
                End::Lost(holder) => {
                    tracing::warn!(identity = %self.config.identity, %holder, "lost the leader lease; stopped reconciling");
                }
                End::Shutdown | End::Finished => {
                    if let Err(err) = self.release().await {
                        tracing::warn!(%err, "cannot release the leader lease; a standby takes over when it expires");
                    } else {
                        tracing::info!(identity = %self.config.identity, "released the leader lease");
                    }
                    return;
                }
            }
        }
    }
}

/// A task that is aborted when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why leading ended.
enum End {
    Shutdown,
    Finished,
    Lost(String),
}

/// A future that resolves once `stop` turns `true` (or its sender is gone).
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, seconds: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: seconds,
            ..Default::default()
        }
    }

    #[test]
    fn holder_renews_others_wait_until_expiry() {
        let d = Duration::from_secs(15);
        let s = spec(Some("a"), Some(5));
        assert_eq!(decide(Some(&s), "a", Duration::ZERO, d), Decision::Renew);
        assert_eq!(
            decide(Some(&s), "b", Duration::from_secs(4), d),
            Decision::Wait { holder: "a".into() }
        );
        // The Lease's own duration wins over our default.
        assert_eq!(
            decide(Some(&s), "b", Duration::from_secs(5), d),
            Decision::Acquire
        );
    }

    #[test]
    fn released_or_missing_holder_is_taken_at_once() {
        let d = Duration::from_secs(15);
        assert_eq!(
            decide(Some(&spec(None, Some(15))), "b", Duration::ZERO, d),
            Decision::Acquire
        );
        assert_eq!(
            decide(Some(&spec(Some(""), None)), "b", Duration::ZERO, d),
            Decision::Acquire
        );
        assert_eq!(decide(None, "b", Duration::ZERO, d), Decision::Acquire);
    }

    #[test]
    fn identities_differ_per_process_start() {
        assert_ne!(default_identity(), default_identity());
    }
}
