//! Real QEMU VMs behind our virtual Redfish and IPMI BMCs, driven by our own BMC clients: a
//! disk boot from a hand-made MBR (reset, power off), a network boot into iPXE and OVMF's PXE,
//! a guest that powers itself off or reboots itself, a graceful shutdown the guest ignores.
//!
//! The boot sectors are assembled at test time with binutils; they write a marker to COM1 and
//! then halt, power off through the ACPI PM1a control port (0x604 on QEMU's PIIX4) or reset
//! through port 0xcf9. Needs qemu-system-x86, qemu-utils, ipxe-qemu, ovmf and binutils; a
//! missing tool fails the test with the package to install. Runs under TCG; never skips.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmetal_api::bmc_address::BmcAddress;
use vmetal_bmc::ipmi::IpmiBmc;
use vmetal_bmc::redfish::RedfishBmc;
use vmetal_bmc::{
    Bmc, BootDevice, BootModeOverride, BootOverride, ConnectOptions, Credentials, PowerAction,
    PowerState,
};
use vmetal_lab::ipmi::{IpmiService, RunningIpmi};
use vmetal_lab::qemu::{Accel, DiskFormat, QemuConfig, QemuMachine, create_disk, probe_accel};
use vmetal_lab::redfish::{RedfishConfig, RedfishService, RunningRedfish};
use vmetal_lab::{BootSource, ServerIdentity, SimulatedServer};

const USER: &str = "admin";
const PASSWORD: &str = "qemu-lab-Pa55";
/// Generous for TCG on two shared cores; these guests need a second or two.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// One VM at a time: TCG on two shared cores is slow enough already.
static ONE_VM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: apt-get install -y {package} (this test never skips)"
    );
}

fn check_tools() {
    require("/usr/bin/qemu-system-x86_64", "qemu-system-x86");
    require("/usr/bin/qemu-img", "qemu-utils");
    require("/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu");
    require("/usr/share/ovmf/OVMF.fd", "ovmf");
    require("/usr/bin/as", "binutils");
    require("/usr/bin/objcopy", "binutils");
}

/// What the boot sector does after printing its marker.
#[derive(Clone, Copy)]
enum Then {
    Halt,
    /// ACPI S5: SLP_TYP 0 | SLP_EN to PM1a_CNT (SeaBIOS puts the PIIX4 PM block at 0x600).
    PowerOff,
    /// A hard reset through the reset control register.
    Reset,
}

