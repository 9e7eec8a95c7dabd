//! Simulated machines against the scripted fake agent API: a PXE boot inspects and deploys
//! through the real agent, a disk boot then finds the config drive's metadata and user data.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use vmetal_agent::testing::FakeAgentApi;
use vmetal_agent::{expected_details, fat};
use vmetal_api::agent::{AgentCommand, DeployCommand, WipeMode};
use vmetal_bmc::{BootDevice, BootModeOverride, BootOverride};
use vmetal_lab::rack::lab_spec;
use vmetal_lab::{BootSource, ServerBackend, ServerIdentity, SimulatedMachine, SimulatedServer};

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A 4 MiB whole-disk image with an MBR and a data pattern.
fn image() -> Vec<u8> {
    let mut img: Vec<u8> = (0..4u32 << 20).map(|i| (i % 253) as u8).collect();
    img[..512].fill(0);
    img[446 + 4] = 0x83;
    img[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    img[446 + 12..446 + 16].copy_from_slice(&4096u32.to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xAA;
    img
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pxe_boot_inspects_and_deploys_then_disk_boot_runs_the_user_data() {
    let dir = tempfile::tempdir().unwrap();
    let index = 3; // has GPUs
    let spec = lab_spec(index);
    let macs: Vec<&str> = spec.nics.iter().map(|n| n.1.as_str()).collect();
    let api = FakeAgentApi::start(&macs[..1]).await.unwrap();
    let machine = SimulatedMachine::new(
        spec.clone(),
        dir.path().to_path_buf(),
        api.url.clone(),
        Duration::ZERO,
    )
    .unwrap();
    let server = SimulatedServer::new(ServerIdentity::numbered(index));
    server.set_backend(Arc::new(machine.clone()));

    // Inspection: one-time PXE boot through the BMC model.
    api.set_script(vec![AgentCommand::Inspect {
        id: "c1/inspect".into(),
    }]);
    server.set_boot_override(BootOverride::once(
        BootDevice::Pxe,
        Some(BootModeOverride::Uefi),
    ));
    server.power_on();
    wait_until("inspection", || api.finished() && !machine.agent_running()).await;
    let inventory = api.result("c1/inspect").unwrap().inventory.unwrap();
    assert_eq!(inventory, expected_details(&spec));
    assert!(inventory.gpu_count() >= 2);
    assert_eq!(machine.last_agent_error(), None);
    server.power_off();

    // Deployment with a config drive.
    let img = image();
    let url = api.add_file("os.img", img.clone());
    let drive = fat::build(
        "config-2",
        &[
            (
                "openstack/latest/meta_data.json",
                br#"{"uuid":"u-3","local-hostname":"gpu-node-3"}"#,
            ),
            (
                "openstack/latest/user_data",
                b"#cloud-config\nruncmd: [kubeadm join]\n",
            ),
        ],
    )
    .unwrap();
    api.set_script(vec![AgentCommand::Deploy(Box::new(DeployCommand {
        id: "c2/deploy".into(),
        image_url: url,
        checksum: sha256_hex(&img),
        checksum_type: None,
        format: None,
        root_device_hints: None,
        config_drive: Some(base64::engine::general_purpose::STANDARD.encode(&drive)),
        download_stall_timeout_seconds: None,
    }))]);
    server.set_boot_override(BootOverride::once(BootDevice::Pxe, None));
    server.power_on();
    wait_until("deployment", || api.finished() && !machine.agent_running()).await;
    let result = api.result("c2/deploy").unwrap();
    assert_eq!(result.error, None, "{result:?}");
    let root = result.root_device.unwrap();
    server.power_off();

    // Boot from disk: the simulated OS comes up with the config drive's data.
    server.power_on();
    let os = machine.os().expect("OS booted from disk");
    assert_eq!(format!("/dev/{}", os.disk), root);
    assert_eq!(os.hostname, "gpu-node-3");
    assert!(os.meta_data.contains("u-3"));
    assert_eq!(
        os.user_data.as_deref(),
        Some(&b"#cloud-config\nruncmd: [kubeadm join]\n"[..])
    );
    let mut head = vec![0u8; img.len()];
    std::io::Read::read_exact(
        &mut std::fs::File::open(machine.disk_path(&root)).unwrap(),
        &mut head,
    )
    .unwrap();
    assert_eq!(head[512..], img[512..], "the image is on the root disk");

    // Power off clears the OS; cleaning wipes the metadata so the disk no longer boots.
    server.power_off();
    assert_eq!(machine.os(), None);
    api.set_script(vec![AgentCommand::Wipe {
        id: "c3/wipe".into(),
        mode: WipeMode::Metadata,
    }]);
    machine.boot(&BootSource::Pxe, BootModeOverride::Uefi);
    wait_until("cleaning", || api.finished() && !machine.agent_running()).await;
    machine.boot(&BootSource::Disk, BootModeOverride::Uefi);
    assert_eq!(machine.os(), None);
    assert_eq!(machine.agent_runs(), 3);
}

#[tokio::test]
async fn power_off_stops_a_waiting_agent_and_delayed_boots_respect_it() {
    let dir = tempfile::tempdir().unwrap();
    let spec = lab_spec(0);
    let api = FakeAgentApi::start(&[spec.nics[0].1.as_str()])
        .await
        .unwrap();
    let machine = SimulatedMachine::new(
        spec,
        dir.path().to_path_buf(),
        api.url.clone(),
        Duration::from_millis(50),
    )
    .unwrap();
    // No script: the agent keeps looking up until powered off.
    machine.boot(&BootSource::Pxe, BootModeOverride::Uefi);
    assert!(machine.agent_running());
    wait_until("a lookup", || api.lookups() >= 1).await;
    machine.power_off();
    tokio::task::yield_now().await;
    wait_until("the agent to stop", || !machine.agent_running()).await;
    let lookups = api.lookups();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        api.lookups(),
        lookups,
        "a powered-off agent must not call the API"
    );
}
