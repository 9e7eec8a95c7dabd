//! The real agent ramdisk (`ramdisk/build.sh`) booted in QEMU under TCG against the scripted
//! fake agent API: inspect, deploy of a raw image over HTTP, metadata wipe, checked on the disk.
//!
//! The VM has a virtio NIC with a fixed MAC on user-mode networking (the guest reaches the
//! host's loopback at 10.0.2.2), a 2 GiB sparse raw virtio disk, 2 CPUs and 1 GiB of memory.
//! The kernel command line is the one vmetal's iPXE script passes. Nothing is skipped: a missing
//! tool fails the test naming the Debian package to install.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};
use vmetal_agent::partition::{GPT_TYPE_EFI_SYSTEM, Gpt};
use vmetal_agent::testing::FakeAgentApi;
use vmetal_agent::{fat, read_config_drive};
use vmetal_api::agent::{AgentCommand, DeployCommand, WipeMode};
use vmetal_api::host::RootDeviceHints;

const MAC: &str = "52:54:00:12:34:56";
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const DISK_BYTES: u64 = 2 * GIB;
/// Generous: TCG on a shared two-core machine, first boot included.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Fail (never skip) when `tool` is missing, naming the package that has it.
fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is required for this test: apt-get install {package}"
    );
}

/// Build (or reuse, it is cached) the ramdisk; returns the kernel and the initramfs.
fn build_ramdisk() -> (PathBuf, PathBuf) {
    let ws = workspace();
    let started = Instant::now();
    let status = Command::new("bash")
        .arg(ws.join("ramdisk/build.sh"))
        .current_dir(&ws)
        .status()
        .expect("cannot run bash ramdisk/build.sh");
    assert!(
        status.success(),
        "ramdisk/build.sh failed ({status}); its output is above"
    );
    eprintln!(
        "ramdisk ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let out = ws.join("ramdisk/out");
    (out.join("vmlinuz"), out.join("initramfs"))
}

/// A QEMU VM; killed on drop, its serial console printed when the test is failing.
struct Vm {
    child: Child,
    serial: PathBuf,
    disk: PathBuf,
}

impl Vm {
    fn start(kernel: &Path, initrd: &Path, api_url: &str, dir: &Path) -> Self {
        let disk = dir.join("disk.raw");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(DISK_BYTES)
            .unwrap();
        // Kept after the test (CARGO_TARGET_TMPDIR), overwritten by the next run.
        let serial = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ramdisk_qemu-serial.log");
        let _ = std::fs::remove_file(&serial);
        // As rendered by vmetal-provisioner's iPXE script (console=tty0 last, as there).
        let append = format!(
            "vmetal.api={api_url} vmetal.mac={MAC} ip=dhcp console=ttyS0,115200 console=tty0"
        );
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-smp", "2", "-m", "1024"])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", &append])
            .args(["-netdev", "user,id=n0"])
            .args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={MAC},romfile="),
            ])
            .args([
                "-drive",
                &format!("file={},format=raw,if=virtio", disk.display()),
            ])
            .args(["-serial", &format!("file:{}", serial.display())])
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot start qemu-system-x86_64 (apt-get install qemu-system-x86)");
        eprintln!("VM started; serial console in {}", serial.display());
        Self {
            child,
            serial,
            disk,
        }
    }

    fn serial_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Poll `done` until it holds; fail if QEMU exits or `STEP_TIMEOUT` passes.
    async fn wait_for(&mut self, what: &str, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("QEMU exited ({status}) while waiting for {what}");
            }
            assert!(
                started.elapsed() < STEP_TIMEOUT,
                "no {what} after {} s",
                STEP_TIMEOUT.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!("{what} after {:.1} s", started.elapsed().as_secs_f64());
    }

    fn read_disk(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut f = std::fs::File::open(&self.disk).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = vec![0u8; len as usize];
        f.read_exact(&mut buf).unwrap();
        buf
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- serial console of the VM ({}) -----\n{}\n----- end of serial console -----",
                self.serial.display(),
                self.serial_log()
            );
        }
    }
}

