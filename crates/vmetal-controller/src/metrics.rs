//! Prometheus metrics of the controller process: hosts by state, state transitions, operation
//! durations, BMC call latency and errors, agent API requests and leadership, in one registry.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use vmetal_api::BareMetalHost;
use vmetal_api::bmc_address::BmcAddress;
use vmetal_bmc::{Bmc, BmcError, BootOverride, PowerAction, PowerState, SystemInfo};

/// Label pairs of a metric family.
pub type Labels = Vec<(&'static str, String)>;

/// Seconds buckets for host operations: registration takes seconds, provisioning minutes.
const OPERATION_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0,
];
/// Seconds buckets for one BMC call.
const BMC_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// The controller's metrics; cheap to clone, every clone feeds the same registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    hosts: HostStates,
    /// Provisioning-state changes saved to a host's status, by `from` and `to`.
    pub transitions: Family<Labels, Counter>,
    /// Duration of finished operations (register, inspect, provision, deprovision), from the
    /// host's `operationHistory`.
    pub operation_seconds: Family<Labels, Histogram>,
    /// Latency of BMC calls, by `driver` and `call`.
    pub bmc_call_seconds: Family<Labels, Histogram>,
    /// Failed BMC calls, by `driver`, `call` and `kind` (transient or permanent).
    pub bmc_errors: Family<Labels, Counter>,
    /// Agent API requests, by route `path`, `method` and `status`.
    pub agent_requests: Family<Labels, Counter>,
    /// 1 while this process holds the leader lease (or runs without leader election).
    pub leader: Gauge,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Host counts by provisioning state, computed from the host controller's cache at each scrape.
#[derive(Clone, Default)]
struct HostStates(Arc<Mutex<Option<Store<BareMetalHost>>>>);

impl fmt::Debug for HostStates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HostStates")
    }
}

