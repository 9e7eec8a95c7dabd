//! The whole path on servers that behave like real ones: `vmetal up` with two QEMU VMs, one
//! behind the virtual Redfish BMC and one behind IPMI, on a provisioning bridge in a network
//! namespace where vmetal's boot services answer DHCP, TFTP and HTTP.
//!
//! Each VM registers, PXE-boots the agent ramdisk and is inspected (its real virtio NIC, disk
//! and CPUs); a Machine claims it and the agent writes the test OS (qcow2 to one, raw to the
//! other); the VM reboots from disk, the test OS runs the user data and its Node joins the
//! tenant cluster; deleting the Machine wipes the disk and the host is available again.
//! Prints the accelerator and a per-phase timing line (the numbers in BENCHMARKS.md).
//!
//! Needs root, iproute2, qemu-system-x86, ipxe-qemu, ipxe, qemu-utils, and what the ramdisk and
//! test-OS builds need (cpio, mtools, syslinux); a missing tool fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod vmlab;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use vmetal::up::Stack;
use vmetal::vms::VmBmc;
use vmetal_api::{BareMetalHost, Machine, MachinePhase, ProvisioningState};
use vmlab::*;

const DISK: u64 = 4 << 30;

#[test]
fn vms_behind_redfish_and_ipmi_are_inspected_provisioned_joined_and_wiped() {
    let (ns, art, rt) = enter_lab(2);
    rt.block_on(scenario(&ns, &art));
}

