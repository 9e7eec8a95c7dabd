//! The host lifecycle under crashes and bad input: a controller killed mid-inspection and
//! mid-provisioning, broken credentials and addresses, bad images, and a BMC outage — each
//! with the errorType a Metal3 user expects and recovery once the cause is fixed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use vmetal::up::{LAB_PASSWORD, LAB_USERNAME, Stack, UpConfig};
use vmetal_api::{BareMetalHost, ErrorType, ProvisioningState};
use vmetal_lab::redfish::{RedfishConfig, RedfishService};
use vmetal_lab::{ServerIdentity, SimulatedServer};

async fn stack(lab: u32, dir: &std::path::Path, boot_delay: Duration) -> Stack {
    // RUST_LOG=vmetal_controller=info shows the state machine at work when a test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = UpConfig::new(dir.to_path_buf());
    config.apiserver_bind = "127.0.0.1:0".parse().unwrap();
    config.agent_bind = "127.0.0.1:0".parse().unwrap();
    config.lab = lab;
    config.boot_delay = boot_delay;
    config.controller.operation_poll = Duration::from_millis(300);
    config.controller.steady_poll = Duration::from_secs(1);
    config.controller.operation_timeout = Duration::from_secs(60);
    config.controller.backoff_base = Duration::from_millis(200);
    config.controller.backoff_cap = Duration::from_secs(2);
    Stack::start(config).await.unwrap()
}

