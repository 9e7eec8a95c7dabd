//! Metal3's host annotations and modes, end to end: paused, reboot, re-inspection, supplied
//! hardware details with inspection disabled, externally provisioned hosts, detached hosts,
//! and the provisioning concurrency limit (`operationalStatus: delayed`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vmetal::up::{LAB_PASSWORD, LAB_USERNAME, Stack, UpConfig};
use vmetal_api::{BareMetalHost, OperationalStatus, ProvisioningState};

async fn stack(lab: u32, dir: &std::path::Path, slots: usize) -> Stack {
    let mut config = UpConfig::new(dir.to_path_buf());
    config.apiserver_bind = "127.0.0.1:0".parse().unwrap();
    config.agent_bind = "127.0.0.1:0".parse().unwrap();
    config.lab = lab;
    config.boot_delay = Duration::from_millis(50);
    config.controller.operation_poll = Duration::from_millis(300);
    config.controller.steady_poll = Duration::from_millis(500);
    config.controller.backoff_base = Duration::from_millis(200);
    config.controller.backoff_cap = Duration::from_secs(2);
    config.controller.max_concurrent_operations = slots;
    Stack::start(config).await.unwrap()
}

async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn state(h: &BareMetalHost) -> ProvisioningState {
    h.provisioning_state()
}