async fn scenario(ns: &Netns, art: &Artifacts) {
    let dir = tempfile::tempdir().unwrap();
    let specs = vec![
        vm(ns, 0, VmBmc::Redfish, DISK),
        vm(ns, 1, VmBmc::Ipmi, DISK),
    ];
    let stack = start_stack(ns, dir.path(), art, specs).await;
    let vms = stack.vms.as_ref().unwrap();
    println!("VMs run with {:?}", vms.accel);
    let _keep = KeepLogs {
        test: "vm_provisioning",
        logs: vms
            .vms
            .iter()
            .map(|v| v.vm.serial_log().to_path_buf())
            .collect(),
    };
    let hosts: Api<BareMetalHost> = Api::namespaced(stack.client.clone(), "default");

    // Registration and inspection of both VMs at once.
    let started = Instant::now();
    for v in &vms.vms {
        let h = wait_host(
            &hosts,
            &v.spec.name,
            Duration::from_secs(600),
            "available",
            available,
        )
        .await;
        let hw = h.status.and_then(|s| s.hardware).expect("hardware details");
        let nic = hw.nics.iter().find(|n| n.mac == v.spec.mac);
        assert!(
            nic.is_some(),
            "{}: inspected NICs {:?} lack the VM's MAC {}",
            v.spec.name,
            hw.nics,
            v.spec.mac
        );
        assert_eq!(
            hw.storage.len(),
            1,
            "{}: disks {:?}",
            v.spec.name,
            hw.storage
        );
        assert_eq!(
            hw.storage[0].size_bytes as u64, DISK,
            "{}: disk size",
            v.spec.name
        );
        assert_eq!(
            hw.cpu.as_ref().map(|c| c.count),
            Some(2),
            "{}: CPU count",
            v.spec.name
        );
        assert!(
            (900..=1024).contains(&hw.ram_mebibytes),
            "{}: RAM {} MiB",
            v.spec.name,
            hw.ram_mebibytes
        );
        assert!(
            !v.vm.running(),
            "{}: still running after inspection",
            v.spec.name
        );
    }
    println!(
        "both VMs inspected and available after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // One Machine at a time, so each phase timing is of one VM alone on the machine.
    let extra: Secret = serde_json::from_value(json!({
        "metadata": {"name": "vm-user-data"},
        "stringData": {"userData": "#cloud-config\nruncmd:\n  - echo VMETAL-RUNCMD-MARKER $(hostname)\nwrite_files:\n  - path: /etc/vmetal-test\n    content: written by cloud-init\n"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(stack.client.clone(), "default")
        .create(&PostParams::default(), &extra)
        .await
        .unwrap();
    let mut timings = Vec::new();
    for (i, format) in [(0usize, "qcow2"), (1, "raw")] {
        let v = &vms.vms[i];
        let name = format!("m-{}", i + 1);
        let phases = provision(&stack, v, &name, format).await;
        println!(
            "{} ({format}, {:?} BMC): {}",
            v.spec.name,
            v.spec.bmc,
            phases.line()
        );
        timings.push(phases);
    }
    let out = repo().join("target/vm-artifacts");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("timings.txt"),
        timings.iter().map(|t| t.line() + "\n").collect::<String>(),
    )
    .unwrap();

    // Release: wipe, power off, available again; the disk edges read as zeros.
    let machines: Api<Machine> = Api::namespaced(stack.client.clone(), "default");
    for name in ["m-1", "m-2"] {
        machines
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    for v in &vms.vms {
        wait_host(
            &hosts,
            &v.spec.name,
            Duration::from_secs(600),
            "available again",
            |h| available(h) && h.spec.consumer_ref.is_none(),
        )
        .await;
        wait_until(Duration::from_secs(60), || !v.vm.running()).await;
        let (first, last) =
            edges_are_zero(&dir.path().join("vms").join(&v.spec.name).join("disk.raw"));
        assert!(
            first && last,
            "{}: first MiB zero {first}, last MiB zero {last}",
            v.spec.name
        );
    }
    stack.stop().await;
}

/// How long each phase of one Machine's way to a joined Node took:
/// claim (Machine created → the BMC powers the VM on), PXE (→ the agent's kernel starts:
/// firmware, DHCP, iPXE, kernel and initramfs over HTTP), agent boot (→ the agent's lookup is
/// answered: drivers, DHCP, agent start), image write (→ the host is `provisioned`: download,
/// write, config drive, result seen by the controller), disk boot (→ the test OS's init starts:
/// reboot through the BMC, firmware, syslinux, kernel), join (→ the Node exists: network,
/// config drive, user data, kubeadm join).
struct Phases {
    vm: String,
    format: &'static str,
    claim: Duration,
    pxe: Duration,
    agent_boot: Duration,
    image_write: Duration,
    disk_boot: Duration,
    join: Duration,
    total: Duration,
}

impl Phases {
    fn line(&self) -> String {
        let s = |d: Duration| format!("{:.1}s", d.as_secs_f64());
        format!(
            "{} {}: claim+power-on {} | PXE {} | agent boot {} | image write {} | disk boot {} | OS start to Node {} | total {}",
            self.vm,
            self.format,
            s(self.claim),
            s(self.pxe),
            s(self.agent_boot),
            s(self.image_write),
            s(self.disk_boot),
            s(self.join),
            s(self.total)
        )
    }
}

async fn wait_until(within: Duration, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < within,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Create Machine `name` for VM `v`, follow it to a joined Node and time each phase from the
/// BMC's view (power on), the serial console (kernel, agent, OS) and the API (host state,
/// Node).
async fn provision(
    stack: &Stack,
    v: &vmetal::vms::LabVm,
    name: &str,
    format: &'static str,
) -> Phases {
    let tenant = stack.tenant.as_ref().unwrap();
    let file = format!("testos.{format}");
    let machine: Machine = serde_json::from_value(json!({
        "apiVersion": "vmetal.io/v1alpha1", "kind": "Machine",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "hostSelector": {"matchLabels": {"vmetal.io/vm": v.spec.name}},
            "image": {"url": stack.image_url(&file), "checksum": stack.image_url("SHA256SUMS"),
                      "checksumType": "sha256", "format": format},
            "userData": {"name": "vm-user-data", "key": "userData"},
            "join": {"kubeadm": {"endpoint": tenant.endpoint(),
                     "tokenSecretRef": {"name": vmetal::tenant::JOIN_SECRET},
                     "caCertHash": tenant.ca_cert_hash().unwrap()}},
        },
    }))
    .unwrap();
    let machines: Api<Machine> = Api::namespaced(stack.client.clone(), "default");
    let hosts: Api<BareMetalHost> = Api::namespaced(stack.client.clone(), "default");
    let nodes: Api<Node> = Api::all(tenant.client.clone());
    let mut serial = SerialWatch::new(v.vm.serial_log());
    let from = serial.poll().len();
    let boots_before = v.server.state().boot_count;
    let t0 = Instant::now();
    machines
        .create(&PostParams::default(), &machine)
        .await
        .unwrap();

    let (mut power, mut kernel, mut agent, mut written, mut os, mut node) =
        (None, None, None, None, None, None);
    let deadline = Duration::from_secs(600);
    while node.is_none() {
        let now = t0.elapsed();
        assert!(
            now < deadline,
            "{name} on {}: no Node within {deadline:?} (power {power:?} kernel {kernel:?} agent {agent:?} written {written:?} os {os:?}); host {:#?}; serial tail:\n{}",
            v.spec.name,
            hosts.get(&v.spec.name).await.ok().and_then(|h| h.status),
            tail(v.vm.serial_log(), 40)
        );
        if power.is_none() && v.server.state().boot_count > boots_before {
            power = Some(now);
        }
        if power.is_some() && kernel.is_none() && serial.find_from("Linux version", from).is_some()
        {
            kernel = Some(now);
        }
        if kernel.is_some()
            && agent.is_none()
            && serial.find_from("agent cycle started", from).is_some()
        {
            agent = Some(now);
        }
        if agent.is_some() && written.is_none() {
            let h = hosts.get(&v.spec.name).await.unwrap();
            assert!(
                !h.has_error(),
                "{}: {:?}",
                v.spec.name,
                h.status.map(|s| s.error_message)
            );
            if h.provisioning_state() == ProvisioningState::Provisioned {
                written = Some(now);
            }
        }
        if written.is_some()
            && os.is_none()
            && serial
                .find_from("vmetal-testos: init starting", from)
                .is_some()
        {
            os = Some(now);
        }
        if os.is_some() {
            let m = machines.get(name).await.unwrap();
            let node_name = m
                .status
                .as_ref()
                .map(|s| s.node_name.clone())
                .unwrap_or_default();
            if !node_name.is_empty() && nodes.get_opt(&node_name).await.unwrap().is_some() {
                node = Some(now);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = machines.get(name).await.unwrap();
    let status = m.status.clone().unwrap();
    assert_eq!(status.phase, MachinePhase::Running, "{name}: {status:?}");
    let node_name = status.node_name.clone();
    let n = nodes.get(&node_name).await.unwrap();
    let cpu = n
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("cpu"))
        .map(|q| q.0.clone());
    assert_eq!(
        cpu.as_deref(),
        Some("2"),
        "Node {node_name} reports the VM's CPUs"
    );
    let text = serial.poll().to_string();
    assert!(
        text[from..].contains("VMETAL-RUNCMD-MARKER"),
        "the user's runcmd ran on {}",
        v.spec.name
    );
    let host = hosts.get(&v.spec.name).await.unwrap();
    let image = host
        .status
        .as_ref()
        .and_then(|s| s.provisioning.image.as_ref())
        .map(|i| i.url.clone());
    assert_eq!(
        image,
        Some(stack.image_url(&file)),
        "{}: provisioned image",
        v.spec.name
    );
    let at = |t: Option<Duration>| t.unwrap();
    Phases {
        vm: v.spec.name.clone(),
        format,
        claim: at(power),
        pxe: at(kernel) - at(power),
        agent_boot: at(agent) - at(kernel),
        image_write: at(written) - at(agent),
        disk_boot: at(os) - at(written),
        join: at(node) - at(os),
        total: at(node),
    }
}