async fn wait_for(
    hosts: &Api<BareMetalHost>,
    name: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&BareMetalHost) -> bool,
) -> BareMetalHost {
    let start = Instant::now();
    loop {
        if let Some(h) = hosts.get_opt(name).await.unwrap()
            && pred(&h)
        {
            return h;
        }
        if start.elapsed() > within {
            let h = hosts.get_opt(name).await.unwrap();
            let status = h.and_then(|h| h.status).map(|s| {
                format!(
                    "{:?} {:?} {:?} {}",
                    s.provisioning.state, s.operational_status, s.error_type, s.error_message
                )
            });
            panic!("{name}: {what} not reached within {within:?}; status {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state_is(s: ProvisioningState) -> impl Fn(&BareMetalHost) -> bool {
    move |h| {
        h.provisioning_state() == s && h.status.as_ref().is_some_and(|st| st.error_type.is_none())
    }
}

fn error_is(e: ErrorType) -> impl Fn(&BareMetalHost) -> bool {
    move |h| h.status.as_ref().is_some_and(|st| st.error_type == Some(e))
}

fn message(h: &BareMetalHost) -> String {
    h.status
        .as_ref()
        .map(|s| s.error_message.clone())
        .unwrap_or_default()
}

fn image_patch(url: &str, checksum: &str, format: &str) -> Patch<serde_json::Value> {
    Patch::Merge(
        json!({"spec": {"online": true, "image": {"url": url, "checksum": checksum, "format": format}}}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controller_crashes_mid_inspection_and_mid_provisioning_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Slow boots so the crashes land while agents are at work.
    let mut stack = stack(6, dir.path(), Duration::from_millis(400)).await;
    let hosts: Api<BareMetalHost> = Api::namespaced(stack.client.clone(), "default");
    wait_for(
        &hosts,
        "server-1",
        Duration::from_secs(30),
        "inspecting",
        |h| h.provisioning_state() == ProvisioningState::Inspecting,
    )
    .await;
    stack.crash_controller();
    tokio::time::sleep(Duration::from_millis(600)).await;
    stack.start_controller();
    for i in 1..=6 {
        wait_for(
            &hosts,
            &format!("server-{i}"),
            Duration::from_secs(60),
            "available",
            state_is(ProvisioningState::Available),
        )
        .await;
    }

    let url = stack.image_url("demo.raw");
    for i in 1..=3 {
        hosts
            .patch(
                &format!("server-{i}"),
                &PatchParams::default(),
                &image_patch(&url, &format!("{url}.sha256sum"), "raw"),
            )
            .await
            .unwrap();
    }
    wait_for(
        &hosts,
        "server-1",
        Duration::from_secs(30),
        "provisioning",
        |h| h.provisioning_state() == ProvisioningState::Provisioning,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.crash_controller();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stack.start_controller();
    for i in 1..=3 {
        wait_for(
            &hosts,
            &format!("server-{i}"),
            Duration::from_secs(60),
            "provisioned",
            state_is(ProvisioningState::Provisioned),
        )
        .await;
    }
    let lab = stack.lab.as_ref().unwrap();
    for server in &lab.servers[..3] {
        // One agent boot for inspection, one for deployment: no cycle ran twice.
        assert_eq!(
            server.machine.agent_runs(),
            2,
            "{} booted the agent {} times",
            server.name,
            server.machine.agent_runs()
        );
    }
    for server in &lab.servers[3..] {
        assert_eq!(
            server.machine.agent_runs(),
            1,
            "{} booted the agent {} times",
            server.name,
            server.machine.agent_runs()
        );
    }
    stack.stop().await;
}

/// A virtual Redfish BMC for one extra server that the lab does not manage.
async fn extra_bmc() -> (SocketAddr, vmetal_lab::redfish::RunningRedfish) {
    let server = SimulatedServer::new(ServerIdentity::numbered(99));
    let bmc = RedfishService::start(
        "127.0.0.1:0".parse().unwrap(),
        vec![server],
        RedfishConfig {
            username: LAB_USERNAME.into(),
            password: LAB_PASSWORD.into(),
            tls: false,
        },
    )
    .await
    .unwrap();
    (bmc.local_addr(), bmc)
}

fn host(name: &str, address: &str, secret: &str) -> BareMetalHost {
    serde_json::from_value(json!({
        "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
        "metadata": {"name": name},
        "spec": {"online": false, "bmc": {"address": address, "credentialsName": secret}, "inspectionMode": "disabled"}
    }))
    .unwrap()
}

fn secret(name: &str, password: &str) -> Secret {
    serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"username": LAB_USERNAME, "password": password}})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registration_errors_name_the_cause_and_heal_when_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(0, dir.path(), Duration::ZERO).await;
    let hosts: Api<BareMetalHost> = Api::namespaced(stack.client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), "default");
    let (addr, _bmc) = extra_bmc().await;
    let address = format!("redfish+http://{addr}/redfish/v1/Systems/100");

    // Missing Secret: registration error naming it; creating it heals the host.
    hosts
        .create(
            &PostParams::default(),
            &host("no-secret", &address, "not-there"),
        )
        .await
        .unwrap();
    let h = wait_for(
        &hosts,
        "no-secret",
        Duration::from_secs(20),
        "registration error",
        error_is(ErrorType::RegistrationError),
    )
    .await;
    assert!(message(&h).contains("default/not-there"), "{}", message(&h));
    secrets
        .create(&PostParams::default(), &secret("not-there", LAB_PASSWORD))
        .await
        .unwrap();
    wait_for(
        &hosts,
        "no-secret",
        Duration::from_secs(30),
        "available",
        state_is(ProvisioningState::Available),
    )
    .await;

    // Wrong password: registration error without the password; fixing the Secret heals it.
    secrets
        .create(&PostParams::default(), &secret("wrong", "hunter2-wrong"))
        .await
        .unwrap();
    hosts
        .create(
            &PostParams::default(),
            &host("wrong-password", &address, "wrong"),
        )
        .await
        .unwrap();
    let h = wait_for(
        &hosts,
        "wrong-password",
        Duration::from_secs(20),
        "registration error",
        error_is(ErrorType::RegistrationError),
    )
    .await;
    assert!(
        message(&h).contains("rejected the credentials"),
        "{}",
        message(&h)
    );
    assert!(!message(&h).contains("hunter2"));
    secrets
        .patch(
            "wrong",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": LAB_PASSWORD}})),
        )
        .await
        .unwrap();
    let h = wait_for(
        &hosts,
        "wrong-password",
        Duration::from_secs(30),
        "available",
        state_is(ProvisioningState::Available),
    )
    .await;
    let st = h.status.unwrap();
    assert_eq!(st.good_credentials, st.tried_credentials);

    // Unknown scheme: registration error naming the scheme.
    hosts
        .create(
            &PostParams::default(),
            &host("bad-scheme", "frobnitz://10.0.0.1", "wrong"),
        )
        .await
        .unwrap();
    let h = wait_for(
        &hosts,
        "bad-scheme",
        Duration::from_secs(20),
        "registration error",
        error_is(ErrorType::RegistrationError),
    )
    .await;
    assert!(message(&h).contains("frobnitz"), "{}", message(&h));

    // No BMC details at all: unmanaged, not an error.
    let unmanaged: BareMetalHost = serde_json::from_value(json!({
        "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost", "metadata": {"name": "unmanaged"}, "spec": {"online": false}
    }))
    .unwrap();
    hosts
        .create(&PostParams::default(), &unmanaged)
        .await
        .unwrap();
    wait_for(
        &hosts,
        "unmanaged",
        Duration::from_secs(20),
        "unmanaged",
        state_is(ProvisioningState::Unmanaged),
    )
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_images_fail_provisioning_clearly_and_a_fixed_image_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(3, dir.path(), Duration::ZERO).await;
    let hosts: Api<BareMetalHost> = Api::namespaced(stack.client.clone(), "default");
    for i in 1..=3 {
        wait_for(
            &hosts,
            &format!("server-{i}"),
            Duration::from_secs(30),
            "available",
            state_is(ProvisioningState::Available),
        )
        .await;
    }
    let good = stack.image_url("demo.raw");
    let missing = stack.image_url("no-such-image.raw");
    hosts
        .patch(
            "server-1",
            &PatchParams::default(),
            &image_patch(&missing, &"a".repeat(64), "raw"),
        )
        .await
        .unwrap();
    hosts
        .patch(
            "server-2",
            &PatchParams::default(),
            &image_patch(&good, &"b".repeat(64), "raw"),
        )
        .await
        .unwrap();
    hosts
        .patch(
            "server-3",
            &PatchParams::default(),
            &image_patch(&good, &"c".repeat(64), "vmdk"),
        )
        .await
        .unwrap();

    let h = wait_for(
        &hosts,
        "server-1",
        Duration::from_secs(30),
        "provisioning error",
        error_is(ErrorType::ProvisioningError),
    )
    .await;
    assert!(message(&h).contains("404"), "{}", message(&h));
    assert!(message(&h).contains("no-such-image.raw"), "{}", message(&h));
    let h = wait_for(
        &hosts,
        "server-2",
        Duration::from_secs(30),
        "provisioning error",
        error_is(ErrorType::ProvisioningError),
    )
    .await;
    assert!(
        message(&h).to_lowercase().contains("checksum"),
        "{}",
        message(&h)
    );
    let h = wait_for(
        &hosts,
        "server-3",
        Duration::from_secs(30),
        "provisioning error",
        error_is(ErrorType::ProvisioningError),
    )
    .await;
    assert!(
        message(&h).contains("Vmdk") || message(&h).contains("vmdk"),
        "{}",
        message(&h)
    );

    // The checksum-mismatch host never reaches provisioned, however long it retries.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let h = hosts.get("server-2").await.unwrap();
    assert_eq!(h.provisioning_state(), ProvisioningState::Provisioning);
    assert!(h.status.unwrap().provisioning_fail_count.unwrap_or(0) >= 1);

    // Fixing the URL recovers without anyone touching the error.
    hosts
        .patch(
            "server-1",
            &PatchParams::default(),
            &image_patch(&good, &format!("{good}.sha256sum"), "raw"),
        )
        .await
        .unwrap();
    let h = wait_for(
        &hosts,
        "server-1",
        Duration::from_secs(30),
        "provisioned",
        state_is(ProvisioningState::Provisioned),
    )
    .await;
    assert_eq!(h.status.unwrap().error_count, 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thirty_second_bmc_outage_heals_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(2, dir.path(), Duration::ZERO).await;
    let hosts: Api<BareMetalHost> = Api::namespaced(stack.client.clone(), "default");
    for i in 1..=2 {
        wait_for(
            &hosts,
            &format!("server-{i}"),
            Duration::from_secs(30),
            "available",
            state_is(ProvisioningState::Available),
        )
        .await;
    }
    // server-1 (Redfish) provisioned, server-2 (IPMI) available.
    let url = stack.image_url("demo.raw");
    hosts
        .patch(
            "server-1",
            &PatchParams::default(),
            &image_patch(&url, &format!("{url}.sha256sum"), "raw"),
        )
        .await
        .unwrap();
    wait_for(
        &hosts,
        "server-1",
        Duration::from_secs(30),
        "provisioned",
        state_is(ProvisioningState::Provisioned),
    )
    .await;
    // Ask server-2 to power on, so the outage hits a host with work to do.
    hosts
        .patch(
            "server-2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"online": true}})),
        )
        .await
        .unwrap();

    let lab = stack.lab.as_ref().unwrap();
    for s in &lab.servers {
        s.server.faults().set_drop_fraction(1.0);
    }
    let outage = Instant::now();
    // During the outage the hosts report a power management error...
    wait_for(
        &hosts,
        "server-2",
        Duration::from_secs(25),
        "power management error",
        error_is(ErrorType::PowerManagementError),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed())).await;
    for s in &lab.servers {
        s.server.faults().clear();
    }
    // ...and once the BMCs answer again, both heal with no error left behind.
    let h1 = wait_for(
        &hosts,
        "server-1",
        Duration::from_secs(30),
        "healthy provisioned",
        state_is(ProvisioningState::Provisioned),
    )
    .await;
    let h2 = wait_for(
        &hosts,
        "server-2",
        Duration::from_secs(30),
        "healthy available",
        |h| {
            state_is(ProvisioningState::Available)(h)
                && h.status.as_ref().is_some_and(|s| s.powered_on)
        },
    )
    .await;
    for h in [h1, h2] {
        let st = h.status.unwrap();
        assert_eq!(st.error_message, "");
        assert_eq!(st.operational_status, vmetal_api::OperationalStatus::Ok);
    }
    assert!(lab.servers[1].server.power_state().is_on());
    stack.stop().await;
}
