//! Power-state queries against 100 virtual IPMI BMCs (one UDP port each): 100 concurrent
//! clients, each polling its own BMC in an open RMCP+ session; prints ops/s and p50/p99 latency.
//!
//! `cargo bench -p vmetal-lab --bench ipmi_power` (set `IPMI_BENCH_SECS` to change the 10 s per
//! run). Runs with cipher suite 3, then 17.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use vmetal_api::bmc_address::BmcAddress;
use vmetal_bmc::ipmi::IpmiBmc;
use vmetal_bmc::{Bmc, ConnectOptions, Credentials};
use vmetal_lab::ipmi::IpmiService;
use vmetal_lab::{ServerIdentity, SimulatedServer};

const SYSTEMS: u32 = 100;

struct Outcome {
    ops: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

async fn run(suite: u8, duration: Duration) -> Outcome {
    let mut bmcs = Vec::new();
    let mut clients = Vec::new();
    for i in 0..SYSTEMS {
        let server = SimulatedServer::new(ServerIdentity::numbered(i));
        let bmc = IpmiService::start(
            "127.0.0.1:0".parse().unwrap(),
            server,
            "admin".into(),
            "bench".into(),
        )
        .await
        .unwrap();
        let address =
            BmcAddress::parse(&format!("ipmi://{}?ciphersuite={suite}", bmc.local_addr())).unwrap();
        let client = IpmiBmc::new(
            address,
            Credentials::new("admin", "bench"),
            ConnectOptions {
                timeout: Duration::from_secs(10),
                retries: 0,
                ..ConnectOptions::default()
            },
        )
        .unwrap();
        // Open the session (RAKP) before the clock starts.
        client.validate().await.unwrap();
        bmcs.push(bmc);
        clients.push(client);
    }

    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match client.power_state().await {
                        Ok(_) => latencies.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                let _ = client.close().await;
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
    drop(bmcs);
    latencies.sort();
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
    sorted[index]
}

fn main() {
    let secs = std::env::var("IPMI_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "IPMI power-state queries: {SYSTEMS} virtual BMCs, {SYSTEMS} concurrent clients, {secs} s per run"
    );
    println!("| cipher suite | ops/s | p50 | p99 | max | errors |");
    println!("|---|---|---|---|---|---|");
    for suite in [3u8, 17] {
        let o = runtime.block_on(run(suite, Duration::from_secs(secs)));
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {suite} | {:.0} | {} | {} | {} | {} |",
            o.ops as f64 / o.elapsed.as_secs_f64(),
            ms(percentile(&o.latencies, 0.50)),
            ms(percentile(&o.latencies, 0.99)),
            ms(o.latencies.last().copied().unwrap_or_default()),
            o.errors
        );
    }
}