/// A 512-byte MBR boot sector that writes `marker` and CRLF to COM1, then does `then`.
fn boot_sector(dir: &Path, marker: &str, then: Then) -> Vec<u8> {
    let tail = match then {
        Then::Halt => "",
        Then::PowerOff => "    mov $0x604, %dx\n    mov $0x2000, %ax\n    outw %ax, (%dx)\n",
        Then::Reset => "    mov $0xcf9, %dx\n    mov $0x06, %al\n    outb %al, (%dx)\n",
    };
    // BIOS loads the sector at 0:7c00; `msg - _start` is an assembly-time constant, so no
    // linker is needed.
    let source = format!(
        ".code16\n.globl _start\n_start:\n    cli\n    xor %ax, %ax\n    mov %ax, %ds\n\
         \x20   mov $(msg - _start + 0x7c00), %si\n    mov $0x3f8, %dx\n\
         1:  lodsb\n    test %al, %al\n    jz 2f\n    outb %al, (%dx)\n    jmp 1b\n\
         2:\n{tail}3:  hlt\n    jmp 3b\nmsg: .asciz \"{marker}\\r\\n\"\n.org 510\n.word 0xaa55\n"
    );
    let asm = dir.join("boot.S");
    let obj = dir.join("boot.o");
    let bin = dir.join("boot.bin");
    std::fs::write(&asm, source).unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (apt-get install -y binutils)"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("as").arg("--32").arg("-o").arg(&obj).arg(&asm));
    run(Command::new("objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&obj)
        .arg(&bin));
    let sector = std::fs::read(&bin).unwrap();
    assert_eq!(sector.len(), 512);
    assert_eq!(&sector[510..], &[0x55, 0xaa]);
    sector
}

/// A 1 MiB raw disk `name` whose first sector is `sector`.
fn disk_with(dir: &Path, name: &str, sector: &[u8]) -> PathBuf {
    let disk = dir.join(name);
    create_disk(&disk, 1 << 20, DiskFormat::Raw).unwrap();
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[..512].copy_from_slice(sector);
    std::fs::write(&disk, bytes).unwrap();
    disk
}

struct Lab {
    server: SimulatedServer,
    machine: QemuMachine,
}

fn lab(dir: &Path, index: u32, disk: PathBuf, edit: impl FnOnce(&mut QemuConfig)) -> Lab {
    let identity = ServerIdentity::numbered(index);
    let mut config = QemuConfig::new(
        format!("vm{index}"),
        dir.join("run"),
        identity.boot_mac.clone(),
        disk,
    );
    config.accel = Accel::Tcg;
    config.memory_mib = 256;
    config.cpus = 1;
    config.smbios = Some(identity.clone());
    edit(&mut config);
    println!("accelerator: {:?}", config.accel);
    let machine = QemuMachine::new(config).unwrap();
    let server = SimulatedServer::new(identity);
    server.set_backend(Arc::new(machine.clone()));
    machine.attach(&server);
    Lab { server, machine }
}

async fn redfish(server: &SimulatedServer) -> (RunningRedfish, RedfishBmc) {
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let running = RedfishService::start(
        bind,
        vec![server.clone()],
        RedfishConfig {
            username: USER.into(),
            password: PASSWORD.into(),
            tls: false,
        },
    )
    .await
    .unwrap();
    let base = running.base_url();
    let rest = base.split_once("://").unwrap().1;
    let id = &server.identity().id;
    let address =
        BmcAddress::parse(&format!("redfish+http://{rest}/redfish/v1/Systems/{id}")).unwrap();
    let client = RedfishBmc::new(
        address,
        Credentials::new(USER, PASSWORD),
        ConnectOptions::default(),
    )
    .unwrap();
    (running, client)
}

async fn ipmi(server: &SimulatedServer) -> (RunningIpmi, IpmiBmc) {
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let running = IpmiService::start(bind, server.clone(), USER.into(), PASSWORD.into())
        .await
        .unwrap();
    let address = BmcAddress::parse(&format!("ipmi://{}", running.local_addr())).unwrap();
    let client = IpmiBmc::new(
        address,
        Credentials::new(USER, PASSWORD),
        ConnectOptions {
            timeout: Duration::from_secs(5),
            ..ConnectOptions::default()
        },
    )
    .unwrap();
    (running, client)
}

fn alive(pid: u32) -> bool {
    // The worker reaps QEMU, so a stopped one leaves no /proc entry (not even a zombie).
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ok()
}

fn count(machine: &QemuMachine, needle: &str) -> usize {
    machine.serial_output().matches(needle).count()
}

/// Wait for `needle` in the latest boot's console, on a blocking thread.
async fn serial(machine: &QemuMachine, needle: &str) {
    let m = machine.clone();
    let n = needle.to_string();
    let found = tokio::task::spawn_blocking(move || m.wait_for_serial(&n, BOOT_TIMEOUT))
        .await
        .unwrap();
    assert!(
        found,
        "no {needle:?} on the console within {BOOT_TIMEOUT:?}; console:\n{}\nlast error: \
         {:?}\nQEMU log:\n{}",
        machine.serial_output(),
        machine.last_error(),
        std::fs::read_to_string(machine.qemu_log()).unwrap_or_default()
    );
}

async fn running(machine: &QemuMachine) -> bool {
    let m = machine.clone();
    tokio::task::spawn_blocking(move || m.running())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_boot_reset_and_power_off_over_redfish() {
    let _one = ONE_VM.lock().await;
    check_tools();
    let probed = tokio::task::spawn_blocking(|| probe_accel(Path::new("qemu-system-x86_64")))
        .await
        .unwrap();
    println!("probe_accel says {probed:?} here; the tests run TCG");
    let dir = tempfile::tempdir().unwrap();
    let marker = "VMETAL-QEMU-DISK-1";
    let disk = disk_with(
        dir.path(),
        "disk.img",
        &boot_sector(dir.path(), marker, Then::Halt),
    );
    let Lab { server, machine } = lab(dir.path(), 0, disk, |_| {});
    let (_svc, bmc) = redfish(&server).await;

    bmc.validate().await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    bmc.set_boot_device(BootOverride::once(
        BootDevice::Disk,
        Some(BootModeOverride::Legacy),
    ))
    .await
    .unwrap();
    bmc.power(PowerAction::On).await.unwrap();
    serial(&machine, marker).await;
    assert!(running(&machine).await, "QMP query-status says running");
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
    assert_eq!(machine.last_boot(), Some(BootSource::Disk));
    let first = machine.pid().unwrap();
    assert!(alive(first));

    bmc.power(PowerAction::ForceRestart).await.unwrap();
    assert!(
        wait_until(BOOT_TIMEOUT, || count(&machine, marker) == 2).await,
        "the marker appears a second time after a reset; console:\n{}",
        machine.serial_output()
    );
    assert!(!alive(first), "a reset replaces the QEMU process");
    assert_eq!(machine.boot_count(), 2);
    let second = machine.pid().unwrap();

    // QMP quit is quick; the SIGKILL fallback would only come after 5 s without an answer.
    bmc.power(PowerAction::ForceOff).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(4), || !alive(second)).await,
        "QEMU {second} quit through QMP after ForceOff"
    );
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert!(!running(&machine).await);
    assert_eq!(machine.pid(), None);
    assert_eq!(count(&machine, marker), 2, "nothing boots after power off");
    assert_eq!(machine.last_error(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_boot_over_ipmi_starts_ipxe_then_falls_back_to_the_disk() {
    let _one = ONE_VM.lock().await;
    check_tools();
    let dir = tempfile::tempdir().unwrap();
    let marker = "VMETAL-QEMU-FALLBACK-2";
    let disk = disk_with(
        dir.path(),
        "disk.img",
        &boot_sector(dir.path(), marker, Then::Halt),
    );
    let Lab { server, machine } = lab(dir.path(), 1, disk, |_| {});
    let mac = server.identity().boot_mac.clone();
    let (_svc, bmc) = ipmi(&server).await;

    bmc.set_boot_device(BootOverride::once(
        BootDevice::Pxe,
        Some(BootModeOverride::Legacy),
    ))
    .await
    .unwrap();
    bmc.power(PowerAction::On).await.unwrap();
    serial(&machine, "iPXE").await;
    assert_eq!(machine.last_boot(), Some(BootSource::Pxe));
    // User-mode networking's DHCP answers, without a boot file; then SeaBIOS tries the disk.
    serial(&machine, &format!("net0: {mac}")).await;
    serial(&machine, marker).await;
    let console = machine.serial_output();
    let ipxe_at = console.find("iPXE").unwrap();
    assert!(ipxe_at < console.find(marker).unwrap(), "{console}");
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);

    let pid = machine.pid().unwrap();
    bmc.power(PowerAction::ForceOff).await.unwrap();
    assert!(wait_until(Duration::from_secs(15), || !alive(pid)).await);
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_powers_itself_off_reads_off_on_both_bmcs() {
    let _one = ONE_VM.lock().await;
    check_tools();
    let dir = tempfile::tempdir().unwrap();
    let marker = "VMETAL-QEMU-POWEROFF-3";
    let disk = disk_with(
        dir.path(),
        "disk.img",
        &boot_sector(dir.path(), marker, Then::PowerOff),
    );
    let Lab { server, machine } = lab(dir.path(), 2, disk, |_| {});
    let (_r, redfish) = redfish(&server).await;
    let (_i, ipmi) = ipmi(&server).await;

    ipmi.set_boot_device(BootOverride::once(
        BootDevice::Disk,
        Some(BootModeOverride::Legacy),
    ))
    .await
    .unwrap();
    ipmi.power(PowerAction::On).await.unwrap();
    let start = Instant::now();
    let mut last = (PowerState::On, PowerState::On);
    while start.elapsed() < BOOT_TIMEOUT {
        last = (
            ipmi.power_state().await.unwrap(),
            redfish.power_state().await.unwrap(),
        );
        if last == (PowerState::Off, PowerState::Off) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        last,
        (PowerState::Off, PowerState::Off),
        "IPMI and Redfish read Off after the guest powered off; console:\n{}",
        machine.serial_output()
    );
    assert_eq!(
        count(&machine, marker),
        1,
        "it ran once and was not restarted"
    );
    assert_eq!(machine.pid(), None);
    assert_eq!(machine.boot_count(), 1);
    assert_eq!(machine.last_error(), None);

    // It powers on again like any server.
    redfish.power(PowerAction::On).await.unwrap();
    assert!(
        wait_until(BOOT_TIMEOUT, || count(&machine, marker) == 2
            && server.power_state() == PowerState::Off)
        .await,
        "second power on; console:\n{}",
        machine.serial_output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_reboot_after_a_one_time_pxe_boot_boots_the_disk() {
    let _one = ONE_VM.lock().await;
    check_tools();
    let dir = tempfile::tempdir().unwrap();
    let marker = "VMETAL-QEMU-REBOOT-4";
    let disk = disk_with(
        dir.path(),
        "disk.img",
        &boot_sector(dir.path(), marker, Then::Reset),
    );
    let Lab { server, machine } = lab(dir.path(), 3, disk, |_| {});
    let (_svc, bmc) = redfish(&server).await;

    bmc.set_boot_device(BootOverride::once(
        BootDevice::Pxe,
        Some(BootModeOverride::Legacy),
    ))
    .await
    .unwrap();
    bmc.power(PowerAction::On).await.unwrap();
    // PXE (iPXE finds no boot file) → disk → the sector resets → disk → resets → ...
    assert!(
        wait_until(BOOT_TIMEOUT, || count(&machine, marker) >= 3).await,
        "the guest reboots and boots the disk again; console:\n{}",
        machine.serial_output()
    );
    let console = machine.serial_output();
    assert_eq!(
        console.matches("iPXE initialising devices").count(),
        1,
        "only the first boot is a network boot; console:\n{console}"
    );
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
    assert_eq!(machine.last_boot(), Some(BootSource::Disk));
    assert_eq!(server.state().last_boot, Some(BootSource::Disk));
    assert!(machine.boot_count() >= 3);

    bmc.power(PowerAction::ForceOff).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || machine.pid().is_none()).await,
        "no restart after power off"
    );
    let settled = count(&machine, marker);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&machine, marker), settled, "nothing reboots once off");
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uefi_network_boot_runs_ovmf_pxe_and_an_ignored_graceful_shutdown_ends_in_off() {
    let _one = ONE_VM.lock().await;
    check_tools();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("blank.img");
    create_disk(&disk, 1 << 20, DiskFormat::Raw).unwrap();
    let grace = Duration::from_secs(3);
    let Lab { server, machine } = lab(dir.path(), 4, disk, |c| c.soft_off_grace = grace);
    let (_svc, bmc) = redfish(&server).await;

    bmc.set_boot_device(BootOverride::once(
        BootDevice::Pxe,
        Some(BootModeOverride::Uefi),
    ))
    .await
    .unwrap();
    bmc.power(PowerAction::On).await.unwrap();
    // OVMF's own PXE client, not the iPXE ROM.
    serial(&machine, "Start PXE over IPv4").await;
    assert!(!machine.serial_output().contains("iPXE"));
    let pid = machine.pid().unwrap();

    // Firmware has no ACPI handler: the button is ignored and the grace period ends it.
    let pressed = Instant::now();
    bmc.power(PowerAction::GracefulShutdown).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert!(alive(pid), "the guest gets its grace period");
    assert!(
        wait_until(grace + Duration::from_secs(15), || !alive(pid)).await,
        "QEMU is gone after the grace period"
    );
    let took = pressed.elapsed();
    assert!(
        took >= grace,
        "stopped after {took:?}, before the grace period"
    );
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_disks_are_created_and_booted() {
    let _one = ONE_VM.lock().await;
    check_tools();
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.qcow2");
    create_disk(&fresh, 10 << 30, DiskFormat::Qcow2).unwrap();
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&fresh)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 10u64 << 30);
    assert!(create_disk(&fresh, 1 << 20, DiskFormat::Qcow2).is_err());

    let marker = "VMETAL-QEMU-QCOW2-6";
    let raw = disk_with(
        dir.path(),
        "disk.img",
        &boot_sector(dir.path(), marker, Then::PowerOff),
    );
    let qcow2 = dir.path().join("boot.qcow2");
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .unwrap();
    assert!(status.success());
    let Lab { server, machine } = lab(dir.path(), 5, qcow2, |c| {
        c.disk_format = DiskFormat::Qcow2;
    });
    server.set_boot_override(BootOverride::once(
        BootDevice::Disk,
        Some(BootModeOverride::Legacy),
    ));
    server.power_on();
    serial(&machine, marker).await;
    assert!(
        wait_until(BOOT_TIMEOUT, || server.power_state() == PowerState::Off).await,
        "the guest powered off"
    );
    drop(server);
    drop(machine);

    // Dropping the last handles leaves nothing running.
    let halt = disk_with(
        dir.path(),
        "halt.img",
        &boot_sector(dir.path(), marker, Then::Halt),
    );
    let Lab { server, machine } = lab(dir.path(), 6, halt, |_| {});
    server.power_on();
    assert!(wait_until(BOOT_TIMEOUT, || machine.pid().is_some()).await);
    let pid = machine.pid().unwrap();
    drop(server);
    drop(machine);
    assert!(!alive(pid), "dropping the last handle stops QEMU {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_that_stops_answering_qmp_is_killed_on_power_off() {
    let _one = ONE_VM.lock().await;
    check_tools();
    let dir = tempfile::tempdir().unwrap();
    let marker = "VMETAL-QEMU-STUCK-7";
    let disk = disk_with(
        dir.path(),
        "disk.img",
        &boot_sector(dir.path(), marker, Then::Halt),
    );
    let Lab { server, machine } = lab(dir.path(), 7, disk, |_| {});
    let (_svc, bmc) = ipmi(&server).await;
    bmc.set_boot_device(BootOverride::once(
        BootDevice::Disk,
        Some(BootModeOverride::Legacy),
    ))
    .await
    .unwrap();
    bmc.power(PowerAction::On).await.unwrap();
    serial(&machine, marker).await;
    let pid = machine.pid().unwrap();
    // A stopped process answers nothing, QMP included; only SIGKILL ends it.
    let stopped = Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());

    let asked = Instant::now();
    bmc.power(PowerAction::ForceOff).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert!(
        wait_until(Duration::from_secs(20), || !alive(pid)).await,
        "QEMU {pid} is killed when QMP does not answer"
    );
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "killed after {took:?}: QMP gets its few seconds first"
    );
    assert_eq!(machine.pid(), None);

    // The machine works on after that, and shutdown() stops it for good.
    bmc.power(PowerAction::On).await.unwrap();
    serial(&machine, marker).await;
    assert!(running(&machine).await);
    let pid = machine.pid().unwrap();
    let m = machine.clone();
    tokio::task::spawn_blocking(move || m.shutdown())
        .await
        .unwrap();
    assert!(!alive(pid), "shutdown returns once QEMU {pid} is gone");
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
}
