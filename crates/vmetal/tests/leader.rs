//! `vmetal controller` leader election over the embedded API server with a simulated rack:
//! only the Lease holder reconciles, a crashed leader is replaced within the lease duration, a
//! stopped one hands over at once, and no host state change is ever made twice.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use vmetal::controller_cmd::{self, ControllerOptions, RunningController};
use vmetal::up::{Stack, UpConfig};
use vmetal_api::{BareMetalHost, ProvisioningState};
use vmetal_controller::leader::LeaderConfig;

const LEASE: Duration = Duration::from_secs(4);
const RETRY: Duration = Duration::from_millis(300);

async fn lab(dir: &std::path::Path, servers: u32) -> Stack {
    let mut config = UpConfig::new(dir.to_path_buf());
    config.apiserver_bind = "127.0.0.1:0".parse().unwrap();
    config.agent_bind = "127.0.0.1:0".parse().unwrap();
    config.lab = servers;
    config.boot_delay = Duration::from_millis(10);
    config.run_controller = false;
    Stack::start(config).await.unwrap()
}

async fn candidate(stack: &Stack, identity: &str) -> RunningController {
    let mut options = ControllerOptions {
        leader: Some(LeaderConfig {
            lease_duration: LEASE,
            renew_deadline: Duration::from_secs(3),
            retry_period: RETRY,
            ..LeaderConfig::new("default", "vmetal-controller", identity.to_string())
        }),
        ..ControllerOptions::default()
    };
    options.controller.operation_poll = Duration::from_millis(500);
    options.controller.operation_timeout = Duration::from_secs(60);
    options.controller.backoff_base = Duration::from_millis(200);
    options.controller.backoff_cap = Duration::from_secs(2);
    options.bmc_timeout = Duration::from_secs(5);
    controller_cmd::start(stack.client.clone(), options)
        .await
        .unwrap()
}

async fn holder(stack: &Stack) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(stack.client.clone(), "default");
    leases
        .get_opt("vmetal-controller")
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
}

/// Wait until `c` leads; returns how long it took.
async fn until_leader(c: &RunningController, within: Duration) -> Duration {
    let start = Instant::now();
    while !c.is_leader() {
        assert!(
            start.elapsed() < within,
            "no leader within {within:?} (lease {LEASE:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

async fn wait_state(hosts: &Api<BareMetalHost>, name: &str, want: ProvisioningState) {
    let start = Instant::now();
    loop {
        let h = hosts.get(name).await.unwrap();
        if h.provisioning_state() == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} did not reach {want}: {:?}",
            h.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `from -> to` counts from a metrics text.
fn transitions(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("vmetal_host_transitions_total{"))
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        *out.entry(series.to_string()).or_default() += value.parse::<f64>().unwrap();
    }
    out
}

fn key(from: &str, to: &str) -> String {
    format!(r#"vmetal_host_transitions_total{{from="{from}",to="{to}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_leader_reconciles_crash_and_stop_hand_over_and_nothing_is_done_twice() {
    let dir = tempfile::tempdir().unwrap();
    let stack = lab(dir.path(), 3).await;
    let hosts: Api<BareMetalHost> = Api::namespaced(stack.client.clone(), "default");
    let names: Vec<String> = stack
        .lab
        .as_ref()
        .unwrap()
        .servers
        .iter()
        .map(|s| s.name.clone())
        .collect();

    // A first, then B: A leads, B stands by and reconciles nothing.
    let a = candidate(&stack, "a").await;
    until_leader(&a, LEASE * 2).await;
    let b = candidate(&stack, "b").await;
    for name in &names {
        wait_state(&hosts, name, ProvisioningState::Available).await;
    }
    assert!(a.is_leader() && !b.is_leader(), "exactly one leader");
    assert_eq!(holder(&stack).await.as_deref(), Some("a"));
    assert!(
        transitions(&b.metrics.render()).is_empty(),
        "the standby reconciled"
    );
    assert!(b.metrics.render().contains("vmetal_leader 0"));

    // Provision the first host and crash A mid-way: B takes over within the lease duration
    // and finishes the job from the saved state.
    let url = stack.image_url("demo.raw");
    let patch = json!({"spec": {"online": true, "image": {
        "url": url, "checksum": format!("{url}.sha256sum"), "checksumType": "sha256", "format": "raw"}}});
    hosts
        .patch(&names[0], &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    wait_state(&hosts, &names[0], ProvisioningState::Provisioning).await;
    let a_metrics = a.metrics.clone();
    a.abort();
    let took = until_leader(&b, LEASE + Duration::from_secs(3)).await;
    assert!(
        took <= LEASE + RETRY * 3,
        "takeover after a crash took {took:?}"
    );
    assert_eq!(holder(&stack).await.as_deref(), Some("b"));
    wait_state(&hosts, &names[0], ProvisioningState::Provisioned).await;

    // C stands by; B stops gracefully, releases the Lease and C leads at once.
    let c = candidate(&stack, "c").await;
    tokio::time::sleep(RETRY * 3).await;
    assert!(!c.is_leader());
    let b_metrics = b.metrics.clone();
    b.stop().await;
    let took = until_leader(&c, LEASE).await;
    assert!(
        took < RETRY * 4,
        "a released Lease was taken over after {took:?}"
    );
    hosts
        .patch(
            &names[0],
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"image": null, "online": false}})),
        )
        .await
        .unwrap();
    wait_state(&hosts, &names[0], ProvisioningState::Available).await;

    // Across all three controllers, every state change happened at most once per host.
    let mut all: BTreeMap<String, f64> = BTreeMap::new();
    for m in [&a_metrics, &b_metrics, &c.metrics] {
        for (k, v) in transitions(&m.render()) {
            *all.entry(k).or_default() += v;
        }
    }
    let expected = [
        (key("none", "registering"), 3.0),
        (key("registering", "inspecting"), 3.0),
        (key("inspecting", "available"), 3.0),
        (key("available", "provisioning"), 1.0),
        (key("provisioning", "provisioned"), 1.0),
        (key("provisioned", "deprovisioning"), 1.0),
        (key("deprovisioning", "available"), 1.0),
    ];
    for (k, v) in all.iter() {
        let want = expected
            .iter()
            .find(|(e, _)| e == k)
            .map(|(_, n)| *n)
            .unwrap_or(0.0);
        assert!(*v <= want, "{k} done {v} times, expected {want}: {all:?}");
    }
    // The transitions after the crash were made by the new leaders, once.
    assert_eq!(
        all.get(&key("deprovisioning", "available")),
        Some(&1.0),
        "{all:?}"
    );
    c.stop().await;
    assert_eq!(holder(&stack).await, None, "shutdown releases the Lease");
    stack.stop().await;
}
