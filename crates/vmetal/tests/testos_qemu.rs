//! The test OS on a real (QEMU, TCG) VM: the image from `images/testos/build.sh`, a config
//! drive written exactly as the agent writes it, user data rendered as the machine controller
//! renders it, and a `kubeadm join` to a tenant cluster on host loopback (10.0.2.2 from the
//! guest through QEMU's user-mode network).
//!
//! Asserts what a user sees: the console shows the user data's effects and the ready marker,
//! the Node is in the tenant cluster with the VM's CPUs and Ready, and its Lease is renewed.
//! The serial log stays in `target/tmp/testos_qemu/` and its tail is printed on failure.
//! Needs qemu-system-x86 and what `images/testos/build.sh` needs; a missing tool fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use serde_json::json;
use vmetal::tenant::TenantCluster;
use vmetal_controller::machine::userdata::{JoinStep, UserDataInput, render};

const HOSTNAME: &str = "testos-e2e-1";
const CPUS: u32 = 2;
const DISK_BYTES: u64 = 256 << 20;
const FILE_CONTENT: &str = "written-by-write-files-4b1d";
const RUNCMD_MARKER: &str = "runcmd-marker-7f3a";
const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITestOsKey e2e@vmetal";
/// TCG on a shared 2-core machine: the boot takes seconds, the margin is for a loaded host.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Build the image (cached by the script) and return `testos.raw`.
fn build_image() -> PathBuf {
    let started = Instant::now();
    let out = Command::new(repo().join("images/testos/build.sh"))
        .current_dir(repo())
        .output()
        .expect("cannot run images/testos/build.sh");
    assert!(
        out.status.success(),
        "images/testos/build.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "images/testos/build.sh: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    repo().join("images/testos/out/testos.raw")
}

/// QEMU, killed when the test ends; prints the serial log's tail if the test failed.
struct Vm {
    child: Child,
    serial: PathBuf,
}

impl Vm {
    fn boot(disk: &Path, serial: &Path, qemu_log: &Path) -> Self {
        let log = std::fs::File::create(qemu_log).unwrap();
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "512", "-smp", &CPUS.to_string()])
            .args(["-nographic", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw", disk.display()))
            .args([
                "-netdev",
                "user,id=n0",
                "-device",
                "virtio-net-pci,netdev=n0",
            ])
            .args(["-device", "virtio-rng-pci"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start qemu-system-x86_64");
        Self {
            child,
            serial: serial.to_path_buf(),
        }
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Wait until the console shows `needle`; fails if QEMU exits or time runs out.
    async fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let console = self.console();
            if console.contains(needle) {
                return console;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("QEMU exited ({status}) before the console showed {needle:?}");
            }
            assert!(
                start.elapsed() < timeout,
                "the console did not show {needle:?} within {} s",
                timeout.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let console = self.console();
            let lines: Vec<&str> = console.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!(
                "--- last 80 console lines ({} kept) ---\n{tail}\n---",
                self.serial.display()
            );
        }
    }
}

/// What deploys rely on: the image ends where its only partition ends (the agent appends the
/// config drive there), and `SHA256SUMS` holds the images' real checksums in `sha256sum` format.
fn check_image(image: &Path) {
    use sha2::Digest;
    let bytes = std::fs::read(image).unwrap();
    assert_eq!(&bytes[510..512], &[0x55, 0xaa], "no MBR boot signature");
    let entry = &bytes[446..462];
    let le32 = |b: &[u8]| u64::from(u32::from_le_bytes(b.try_into().unwrap()));
    let (start, sectors) = (le32(&entry[8..12]), le32(&entry[12..16]));
    assert_eq!(
        (entry[0], entry[4], start),
        (0x80, 0x0e, 2048),
        "partition 1 is an active FAT16 partition at 1 MiB"
    );
    assert_eq!((start + sectors) * 512, bytes.len() as u64);
    assert!(
        bytes[462..510].iter().all(|b| *b == 0),
        "only one partition"
    );
    let dir = image.parent().unwrap();
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    for file in ["testos.raw", "testos.qcow2"] {
        let data = std::fs::read(dir.join(file)).unwrap();
        let hex: String = sha2::Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(
            sums.lines().any(|l| l == format!("{hex}  {file}")),
            "SHA256SUMS lacks {hex}  {file}:\n{sums}"
        );
    }
}

/// The metadata the provisioner writes for a host of this name (Metal3's keys).
fn meta_data() -> serde_json::Value {
    json!({
        "uuid": "6f1c3e1a-7d5b-4a53-9a55-0c0ffee0e2e1",
        "metal3-namespace": "default",
        "metal3-name": HOSTNAME,
        "local-hostname": HOSTNAME,
        "local_hostname": HOSTNAME,
        "name": HOSTNAME,
    })
}

#[test]
fn test_os_runs_the_user_data_and_joins_the_tenant_cluster() {
    assert!(
        Path::new("/usr/bin/qemu-system-x86_64").exists(),
        "qemu-system-x86_64 is missing: apt-get install -y qemu-system-x86 (this test never skips)"
    );
    let image = build_image();
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("testos_qemu");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(scenario(&image, &work));
}

async fn scenario(image: &Path, work: &Path) {
    // The tenant cluster on host loopback, which the guest reaches as 10.0.2.2.
    let tenant = TenantCluster::start(&work.join("tenant"), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = tenant.apiserver.local_addr().port();
    let token = tenant
        .create_bootstrap_token(Duration::from_secs(3600))
        .await
        .unwrap();
    let ca_cert_hash = tenant.ca_cert_hash().unwrap();

    let extra = format!(
        r#"#cloud-config
packages: [htop]
write_files:
  - path: /etc/vmetal/e2e.txt
    content: {FILE_CONTENT}
    permissions: '0640'
runcmd:
  - echo {RUNCMD_MARKER} $(cat /etc/vmetal/e2e.txt) $(stat -c %a /etc/vmetal/e2e.txt)
  - [sh, -c, "echo argv-form-ok host=$(hostname) keys=$(wc -l < /root/.ssh/authorized_keys)"]
  - echo curl-healthz=$(curl -fsSk https://10.0.2.2:{port}/healthz)
"#
    );
    let keys = vec![SSH_KEY.to_string()];
    let user_data = render(&UserDataInput {
        hostname: HOSTNAME,
        ssh_authorized_keys: &keys,
        extra: Some(&extra),
        join: JoinStep::Kubeadm {
            endpoint: format!("10.0.2.2:{port}"),
            token: token.clone(),
            ca_cert_hash,
        },
    })
    .unwrap();

    check_image(image);

    // The deployed disk: the image, then the config drive after its end, as the agent does it.
    let disk = work.join("disk.raw");
    std::fs::copy(image, &disk).unwrap();
    let image_end = std::fs::metadata(image).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(DISK_BYTES)
        .unwrap();
    let fat = vmetal_provisioner::configdrive::build_config_drive(
        &meta_data(),
        Some(user_data.as_bytes()),
        None,
    )
    .unwrap();
    vmetal_agent::write_config_drive(&disk, image_end, &fat).unwrap();

    let started = Instant::now();
    let mut vm = Vm::boot(&disk, &work.join("serial.log"), &work.join("qemu.log"));
    let console = vm
        .wait_for(
            &format!("VMETAL-TESTOS-READY hostname={HOSTNAME}"),
            READY_TIMEOUT,
        )
        .await;
    eprintln!(
        "test OS ready {:.1} s after QEMU started",
        started.elapsed().as_secs_f64()
    );

    // The user data ran, in cloud-init's order, with the files and keys it asked for.
    for line in [
        "vmetal-testos: ignored: packages (not implemented by the test OS)",
        "vmetal-testos: write_files[0]: wrote /etc/vmetal/e2e.txt (27 bytes, mode 0640)",
        &format!("vmetal-testos: hostname: set to {HOSTNAME}"),
        "vmetal-testos: ssh_authorized_keys: 1 keys in /root/.ssh/authorized_keys",
        &format!("{RUNCMD_MARKER} {FILE_CONTENT} 640"),
        &format!("argv-form-ok host={HOSTNAME} keys=1"),
        "curl-healthz=ok",
        "vmetal-testos: runcmd[0]: exit 0",
        "vmetal-testos: runcmd[2]: exit 0",
        "kubeadm: the cluster CA matches --discovery-token-ca-cert-hash",
        &format!("kubeadm: This node has joined the cluster: Node {HOSTNAME}"),
        "vmetal-testos: runcmd[3]: exit 0",
    ] {
        assert!(console.contains(line), "the console lacks {line:?}");
    }
    let secret = token.split_once('.').unwrap().1;
    assert!(
        !console.contains(secret),
        "the bootstrap token's secret reached the console"
    );

    // The Node is in the tenant cluster with the VM's CPUs, Ready.
    let nodes: Api<Node> = Api::all(tenant.client.clone());
    let node = nodes.get(HOSTNAME).await.unwrap();
    let status = node.status.unwrap();
    let capacity = status.capacity.unwrap();
    assert_eq!(capacity["cpu"].0, CPUS.to_string());
    assert!(
        capacity["memory"].0.ends_with("Mi"),
        "{:?}",
        capacity["memory"]
    );
    let ready = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("the Node has no Ready condition");
    assert_eq!(ready.status, "True");
    assert_eq!(
        node.metadata.labels.unwrap()["kubernetes.io/hostname"],
        HOSTNAME
    );

    // The kubelet keeps the Lease renewed (every 10 s).
    let leases: Api<Lease> = Api::namespaced(tenant.client.clone(), "kube-node-lease");
    let renew_time = |l: &Lease| l.spec.as_ref().and_then(|s| s.renew_time.clone());
    let first = leases.get(HOSTNAME).await.unwrap();
    assert_eq!(
        first.spec.as_ref().unwrap().holder_identity.as_deref(),
        Some(HOSTNAME)
    );
    let start = Instant::now();
    loop {
        let now = leases.get(HOSTNAME).await.unwrap();
        if renew_time(&now) != renew_time(&first) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the Lease was not renewed within 60 s (renewTime stays {:?})",
            renew_time(&first)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(vm);
}
