//! Bad images on the real path: a QEMU VM behind the virtual Redfish BMC, PXE-booted into the
//! agent ramdisk, is given (1) an image whose download stalls halfway, (2) a qcow2 whose
//! connection is cut halfway, (3) an image with the wrong checksum, (4) an image larger than
//! its disk. Each time the agent reports a clear error and the BareMetalHost shows it as a
//! provisioning error; the next image is tried at once; a good image after the last one
//! provisions and the VM boots it.
//!
//! Needs what tests/vm_provisioning.rs needs; a missing tool fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod vmlab;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmetal::vms::VmBmc;
use vmetal_api::{BareMetalHost, ErrorType, ProvisioningState};
use vmlab::*;

/// The smallest disk the agent installs on without root device hints (as IPA: 4 GiB).
const DISK: u64 = 4 << 30;

#[test]
fn bad_images_on_a_vm_end_in_clear_errors_and_a_fixed_image_provisions() {
    let (ns, art, rt) = enter_lab(1);
    rt.block_on(scenario(&ns, &art));
}

/// What the misbehaving image server does with a request.
#[derive(Clone, Copy)]
enum Lie {
    /// Announce the whole file, send half, then go silent with the connection open.
    Stall,
    /// Announce the whole file, send 60%, close.
    Cut,
    /// Announce a length and send nothing (the agent must refuse before writing).
    Announce(u64),
}

/// Serve `body` on `bind` with one lie per path: `/stall`, `/cut`, `/big`.
async fn lying_server(bind: SocketAddr, body: Vec<u8>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = std::sync::Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut req = vec![0u8; 4096];
                let n = sock.read(&mut req).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&req[..n]).to_string();
                let lie = if line.contains("/stall") {
                    Lie::Stall
                } else if line.contains("/cut") {
                    Lie::Cut
                } else {
                    Lie::Announce(4 * DISK)
                };
                let announced = match lie {
                    Lie::Announce(n) => n,
                    _ => body.len() as u64,
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {announced}\r\nContent-Type: application/octet-stream\r\n\r\n"
                );
                let _ = sock.write_all(head.as_bytes()).await;
                match lie {
                    Lie::Stall => {
                        let _ = sock.write_all(&body[..body.len() / 2]).await;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    Lie::Cut => {
                        let _ = sock.write_all(&body[..body.len() * 6 / 10]).await;
                        let _ = sock.shutdown().await;
                    }
                    Lie::Announce(_) => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                }
            });
        }
    });
    addr
}

async fn scenario(ns: &Netns, art: &Artifacts) {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(ns, dir.path(), art, vec![vm(ns, 0, VmBmc::Redfish, DISK)]).await;
    let vms = stack.vms.as_ref().unwrap();
    println!("VMs run with {:?}", vms.accel);
    let v = &vms.vms[0];
    let _keep = KeepLogs {
        test: "vm_bad_images",
        logs: vec![v.vm.serial_log().to_path_buf()],
    };
    let hosts: Api<BareMetalHost> = Api::namespaced(stack.client.clone(), "default");
    let name = v.spec.name.as_str();
    wait_host(
        &hosts,
        name,
        Duration::from_secs(600),
        "available",
        available,
    )
    .await;

    let qcow = std::fs::read(art.testos.join("testos.qcow2")).unwrap();
    let liar = lying_server(SocketAddr::from((ns.server_ip(), 0)), qcow).await;
    let sums = std::fs::read_to_string(art.testos.join("SHA256SUMS")).unwrap();
    let sum_of = |file: &str| {
        sums.lines()
            .find(|l| l.ends_with(file))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .to_string()
    };
    let good_raw = stack.image_url("testos.raw");
    let cases = [
        (
            "a download that stalls halfway",
            json!({"url": format!("http://{liar}/stall/testos.qcow2"), "checksum": sum_of("testos.qcow2"), "format": "qcow2"}),
            &["/stall/", "no data for 15 s"][..],
        ),
        (
            "a qcow2 whose connection is cut at 60%",
            json!({"url": format!("http://{liar}/cut/testos.qcow2"), "checksum": sum_of("testos.qcow2"), "format": "qcow2"}),
            &["downloading", "/cut/"][..],
        ),
        (
            "a checksum that does not match",
            json!({"url": good_raw, "checksum": "0".repeat(64), "checksumType": "sha256", "format": "raw"}),
            &["checksum mismatch", "testos.raw"][..],
        ),
        (
            "an image larger than the disk",
            json!({"url": format!("http://{liar}/big/testos.raw"), "checksum": sum_of("testos.raw"), "format": "raw"}),
            &["too small", "/dev/vda"][..],
        ),
    ];
    let patch = |image: serde_json::Value| {
        let hosts = hosts.clone();
        async move {
            hosts
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"online": true, "image": image}})),
                )
                .await
                .unwrap();
        }
    };
    for (what, image, says) in cases {
        let started = Instant::now();
        patch(image).await;
        let h = wait_host(
            &hosts,
            name,
            Duration::from_secs(400),
            &format!("in error for {what}"),
            |h| {
                h.status.as_ref().is_some_and(|s| {
                    s.error_type == Some(ErrorType::ProvisioningError)
                        && says.iter().all(|w| s.error_message.contains(w))
                })
            },
        )
        .await;
        let status = h.status.clone().unwrap();
        println!(
            "{what}: after {:.0}s: {}",
            started.elapsed().as_secs_f64(),
            status.error_message
        );
        assert_eq!(
            h.provisioning_state(),
            ProvisioningState::Provisioning,
            "{what}"
        );
        assert!(
            !status.error_message.contains("password"),
            "{what}: {}",
            status.error_message
        );
    }

    // The fix: a good image provisions, and the VM boots the test OS from its disk.
    let started = Instant::now();
    patch(json!({"url": good_raw, "checksum": stack.image_url("SHA256SUMS"), "format": "raw"}))
        .await;
    wait_host(
        &hosts,
        name,
        Duration::from_secs(400),
        "provisioned without error",
        |h| h.provisioning_state() == ProvisioningState::Provisioned && !h.has_error(),
    )
    .await;
    let mut serial = SerialWatch::new(v.vm.serial_log());
    let from = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    while serial.find_from("VMETAL-TESTOS-READY", from).is_none() {
        assert!(
            Instant::now() < deadline,
            "the provisioned VM did not boot the test OS"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "the fixed image provisioned and booted after {:.0}s",
        started.elapsed().as_secs_f64()
    );
    stack.stop().await;
}