impl Collector for HostStates {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let family = Family::<Labels, Gauge>::default();
        let store = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(store) = store {
            for host in store.state() {
                let state = host.provisioning_state().as_str();
                let state = if state.is_empty() { "none" } else { state };
                family
                    .get_or_create(&vec![("state", state.to_string())])
                    .inc();
            }
        }
        let metric = encoder.encode_descriptor(
            "hosts",
            "BareMetalHosts by provisioning state, as the controller sees them",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

impl Metrics {
    /// Fresh metrics in their own registry, names prefixed `vmetal_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vmetal");
        let hosts = HostStates::default();
        let transitions = Family::<Labels, Counter>::default();
        let operation_seconds =
            Family::<Labels, Histogram>::new_with_constructor(operation_histogram as fn() -> _);
        let bmc_call_seconds =
            Family::<Labels, Histogram>::new_with_constructor(bmc_histogram as fn() -> _);
        let bmc_errors = Family::<Labels, Counter>::default();
        let agent_requests = Family::<Labels, Counter>::default();
        let leader = Gauge::default();
        registry.register_collector(Box::new(hosts.clone()));
        registry.register(
            "host_transitions",
            "BareMetalHost provisioning-state changes",
            transitions.clone(),
        );
        registry.register(
            "host_operation_seconds",
            "Duration of finished host operations (register, inspect, provision, deprovision)",
            operation_seconds.clone(),
        );
        registry.register(
            "bmc_call_seconds",
            "Latency of BMC calls by driver",
            bmc_call_seconds.clone(),
        );
        registry.register(
            "bmc_errors",
            "Failed BMC calls by driver",
            bmc_errors.clone(),
        );
        registry.register(
            "agent_api_requests",
            "Agent API requests by path and status",
            agent_requests.clone(),
        );
        registry.register(
            "leader",
            "1 while this process is the leader and runs the controllers",
            leader.clone(),
        );
        Self {
            registry: Arc::new(registry),
            hosts,
            transitions,
            operation_seconds,
            bmc_call_seconds,
            bmc_errors,
            agent_requests,
            leader,
        }
    }

    /// Count hosts by state from this cache (the host controller's) at every scrape.
    pub fn watch_hosts(&self, store: Store<BareMetalHost>) {
        *self.hosts.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(store);
    }

    /// Record a saved state change.
    pub fn transition(&self, from: &str, to: &str) {
        let from = if from.is_empty() { "none" } else { from };
        self.transitions
            .get_or_create(&vec![("from", from.to_string()), ("to", to.to_string())])
            .inc();
    }

    /// Record a finished operation (`register`, `inspect`, `provision`, `deprovision`).
    pub fn operation(&self, operation: &'static str, took: Duration) {
        self.operation_seconds
            .get_or_create(&vec![("operation", operation.to_string())])
            .observe(took.as_secs_f64());
    }

    /// Record one agent API request.
    pub fn agent_request(&self, path: &str, method: &str, status: u16) {
        self.agent_requests
            .get_or_create(&vec![
                ("path", path.to_string()),
                ("method", method.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    /// Wrap a BMC driver so its calls are timed and its failures counted.
    pub fn timed_bmc(&self, inner: Arc<dyn Bmc>) -> Arc<dyn Bmc> {
        let driver = match inner.address().driver.protocol() {
            vmetal_api::bmc_address::Protocol::Redfish => "redfish",
            vmetal_api::bmc_address::Protocol::Ipmi => "ipmi",
        };
        Arc::new(TimedBmc {
            inner,
            driver,
            metrics: self.clone(),
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn operation_histogram() -> Histogram {
    Histogram::new(OPERATION_BUCKETS)
}

fn bmc_histogram() -> Histogram {
    Histogram::new(BMC_BUCKETS)
}

/// A [`Bmc`] that times every call of the driver it wraps.
struct TimedBmc {
    inner: Arc<dyn Bmc>,
    driver: &'static str,
    metrics: Metrics,
}

impl TimedBmc {
    fn record<T>(&self, call: &'static str, started: Instant, result: &Result<T, BmcError>) {
        let labels = vec![
            ("driver", self.driver.to_string()),
            ("call", call.to_string()),
        ];
        self.metrics
            .bmc_call_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            let kind = if e.is_transient() {
                "transient"
            } else {
                "permanent"
            };
            let mut labels = labels;
            labels.push(("kind", kind.to_string()));
            self.metrics.bmc_errors.get_or_create(&labels).inc();
        }
    }
}

#[async_trait]
impl Bmc for TimedBmc {
    fn address(&self) -> &BmcAddress {
        self.inner.address()
    }

    async fn validate(&self) -> Result<(), BmcError> {
        let started = Instant::now();
        let result = self.inner.validate().await;
        self.record("validate", started, &result);
        result
    }

    async fn power_state(&self) -> Result<PowerState, BmcError> {
        let started = Instant::now();
        let result = self.inner.power_state().await;
        self.record("power_state", started, &result);
        result
    }

    async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        let started = Instant::now();
        let result = self.inner.power(action).await;
        self.record("power", started, &result);
        result
    }

    async fn set_boot_device(&self, boot: BootOverride) -> Result<(), BmcError> {
        let started = Instant::now();
        let result = self.inner.set_boot_device(boot).await;
        self.record("set_boot_device", started, &result);
        result
    }

    async fn system_info(&self) -> Result<SystemInfo, BmcError> {
        let started = Instant::now();
        let result = self.inner.system_info().await;
        self.record("system_info", started, &result);
        result
    }

    async fn insert_virtual_media(&self, image_url: &str) -> Result<(), BmcError> {
        let started = Instant::now();
        let result = self.inner.insert_virtual_media(image_url).await;
        self.record("insert_virtual_media", started, &result);
        result
    }

    async fn eject_virtual_media(&self) -> Result<(), BmcError> {
        let started = Instant::now();
        let result = self.inner.eject_virtual_media().await;
        self.record("eject_virtual_media", started, &result);
        result
    }

    async fn close(&self) -> Result<(), BmcError> {
        // Logout is bookkeeping, not a call worth timing.
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_and_operations_render() {
        let m = Metrics::new();
        m.transition("", "registering");
        m.transition("registering", "inspecting");
        m.operation("register", Duration::from_millis(300));
        m.agent_request("/v1/lookup", "POST", 200);
        let text = m.render();
        assert!(text.contains(r#"vmetal_host_transitions_total{from="none",to="registering"} 1"#));
        assert!(text.contains(r#"vmetal_host_operation_seconds_count{operation="register"} 1"#));
        assert!(text.contains(
            r#"vmetal_agent_api_requests_total{path="/v1/lookup",method="POST",status="200"} 1"#
        ));
        // Without a cache the gauge family is still declared.
        assert!(text.contains("# TYPE vmetal_hosts gauge"));
    }
}
