//! Power-state queries against one virtual Redfish service with 100 systems: 100 concurrent
//! clients, each polling its own system for a fixed time; prints ops/s and p50/p99 latency.
//!
//! `cargo bench -p vmetal-lab --bench redfish_power` (set `REDFISH_BENCH_SECS` to change the
//! 10 s per run). Runs over plain HTTP, then HTTPS with certificate verification.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vmetal_api::bmc_address::BmcAddress;
use vmetal_bmc::redfish::RedfishBmc;
use vmetal_bmc::{Bmc, ConnectOptions, Credentials};
use vmetal_lab::redfish::{RedfishConfig, RedfishService};
use vmetal_lab::{ServerIdentity, SimulatedServer};

const SYSTEMS: u32 = 100;

struct Outcome {
    ops: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

async fn run(tls: bool, duration: Duration) -> Outcome {
    let systems: Vec<SimulatedServer> = (0..SYSTEMS)
        .map(|i| SimulatedServer::new(ServerIdentity::numbered(i)))
        .collect();
    let config = RedfishConfig {
        username: "admin".into(),
        password: "bench".into(),
        tls,
    };
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let running = RedfishService::start(bind, systems.clone(), config)
        .await
        .unwrap();
    let base = running.base_url();
    let (scheme, rest) = base.split_once("://").unwrap();
    let options = ConnectOptions {
        timeout: Duration::from_secs(10),
        retries: 0,
        ca_certificates_pem: running.ca_certificate_pem().into_iter().collect(),
        ..ConnectOptions::default()
    };

    let mut clients = Vec::new();
    for system in &systems {
        let address = BmcAddress::parse(&format!(
            "redfish+{scheme}://{rest}/redfish/v1/Systems/{}",
            system.identity().id
        ))
        .unwrap();
        let bmc =
            RedfishBmc::new(address, Credentials::new("admin", "bench"), options.clone()).unwrap();
        // Log in and open the connection before the clock starts.
        bmc.validate().await.unwrap();
        clients.push(bmc);
    }

    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|bmc| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match bmc.power_state().await {
                        Ok(_) => latencies.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                let _ = bmc.close().await;
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Outcome {
        ops: latencies.len(),
        errors,
        elapsed,
        latencies,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let seconds: u64 = std::env::var("REDFISH_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "Redfish power-state queries: {SYSTEMS} systems, {SYSTEMS} concurrent clients, \
         {seconds} s per run, client and server in one process"
    );
    println!("| transport | ops/s | p50 | p99 | max | errors |");
    println!("|---|---|---|---|---|---|");
    for (name, tls) in [("HTTP", false), ("HTTPS (verified)", true)] {
        let outcome = runtime.block_on(run(tls, Duration::from_secs(seconds)));
        let l = &outcome.latencies;
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            outcome.ops as f64 / outcome.elapsed.as_secs_f64(),
            percentile(l, 0.50).as_secs_f64() * 1e3,
            percentile(l, 0.99).as_secs_f64() * 1e3,
            l.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            outcome.errors
        );
    }
}