async fn merge(hosts: &Api<BareMetalHost>, name: &str, patch: serde_json::Value) {
    hosts
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_reboot_reinspect_and_the_concurrency_limit() {
    let dir = tempfile::tempdir().unwrap();
    // Two operation slots for six hosts: some must wait as `delayed`.
    let stack = stack(6, dir.path(), 2).await;
    let hosts: Api<BareMetalHost> = Api::namespaced(stack.client.clone(), "default");
    let mut saw_delayed = false;
    let lab = stack.lab.as_ref().unwrap();
    until("all available", Duration::from_secs(60), async || {
        let list = hosts.list(&Default::default()).await.unwrap();
        saw_delayed |= list.items.iter().any(|h| {
            h.status
                .as_ref()
                .is_some_and(|s| s.operational_status == OperationalStatus::Delayed)
        });
        // The limit is on agents at work: never more than two servers running one.
        let busy = lab
            .servers
            .iter()
            .filter(|s| s.machine.agent_running())
            .count();
        assert!(busy <= 2, "{busy} agents running at once with a limit of 2");
        list.items
            .iter()
            .all(|h| state(h) == ProvisioningState::Available)
    })
    .await;
    // A host can wait as `delayed` between two polls; the Event it records cannot be missed.
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(stack.client.clone(), "default");
    let delayed_events = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Delayed"))
        .count();
    assert!(
        saw_delayed || delayed_events > 0,
        "no host ever waited as delayed"
    );

    // Paused: nothing happens, even a power change; unpausing applies it.
    merge(&hosts, "server-1", json!({"metadata": {"annotations": {"baremetalhost.metal3.io/paused": "user"}}, "spec": {"online": true}})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !lab.servers[0].server.power_state().is_on(),
        "a paused host was powered on"
    );
    merge(
        &hosts,
        "server-1",
        json!({"metadata": {"annotations": {"baremetalhost.metal3.io/paused": null}}}),
    )
    .await;
    until("server-1 powered on", Duration::from_secs(10), async || {
        lab.servers[0].server.power_state().is_on()
    })
    .await;

    // One-shot reboot: powered off, annotation removed, powered on again.
    let boots = lab.servers[0].server.state().boot_count;
    merge(
        &hosts,
        "server-1",
        json!({"metadata": {"annotations": {"reboot.metal3.io": ""}}}),
    )
    .await;
    until("reboot done", Duration::from_secs(10), async || {
        let h = hosts.get("server-1").await.unwrap();
        !h.annotations().contains_key("reboot.metal3.io")
            && lab.servers[0].server.power_state().is_on()
    })
    .await;
    assert!(
        lab.servers[0].server.state().boot_count > boots,
        "the host did not boot again"
    );

    // A keyed reboot keeps the host off until its key is removed.
    merge(
        &hosts,
        "server-1",
        json!({"metadata": {"annotations": {"reboot.metal3.io/remediation": ""}}}),
    )
    .await;
    until("held off", Duration::from_secs(10), async || {
        !lab.servers[0].server.power_state().is_on()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !lab.servers[0].server.power_state().is_on(),
        "keyed reboot did not keep the host off"
    );
    merge(
        &hosts,
        "server-1",
        json!({"metadata": {"annotations": {"reboot.metal3.io/remediation": null}}}),
    )
    .await;
    until("back on", Duration::from_secs(10), async || {
        lab.servers[0].server.power_state().is_on()
    })
    .await;

    // Re-inspection on request.
    let runs = lab.servers[1].machine.agent_runs();
    merge(
        &hosts,
        "server-2",
        json!({"metadata": {"annotations": {"inspect.metal3.io": ""}}}),
    )
    .await;
    until("re-inspected", Duration::from_secs(20), async || {
        let h = hosts.get("server-2").await.unwrap();
        state(&h) == ProvisioningState::Available
            && !h.annotations().contains_key("inspect.metal3.io")
            && lab.servers[1].machine.agent_runs() > runs
    })
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn supplied_hardware_externally_provisioned_and_detached_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(3, dir.path(), 20).await;
    let hosts: Api<BareMetalHost> = Api::namespaced(stack.client.clone(), "default");
    let lab = stack.lab.as_ref().unwrap();
    until("lab available", Duration::from_secs(30), async || {
        hosts
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .all(|h| state(h) == ProvisioningState::Available)
    })
    .await;

    // Hardware details supplied with inspection disabled: no agent boot needed. The host reuses
    // server-3's BMC, whose own BareMetalHost is deleted first.
    let address = lab.servers[2].bmc_address.clone();
    hosts
        .delete("server-3", &DeleteParams::default())
        .await
        .unwrap();
    until("server-3 gone", Duration::from_secs(20), async || {
        hosts.get_opt("server-3").await.unwrap().is_none()
    })
    .await;
    let runs = lab.servers[2].machine.agent_runs();
    let supplied =
        json!({"cpu": {"arch": "x86_64", "count": 96}, "ramMebibytes": 786432, "hostname": "big"});
    let host: BareMetalHost = serde_json::from_value(json!({
        "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
        "metadata": {"name": "supplied", "annotations": {"inspect.metal3.io/hardwaredetails": supplied.to_string()}},
        "spec": {"online": false, "inspectionMode": "disabled", "bmc": {"address": address, "credentialsName": "server-3-bmc"}}
    }))
    .unwrap();
    hosts.create(&PostParams::default(), &host).await.unwrap();
    until("supplied available", Duration::from_secs(20), async || {
        let h = hosts.get("supplied").await.unwrap();
        state(&h) == ProvisioningState::Available
            && h.hardware()
                .is_some_and(|hw| hw.cpu_count() == 96 && hw.ram_mebibytes == 786432)
    })
    .await;
    assert_eq!(
        lab.servers[2].machine.agent_runs(),
        runs,
        "inspection ran although disabled"
    );
    let _ = (LAB_USERNAME, LAB_PASSWORD);

    // Externally provisioned: only power is managed.
    merge(
        &hosts,
        "supplied",
        json!({"spec": {"externallyProvisioned": true, "online": true}}),
    )
    .await;
    until(
        "externally provisioned and on",
        Duration::from_secs(20),
        async || {
            let h = hosts.get("supplied").await.unwrap();
            state(&h) == ProvisioningState::ExternallyProvisioned
                && lab.servers[2].server.power_state().is_on()
        },
    )
    .await;
    assert_eq!(lab.servers[2].machine.agent_runs(), runs);

    // Detached: management stops; deleting skips power-off.
    merge(&hosts, "server-1", json!({"metadata": {"annotations": {"baremetalhost.metal3.io/detached": ""}}, "spec": {"online": true}})).await;
    until("detached", Duration::from_secs(10), async || {
        hosts
            .get("server-1")
            .await
            .unwrap()
            .status
            .is_some_and(|s| s.operational_status == OperationalStatus::Detached)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !lab.servers[0].server.power_state().is_on(),
        "a detached host was powered on"
    );
    hosts
        .delete("server-1", &DeleteParams::default())
        .await
        .unwrap();
    until(
        "detached host deleted",
        Duration::from_secs(10),
        async || hosts.get_opt("server-1").await.unwrap().is_none(),
    )
    .await;
    stack.stop().await;
}