/// A whole-disk raw image: a GPT with one partition and a data pattern.
fn raw_image(len: u64) -> Vec<u8> {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let mut f = tmp.reopen().unwrap();
    f.set_len(len).unwrap();
    let mut gpt = Gpt::new(len / 512, [7; 16]);
    gpt.add_partition(GPT_TYPE_EFI_SYSTEM, [8; 16], 2048, len / 512 - 34, "root")
        .unwrap();
    gpt.write(&mut f).unwrap();
    let mut img = std::fs::read(tmp.path()).unwrap();
    for (i, b) in img[MIB as usize..(len - MIB) as usize]
        .iter_mut()
        .enumerate()
    {
        *b = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
    img
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const USER_DATA: &[u8] = b"#cloud-config\nruncmd: [join]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ramdisk_inspects_deploys_and_wipes_a_qemu_vm() {
    require("qemu-system-x86_64", "qemu-system-x86");
    require("bash", "bash");
    let (kernel, initrd) = tokio::task::spawn_blocking(build_ramdisk).await.unwrap();

    let api = FakeAgentApi::start(&[MAC]).await.unwrap();
    let port = api.url.rsplit(':').next().unwrap().to_string();
    // The guest reaches the host's loopback through QEMU's user-mode network at 10.0.2.2.
    let guest_url = format!("http://10.0.2.2:{port}");
    api.set_script(vec![AgentCommand::Inspect {
        id: "c1/inspect".into(),
    }]);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut vm = Vm::start(&kernel, &initrd, &guest_url, dir.path());

    // Inspection: the real /proc and /sys of the VM.
    vm.wait_for("inspection result", || {
        api.result("c1/inspect").is_some() && api.finished()
    })
    .await;
    let inspect = api.result("c1/inspect").unwrap();
    assert_eq!(inspect.error, None, "{inspect:?}");
    let hw = inspect.inventory.expect("inspection reported no inventory");
    let nic = hw
        .nics
        .iter()
        .find(|n| n.mac == MAC)
        .unwrap_or_else(|| panic!("no NIC with MAC {MAC} in {:?}", hw.nics));
    // The PCI function behind the virtio bus device: 1af4:1000 is virtio-net.
    assert_eq!(nic.model, "0x1af4 0x1000", "not a virtio NIC: {nic:?}");
    assert!(
        nic.pci_address.starts_with("0000:"),
        "the NIC's PCI address: {nic:?}"
    );
    assert!(
        hw.pci_devices
            .iter()
            .any(|d| d.vendor_id == "1af4" && d.device_id == "1000"),
        "no virtio-net PCI device in {:?}",
        hw.pci_devices
    );
    let disks: Vec<_> = hw
        .storage
        .iter()
        .map(|d| (d.name.as_str(), d.size_bytes))
        .collect();
    assert_eq!(disks, vec![("/dev/vda", DISK_BYTES as i64)]);
    assert_eq!(hw.cpu.as_ref().map(|c| c.count), Some(2), "{:?}", hw.cpu);
    // MemTotal of a 1 GiB VM, rounded up to whole GiB by the agent.
    assert_eq!(hw.ram_mebibytes, 1024);
    let console = vm.serial_log();
    assert!(
        console.contains("vmetal-agent starting") && console.contains("DHCP lease"),
        "the agent's log must reach the serial console although console=tty0 comes last"
    );

    // Deploy: a raw image over HTTP with its sha256, plus a config drive, onto /dev/vda (a
    // 2 GiB disk is below the 4 GiB default minimum, so by device name as a user would).
    let image = raw_image(8 * MIB);
    api.add_file("disk.img", image.clone());
    let drive = fat::build(
        "config-2",
        &[
            (
                "openstack/latest/meta_data.json",
                br#"{"uuid":"u-1","local-hostname":"qemu-1"}"#.as_slice(),
            ),
            ("openstack/latest/user_data", USER_DATA),
        ],
    )
    .unwrap();
    api.set_script(vec![AgentCommand::Deploy(Box::new(DeployCommand {
        id: "c2/deploy".into(),
        image_url: format!("{guest_url}/files/disk.img"),
        checksum: sha256_hex(&image),
        checksum_type: None,
        format: None,
        root_device_hints: Some(RootDeviceHints {
            device_name: "/dev/vda".into(),
            ..Default::default()
        }),
        config_drive: Some(base64::engine::general_purpose::STANDARD.encode(&drive)),
        download_stall_timeout_seconds: None,
    }))]);
    vm.wait_for("deploy result", || {
        api.result("c2/deploy").is_some() && api.finished()
    })
    .await;
    let deploy = api.result("c2/deploy").unwrap();
    assert_eq!(deploy.error, None, "{deploy:?}");
    assert_eq!(deploy.root_device.as_deref(), Some("/dev/vda"));
    assert_eq!(deploy.written_sha256, Some(sha256_hex(&image)));
    // The image is on the VM's disk file: everything but its partition table, which the
    // config drive extended.
    assert!(
        vm.read_disk(MIB, 6 * MIB) == image[MIB as usize..7 * MIB as usize],
        "the image bytes are not on the VM's disk"
    );
    let found = read_config_drive(&vm.disk)
        .unwrap()
        .expect("no config drive");
    assert_eq!(
        fat::read_file(&found, "openstack/latest/user_data").unwrap(),
        USER_DATA
    );
    let zero = |b: &[u8]| b.iter().all(|x| *x == 0);
    // Both GPTs are there, so the wipe below has something to erase.
    assert!(!zero(&vm.read_disk(0, MIB)));
    assert!(!zero(&vm.read_disk(DISK_BYTES - MIB, MIB)));

    // Metadata wipe: the first and last MiB of the disk are zero afterwards.
    api.set_script(vec![AgentCommand::Wipe {
        id: "c3/wipe".into(),
        mode: WipeMode::Metadata,
    }]);
    vm.wait_for("wipe result", || {
        api.result("c3/wipe").is_some() && api.finished()
    })
    .await;
    let wipe = api.result("c3/wipe").unwrap();
    assert_eq!(wipe.error, None, "{wipe:?}");
    assert!(zero(&vm.read_disk(0, MIB)), "the first MiB was not wiped");
    assert!(
        zero(&vm.read_disk(DISK_BYTES - MIB, MIB)),
        "the last MiB was not wiped"
    );
    assert_eq!(read_config_drive(&vm.disk).unwrap(), None);
    // Untouched data between the two ends stays: a metadata wipe is not a full wipe.
    assert!(!zero(&vm.read_disk(2 * MIB, MIB)));
}
