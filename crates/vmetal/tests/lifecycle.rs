//! The BareMetalHost lifecycle end to end, over the embedded API server, with the real
//! controller, agent API, virtual BMCs (Redfish and IPMI) and simulated servers running the real
//! agent library against fixture hardware and sparse disk files.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sha2::Digest;
use vmetal::up::{Stack, UpConfig};
use vmetal_api::{BareMetalHost, ProvisioningState};

async fn stack(lab: u32, dir: &std::path::Path) -> Stack {
    let mut config = UpConfig::new(dir.to_path_buf());
    config.apiserver_bind = "127.0.0.1:0".parse().unwrap();
    config.agent_bind = "127.0.0.1:0".parse().unwrap();
    config.lab = lab;
    config.boot_delay = Duration::from_millis(10);
    config.controller.operation_poll = Duration::from_millis(500);
    config.controller.operation_timeout = Duration::from_secs(60);
    config.controller.backoff_base = Duration::from_millis(200);
    config.controller.backoff_cap = Duration::from_secs(2);
    Stack::start(config).await.unwrap()
}

async fn wait_state(
    hosts: &Api<BareMetalHost>,
    name: &str,
    want: ProvisioningState,
    within: Duration,
) -> BareMetalHost {
    let start = Instant::now();
    loop {
        let h = hosts.get(name).await.unwrap();
        if h.provisioning_state() == want
            && h.status.as_ref().is_some_and(|s| s.error_type.is_none())
        {
            return h;
        }
        if start.elapsed() > within {
            let status = h.status.as_ref().map(|s| {
                format!(
                    "{:?} {:?} {}",
                    s.provisioning.state, s.error_type, s.error_message
                )
            });
            panic!("{name} did not reach {want} within {within:?}; status {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first `len` bytes of a (large, sparse) disk file.
fn read_prefix(path: &std::path::Path, len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

/// The disk holds the image byte for byte, except the MBR's free partition slots, where the
/// agent registered the config-drive partition.
fn assert_image_on_disk(disk: &[u8], image: &[u8]) {
    assert_eq!(
        sha256_hex(&disk[512..image.len()]),
        sha256_hex(&image[512..]),
        "image bytes on disk"
    );
    assert_eq!(
        &disk[..462],
        &image[..462],
        "boot code or first partition entry changed"
    );
    assert_eq!(&disk[510..512], &[0x55, 0xaa]);
}

fn sha256_hex(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_hosts_register_inspect_provision_deprovision_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(8, dir.path()).await;
    let hosts: Api<BareMetalHost> = Api::namespaced(stack.client.clone(), "default");
    let lab = stack.lab.as_ref().unwrap();

    // All eight reach available with the hardware of their fixtures.
    for server in &lab.servers {
        let h = wait_state(
            &hosts,
            &server.name,
            ProvisioningState::Available,
            Duration::from_secs(60),
        )
        .await;
        let hw = h
            .status
            .as_ref()
            .unwrap()
            .hardware
            .as_ref()
            .expect("hardware recorded");
        let spec = &server.spec;
        assert_eq!(
            hw.cpu_count(),
            i64::from(spec.cpus),
            "{}: cpus",
            server.name
        );
        assert_eq!(
            hw.ram_mebibytes, spec.ram_mib as i64,
            "{}: memory",
            server.name
        );
        let macs: Vec<&str> = hw.nics.iter().map(|n| n.mac.as_str()).collect();
        for nic in &spec.nics {
            assert!(
                macs.contains(&nic.1.as_str()),
                "{}: NIC {} missing from {macs:?}",
                server.name,
                nic.1
            );
        }
        assert_eq!(hw.storage.len(), spec.disks.len(), "{}: disks", server.name);
        assert_eq!(
            hw.gpu_count(),
            spec.gpus.len() as i64,
            "{}: GPUs",
            server.name
        );
        assert_eq!(
            *hw,
            vmetal_agent::fixture::expected_details(spec),
            "{}: hardware",
            server.name
        );
        assert!(
            !h.status.as_ref().unwrap().powered_on,
            "{} should be off after inspection",
            server.name
        );
        assert!(h.status.as_ref().unwrap().good_credentials.is_some());
    }
    assert!(
        lab.servers
            .iter()
            .any(|s| s.bmc_address.starts_with("ipmi://"))
    );
    assert!(
        lab.servers
            .iter()
            .any(|s| s.bmc_address.starts_with("redfish"))
    );

    // Provision one with a raw image and user data.
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), "default");
    let ud: Secret = serde_json::from_value(json!({
        "metadata": {"name": "server-1-user-data"},
        "stringData": {"userData": "#cloud-config\nhostname: server-1\n"}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &ud).await.unwrap();
    let image = std::fs::read(stack.image_dir().join("demo.raw")).unwrap();
    let url = stack.image_url("demo.raw");
    let patch = json!({"spec": {"online": true, "userData": {"name": "server-1-user-data"},
        "image": {"url": url, "checksum": format!("{url}.sha256sum"), "checksumType": "sha256", "format": "raw"}}});
    hosts
        .patch("server-1", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let h = wait_state(
        &hosts,
        "server-1",
        ProvisioningState::Provisioned,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        h.status
            .as_ref()
            .unwrap()
            .provisioning
            .image
            .as_ref()
            .unwrap()
            .url,
        url
    );
    let server = &lab.servers[0];
    // The server boots the installed OS from the disk the agent chose.
    let start = Instant::now();
    while server.machine.os().is_none() && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let os = server
        .machine
        .os()
        .expect("server-1 did not boot from disk");
    assert_eq!(os.hostname, "server-1");
    assert_eq!(
        os.user_data.as_deref(),
        Some(&b"#cloud-config\nhostname: server-1\n"[..])
    );
    let disk = server.machine.disk_path(&os.disk);
    let written = read_prefix(&disk, image.len());
    assert_image_on_disk(&written, &image);
    let drive = vmetal_agent::configdrive::read_config_drive(&disk)
        .unwrap()
        .expect("config-2 partition");
    let user_data = vmetal_provisioner::configdrive::read_config_drive_file(
        &drive,
        "openstack/latest/user_data",
    )
    .unwrap()
    .unwrap();
    assert_eq!(user_data, b"#cloud-config\nhostname: server-1\n");

    // Clearing the image deprovisions: back to available, metadata wiped.
    hosts
        .patch(
            "server-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"image": null, "online": false}})),
        )
        .await
        .unwrap();
    wait_state(
        &hosts,
        "server-1",
        ProvisioningState::Available,
        Duration::from_secs(60),
    )
    .await;
    let wiped = read_prefix(&disk, 1 << 20);
    assert!(
        wiped[..1 << 20].iter().all(|b| *b == 0),
        "first MiB not wiped"
    );
    assert!(
        vmetal_agent::configdrive::read_config_drive(&disk)
            .unwrap()
            .is_none()
    );

    // The same with a qcow2 image on another host.
    let qcow = stack.image_dir().join("demo.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(stack.image_dir().join("demo.raw"))
        .arg(&qcow)
        .status()
        .expect("qemu-img is needed (Debian package qemu-utils)");
    assert!(status.success());
    let qsum = sha256_hex(&std::fs::read(&qcow).unwrap());
    let qurl = stack.image_url("demo.qcow2");
    let patch = json!({"spec": {"online": true, "image": {"url": qurl, "checksum": qsum, "format": "qcow2"}}});
    hosts
        .patch("server-2", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    wait_state(
        &hosts,
        "server-2",
        ProvisioningState::Provisioned,
        Duration::from_secs(60),
    )
    .await;
    let start = Instant::now();
    while lab.servers[1].machine.os().is_none() && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let os2 = lab.servers[1]
        .machine
        .os()
        .expect("server-2 did not boot from disk");
    let disk2 = lab.servers[1].machine.disk_path(&os2.disk);
    let written2 = read_prefix(&disk2, image.len());
    assert_image_on_disk(&written2, &image);

    // Deleting a provisioned host deprovisions, powers it off and removes it.
    hosts
        .delete("server-2", &DeleteParams::default())
        .await
        .unwrap();
    let start = Instant::now();
    while hosts.get_opt("server-2").await.unwrap().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "server-2 was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !lab.servers[1].server.power_state().is_on(),
        "server-2 left powered on"
    );
    stack.stop().await;
}
