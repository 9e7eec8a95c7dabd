//! API server throughput and watch latency, through kube-rs over HTTPS with the durable store
//! (what `vmetal up` runs): creates/s and updates/s of a BareMetalHost-sized object, and the
//! delivery latency of a change to 100 concurrent watchers.
//!
//! Run: `cargo bench -p vmetal-apiserver --bench apiserver` (results go in BENCHMARKS.md).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use serde_json::json;
use vmetal_api::BareMetalHost;

const CREATES: usize = 2000;
const UPDATES: usize = 2000;
const WRITERS: usize = 8;
const WATCHERS: usize = 100;
const WATCHED_CHANGES: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// A host with a status like an inspected server's: about 2.5 KB of JSON.
fn host(name: &str) -> BareMetalHost {
    serde_json::from_value(json!({
        "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
        "metadata": {"name": name, "namespace": "default", "labels": {"rack": "r1", "pool": "general"},
                      "annotations": {"note": "x".repeat(400)}},
        "spec": {"online": true, "bootMACAddress": "52:54:00:12:34:56", "bootMode": "UEFI",
                 "bmc": {"address": "redfish+https://10.0.0.10/redfish/v1/Systems/1", "credentialsName": "bmc-secret"},
                 "rootDeviceHints": {"minSizeGigabytes": 100},
                 "image": {"url": "http://images.example.com/ubuntu-24.04.qcow2", "checksum": "a".repeat(64), "checksumType": "sha256", "format": "qcow2"},
                 "description": "d".repeat(800)}
    }))
    .unwrap()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let server = vmetal_apiserver::start(vmetal_apiserver::ApiServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(dir.path().to_path_buf()),
    })
    .await
    .unwrap();
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig_path().unwrap()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in vmetal_api::crds::all() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");
    let size = serde_json::to_vec(&host("h-00000")).unwrap().len();
    println!(
        "object size: {size} bytes of JSON; {WRITERS} concurrent writers; durable store (fsync per write), HTTPS, kube-rs client"
    );

    // Creates.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let hosts = hosts.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..CREATES).step_by(WRITERS) {
                hosts
                    .create(&PostParams::default(), &host(&format!("h-{i:05}")))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "creates: {CREATES} in {secs:.2} s = {:.0}/s",
        CREATES as f64 / secs
    );

    // Updates (merge patches of the spec).
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let hosts = hosts.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..UPDATES).step_by(WRITERS) {
                let name = format!("h-{:05}", i % CREATES);
                let patch = json!({"spec": {"description": format!("update {i}")}});
                hosts
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "updates: {UPDATES} in {secs:.2} s = {:.0}/s",
        UPDATES as f64 / secs
    );

    // Watch latency: each change carries its send time; every watcher measures arrival.
    let t0 = Instant::now();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let rv = hosts
        .get("h-00000")
        .await
        .unwrap()
        .resource_version()
        .unwrap();
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let hosts = hosts.clone();
        let latencies = latencies.clone();
        let rv = rv.clone();
        let stream = hosts
            .watch(
                &WatchParams::default()
                    .fields("metadata.name=h-00000")
                    .timeout(290),
                &rv,
            )
            .await
            .unwrap();
        watchers.push(tokio::spawn(async move {
            let mut stream = stream.boxed();
            let mut seen = 0;
            while let Some(Ok(event)) = stream.next().await {
                if let WatchEvent::Modified(h) = event {
                    let sent: u128 = h
                        .annotations()
                        .get("sent-us")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let now = t0.elapsed().as_micros();
                    latencies
                        .lock()
                        .unwrap()
                        .push(Duration::from_micros((now - sent.min(now)) as u64));
                    seen += 1;
                    if seen == WATCHED_CHANGES {
                        return;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..WATCHED_CHANGES {
        let sent = t0.elapsed().as_micros();
        let patch =
            json!({"metadata": {"annotations": {"sent-us": sent.to_string(), "i": i.to_string()}}});
        hosts
            .patch("h-00000", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for w in watchers {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .unwrap()
            .unwrap();
    }
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    println!(
        "watch delivery: {WATCHERS} watchers x {WATCHED_CHANGES} changes = {} deliveries; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.len(),
        percentile(&l, 0.50).as_secs_f64() * 1e3,
        percentile(&l, 0.99).as_secs_f64() * 1e3,
        l.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}
