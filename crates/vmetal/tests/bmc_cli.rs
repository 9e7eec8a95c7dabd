//! `vmetal lab bmc` and `vmetal bmc` together, as an operator uses them: serve a simulated
//! rack, then drive it over Redfish and IPMI and check output and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use assert_cmd::cargo::CommandCargoExt;

struct Lab {
    child: Child,
    redfish: Vec<String>,
    ipmi: Vec<String>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_lab(systems: usize) -> Lab {
    let mut child = Command::cargo_bin("vmetal")
        .unwrap()
        .args([
            "lab",
            "bmc",
            "--redfish",
            "127.0.0.1:0",
            "--ipmi",
            "127.0.0.1:0",
            "--systems",
        ])
        .arg(systems.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut redfish, mut ipmi) = (Vec::new(), Vec::new());
    while redfish.len() < systems {
        let line = lines.next().expect("lab printed its systems").unwrap();
        if line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        redfish.push(cols[2].to_string());
        ipmi.push(cols[3].to_string());
    }
    Lab {
        child,
        redfish,
        ipmi,
    }
}

fn bmc(address: &str, password_file: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::cargo_bin("vmetal")
        .unwrap()
        .args([
            "bmc",
            "--address",
            address,
            "-U",
            "admin",
            "--timeout",
            "3",
            "--password-file",
        ])
        .arg(password_file)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn operator_drives_a_lab_rack_over_both_protocols() {
    let lab = start_lab(2);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    std::fs::write(&good, "password\n").unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "not-the-password").unwrap();

    assert!(
        lab.redfish[0].starts_with("redfish+http://127.0.0.1:"),
        "{:?}",
        lab.redfish
    );
    assert!(
        lab.ipmi[1].starts_with("ipmi://127.0.0.1:"),
        "{:?}",
        lab.ipmi
    );

    let (code, out) = bmc(&lab.ipmi[0], &good, &["power", "status"]);
    assert_eq!((code, out.trim()), (0, "Chassis Power is off"));
    let (code, _) = bmc(&lab.ipmi[0], &good, &["power", "on"]);
    assert_eq!(code, 0);
    // The same server, seen through Redfish: both front ends share one simulated server.
    let (code, out) = bmc(&lab.redfish[0], &good, &["power", "status"]);
    assert_eq!((code, out.trim()), (0, "Chassis Power is on"));
    let (code, out) = bmc(&lab.redfish[1], &good, &["bootdev", "pxe", "--uefi"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = bmc(&lab.redfish[1], &good, &["info"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Serial number: VMSIM000002"), "{out}");

    // Wrong password: exit 4, and the password never echoed.
    for address in [&lab.redfish[0], &lab.ipmi[0]] {
        let (code, out) = bmc(address, &bad, &["power", "status"]);
        assert_eq!(code, 4, "{address}: {out}");
        assert!(!out.contains("not-the-password"), "{out}");
    }
    // Nothing listening: exit 3.
    let (code, out) = bmc("ipmi://127.0.0.1:9", &good, &["power", "status"]);
    assert_eq!(code, 3, "{out}");
    // A malformed address: exit 1 with the address named.
    let (code, out) = bmc("irmc://10.0.0.1", &good, &["power", "status"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("irmc"), "{out}");
}

/// A 1 MiB raw disk whose MBR boot sector writes `marker` to COM1 and halts, assembled with
/// binutils (apt-get install -y binutils).
fn marker_disk(dir: &std::path::Path, marker: &str) -> std::path::PathBuf {
    let asm = dir.join("boot.S");
    std::fs::write(
        &asm,
        format!(
            ".code16\n.globl _start\n_start:\n    cli\n    xor %ax, %ax\n    mov %ax, %ds\n\
             \x20   mov $(msg - _start + 0x7c00), %si\n    mov $0x3f8, %dx\n\
             1:  lodsb\n    test %al, %al\n    jz 2f\n    outb %al, (%dx)\n    jmp 1b\n\
             2:  hlt\n    jmp 2b\nmsg: .asciz \"{marker}\\r\\n\"\n.org 510\n.word 0xaa55\n"
        ),
    )
    .unwrap();
    let obj = dir.join("boot.o");
    let bin = dir.join("boot.bin");
    for cmd in [
        Command::new("as")
            .arg("--32")
            .arg("-o")
            .arg(&obj)
            .arg(&asm)
            .status(),
        Command::new("objcopy")
            .args(["-O", "binary", "-j", ".text"])
            .arg(&obj)
            .arg(&bin)
            .status(),
    ] {
        let status = cmd.expect("binutils is missing: apt-get install -y binutils");
        assert!(status.success());
    }
    let mut disk = std::fs::read(&bin).unwrap();
    assert_eq!(disk.len(), 512);
    disk.resize(1 << 20, 0);
    let path = dir.join("vm.img");
    std::fs::write(&path, disk).unwrap();
    path
}

fn wait_for(what: &str, timeout: std::time::Duration, mut ok: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn operator_serves_a_qemu_vm_behind_both_protocols() {
    assert!(
        std::path::Path::new("/usr/bin/qemu-system-x86_64").exists(),
        "apt-get install -y qemu-system-x86 (this test never skips)"
    );
    let dir = tempfile::tempdir().unwrap();
    let marker = "VMETAL-CLI-QEMU-1";
    let disk = marker_disk(dir.path(), marker);
    let password = dir.path().join("password");
    std::fs::write(&password, "password\n").unwrap();

    // A missing disk without a size, and --systems with --qemu-disk, are refused.
    let out = Command::cargo_bin("vmetal")
        .unwrap()
        .args(["lab", "bmc", "--qemu-disk"])
        .arg(dir.path().join("none.img"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--qemu-disk-size"));
    let out = Command::cargo_bin("vmetal")
        .unwrap()
        .args(["lab", "bmc", "--systems", "2", "--qemu-disk"])
        .arg(&disk)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");

    let mut child = Command::cargo_bin("vmetal")
        .unwrap()
        .args([
            "lab",
            "bmc",
            "--redfish",
            "127.0.0.1:0",
            "--ipmi",
            "127.0.0.1:0",
        ])
        .args([
            "--qemu-accel",
            "tcg",
            "--qemu-memory",
            "256",
            "--qemu-cpus",
            "1",
        ])
        .args(["--qemu-mac", "52:54:00:AB:CD:EF", "--qemu-disk"])
        .arg(&disk)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let row = loop {
        let line = lines.next().expect("lab printed its VM").unwrap();
        if !line.starts_with('#') {
            break line;
        }
    };
    let cols: Vec<String> = row.split('\t').map(String::from).collect();
    let mut lab = Lab {
        child,
        redfish: vec![cols[2].clone()],
        ipmi: vec![cols[3].clone()],
    };
    assert_eq!(cols[1], "52:54:00:ab:cd:ef", "bootMACAddress: {row}");
    let workdir = dir.path().join("vm.img.lab");
    let serial = workdir.join("vm-serial.log");

    let (code, out) = bmc(&lab.ipmi[0], &password, &["bootdev", "disk", "--legacy"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = bmc(&lab.redfish[0], &password, &["power", "on"]);
    assert_eq!(code, 0, "{out}");
    wait_for("the marker on the serial console", BOOT_TIMEOUT, || {
        std::fs::read_to_string(&serial).is_ok_and(|s| s.contains(marker))
    });
    let (code, out) = bmc(&lab.ipmi[0], &password, &["power", "status"]);
    assert_eq!((code, out.trim()), (0, "Chassis Power is on"));
    let pid: u32 = std::fs::read_to_string(workdir.join("vm.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists());

    let (code, out) = bmc(&lab.ipmi[0], &password, &["power", "off"]);
    assert_eq!(code, 0, "{out}");
    wait_for("QEMU gone after power off", BOOT_TIMEOUT, || {
        !proc_dir.exists()
    });
    let (code, out) = bmc(&lab.redfish[0], &password, &["power", "status"]);
    assert_eq!((code, out.trim()), (0, "Chassis Power is off"));

    // Even a lab killed outright takes its VM with it.
    let (code, out) = bmc(&lab.redfish[0], &password, &["power", "on"]);
    assert_eq!(code, 0, "{out}");
    let pidfile = workdir.join("vm.pid");
    wait_for("QEMU started again", BOOT_TIMEOUT, || {
        std::fs::read_to_string(&pidfile).is_ok_and(|p| !p.trim().is_empty())
    });
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists());
    lab.child.kill().unwrap();
    lab.child.wait().unwrap();
    wait_for(
        "QEMU gone with the killed lab",
        std::time::Duration::from_secs(10),
        || !proc_dir.exists(),
    );
}

/// Generous for TCG on two shared cores; the boot sector needs a second or two.
const BOOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
