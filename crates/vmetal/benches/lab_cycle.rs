//! Throughput of the host lifecycle: N zero-delay lab hosts from creation to `available`
//! (register + inspect), then from image set to `provisioned`, through the real API server,
//! controller, agent API, virtual BMCs and agents, all in this one process.
//!
//! Run: `cargo bench -p vmetal --bench lab_cycle` (N defaults to 200; `LAB_HOSTS=50` to change,
//! `LAB_SLOTS=N` for the concurrent-operation limit, default 20 as Metal3's).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use vmetal::up::{Stack, UpConfig};
use vmetal_api::{BareMetalHost, ProvisioningState};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Poll until every host is in `want`; per-host time from `start` to first seen there.
async fn wait_all(
    hosts: &Api<BareMetalHost>,
    n: usize,
    want: ProvisioningState,
    start: Instant,
) -> (Duration, Vec<Duration>) {
    let mut seen: HashMap<String, Duration> = HashMap::new();
    loop {
        let list = hosts.list(&ListParams::default()).await.unwrap();
        for h in &list.items {
            if h.provisioning_state() == want
                && h.status.as_ref().is_some_and(|s| s.error_type.is_none())
            {
                seen.entry(h.metadata.name.clone().unwrap_or_default())
                    .or_insert_with(|| start.elapsed());
            }
        }
        if seen.len() >= n {
            let mut per: Vec<Duration> = seen.into_values().collect();
            per.sort();
            return (start.elapsed(), per);
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "only {}/{n} hosts reached {want}",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: u32 = std::env::var("LAB_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let mut config = UpConfig::new(dir.path().to_path_buf());
    config.apiserver_bind = "127.0.0.1:0".parse().unwrap();
    config.agent_bind = "127.0.0.1:0".parse().unwrap();
    config.lab = n;
    config.boot_delay = Duration::ZERO;
    config.controller.operation_poll = Duration::from_secs(2);
    if let Some(slots) = std::env::var("LAB_SLOTS").ok().and_then(|v| v.parse().ok()) {
        config.controller.max_concurrent_operations = slots;
    }
    let limit = config.controller.max_concurrent_operations;
    let concurrency = config.controller.concurrency;

    let start = Instant::now();
    let stack = Stack::start(config).await.unwrap();
    let hosts: Api<BareMetalHost> = Api::namespaced(stack.client.clone(), "default");
    let (total, per) = wait_all(&hosts, n as usize, ProvisioningState::Available, start).await;
    println!(
        "{n} hosts created -> available (register + inspect): {:.2} s = {:.1} hosts/s; per host p50 {:.2} s, p99 {:.2} s",
        total.as_secs_f64(),
        f64::from(n) / total.as_secs_f64(),
        percentile(&per, 0.5).as_secs_f64(),
        percentile(&per, 0.99).as_secs_f64(),
    );

    let url = stack.image_url("demo.raw");
    let patch = json!({"spec": {"online": true, "image": {"url": url, "checksum": format!("{url}.sha256sum"), "checksumType": "sha256", "format": "raw"}}});
    let start = Instant::now();
    for i in 1..=n {
        hosts
            .patch(
                &format!("server-{i}"),
                &PatchParams::default(),
                &Patch::Merge(patch.clone()),
            )
            .await
            .unwrap();
    }
    let (total, per) = wait_all(&hosts, n as usize, ProvisioningState::Provisioned, start).await;
    println!(
        "{n} hosts image set -> provisioned (8 MiB raw image + config drive): {:.2} s = {:.1} hosts/s; per host p50 {:.2} s, p99 {:.2} s",
        total.as_secs_f64(),
        f64::from(n) / total.as_secs_f64(),
        percentile(&per, 0.5).as_secs_f64(),
        percentile(&per, 0.99).as_secs_f64(),
    );
    println!("operation slots {limit}, reconcile concurrency {concurrency}");
    println!(
        "peak RSS of the whole process (API server + controller + agent API + {n} simulated servers and agents): {:.0} MiB",
        peak_rss_mib()
    );
    stack.stop().await;
}
