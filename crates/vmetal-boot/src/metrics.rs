//! Prometheus counters for the boot services: DHCP requests, offers, acks and ignored
//! requests by reason; TFTP transfers and bytes; HTTP boot scripts served.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// One label pair (`type`, `reason`, `result`).
pub type Labels = Vec<(&'static str, &'static str)>;

/// The counters, cheap to clone and share.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// DHCP requests received, by message type.
    pub dhcp_requests: Family<Labels, Counter>,
    /// DHCP replies sent, by message type (offer, ack, nak).
    pub dhcp_replies: Family<Labels, Counter>,
    /// DHCP requests not answered, by reason.
    pub dhcp_ignored: Family<Labels, Counter>,
    /// TFTP transfers, by result (ok, not_found, denied, timeout, error).
    pub tftp_transfers: Family<Labels, Counter>,
    /// TFTP payload bytes sent.
    pub tftp_bytes: Counter,
    /// iPXE scripts served, by kind (agent, exit).
    pub http_scripts: Family<Labels, Counter>,
    /// IPv6 router solicitations, by result (answered, unknown_host, router_present,
    /// send_failed).
    pub ra_solicitations: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh counters in their own registry.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vmetal_boot");
        let dhcp_requests = Family::<Labels, Counter>::default();
        let dhcp_replies = Family::<Labels, Counter>::default();
        let dhcp_ignored = Family::<Labels, Counter>::default();
        let tftp_transfers = Family::<Labels, Counter>::default();
        let tftp_bytes = Counter::default();
        let http_scripts = Family::<Labels, Counter>::default();
        let ra_solicitations = Family::<Labels, Counter>::default();
        registry.register(
            "dhcp_requests",
            "DHCP requests received",
            dhcp_requests.clone(),
        );
        registry.register("dhcp_replies", "DHCP replies sent", dhcp_replies.clone());
        registry.register(
            "dhcp_ignored",
            "DHCP requests not answered",
            dhcp_ignored.clone(),
        );
        registry.register(
            "tftp_transfers",
            "TFTP read transfers",
            tftp_transfers.clone(),
        );
        registry.register("tftp_bytes", "TFTP payload bytes sent", tftp_bytes.clone());
        registry.register("http_scripts", "iPXE scripts served", http_scripts.clone());
        registry.register(
            "ra_solicitations",
            "IPv6 router solicitations seen",
            ra_solicitations.clone(),
        );
        Self {
            registry: Arc::new(registry),
            dhcp_requests,
            dhcp_replies,
            dhcp_ignored,
            tftp_transfers,
            tftp_bytes,
            http_scripts,
            ra_solicitations,
        }
    }

    /// Increments `family{key=value}`.
    pub fn inc(family: &Family<Labels, Counter>, key: &'static str, value: &'static str) {
        family.get_or_create(&vec![(key, value)]).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
