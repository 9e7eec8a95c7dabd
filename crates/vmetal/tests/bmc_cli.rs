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
