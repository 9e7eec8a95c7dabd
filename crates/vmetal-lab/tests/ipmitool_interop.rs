//! Interop with a client nobody here wrote: Debian's `ipmitool -I lanplus` drives the virtual
//! IPMI BMC with cipher suites 3 and 17 (power status/on/off, bootdev pxe efiboot, mc info).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;

use vmetal_bmc::{BootDevice, BootModeOverride, BootOverride, PowerState};
use vmetal_lab::ipmi::{IpmiService, RunningIpmi};
use vmetal_lab::{ServerIdentity, SimulatedServer};

/// Fails (never skips) without ipmitool: `test.sh` installs it.
fn ensure_ipmitool() {
    match Command::new("ipmitool").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        other => panic!(
            "ipmitool is required for this test but could not be run ({other:?}); install \
             Debian's ipmitool package (./test.sh does: apt-get install ipmitool)"
        ),
    }
}

async fn start() -> (SimulatedServer, RunningIpmi) {
    let server = SimulatedServer::new(ServerIdentity::numbered(7));
    let bmc = IpmiService::start(
        "127.0.0.1:0".parse().unwrap(),
        server.clone(),
        "u".into(),
        "p".into(),
    )
    .await
    .unwrap();
    (server, bmc)
}

/// Run ipmitool against `bmc`; returns (success, stdout + stderr).
async fn ipmitool(bmc: &RunningIpmi, suite: u8, password: &str, args: &[&str]) -> (bool, String) {
    let port = bmc.local_addr().port().to_string();
    let suite = suite.to_string();
    let mut argv: Vec<String> = [
        "-I",
        "lanplus",
        "-H",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "u",
        "-P",
        password,
        "-C",
        &suite,
        "-N",
        "1",
        "-R",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(args.iter().map(|s| s.to_string()));
    let out = tokio::task::spawn_blocking(move || Command::new("ipmitool").args(&argv).output())
        .await
        .unwrap()
        .expect("run ipmitool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn drive(suite: u8) {
    ensure_ipmitool();
    let (server, bmc) = start().await;

    let (ok, out) = ipmitool(&bmc, suite, "p", &["chassis", "power", "status"]).await;
    assert!(ok && out.contains("Chassis Power is off"), "{out}");

    let (ok, out) = ipmitool(&bmc, suite, "p", &["chassis", "power", "on"]).await;
    assert!(ok && out.contains("Up/On"), "{out}");
    assert_eq!(server.power_state(), PowerState::On);
    let (ok, out) = ipmitool(&bmc, suite, "p", &["chassis", "power", "status"]).await;
    assert!(ok && out.contains("Chassis Power is on"), "{out}");

    let (ok, out) = ipmitool(
        &bmc,
        suite,
        "p",
        &["chassis", "bootdev", "pxe", "options=efiboot"],
    )
    .await;
    assert!(ok && out.contains("Set Boot Device to pxe"), "{out}");
    assert_eq!(
        server.state().boot_override,
        Some(BootOverride::once(
            BootDevice::Pxe,
            Some(BootModeOverride::Uefi)
        ))
    );

    let (ok, out) = ipmitool(&bmc, suite, "p", &["chassis", "power", "off"]).await;
    assert!(ok && out.contains("Down/Off"), "{out}");
    assert_eq!(server.power_state(), PowerState::Off);

    let (ok, out) = ipmitool(&bmc, suite, "p", &["mc", "info"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("IPMI Version              : 2.0"), "{out}");
    assert!(out.contains("Manufacturer ID           : 32473"), "{out}");
    assert!(out.contains("Firmware Revision         : 1.00"), "{out}");

    // The wrong password fails the RAKP exchange and changes nothing.
    let (ok, out) = ipmitool(&bmc, suite, "wrong", &["chassis", "power", "on"]).await;
    assert!(!ok, "{out}");
    assert_eq!(server.power_state(), PowerState::Off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmitool_cipher_suite_3() {
    drive(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmitool_cipher_suite_17() {
    drive(17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmitool_negotiates_a_cipher_suite_and_lists_ours() {
    ensure_ipmitool();
    let (_server, bmc) = start().await;
    let port = bmc.local_addr().port().to_string();
    let base = [
        "-I",
        "lanplus",
        "-H",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "u",
        "-P",
        "p",
        "-N",
        "1",
        "-R",
        "2",
    ];
    let run = |extra: &'static [&'static str]| {
        let argv: Vec<String> = base.iter().chain(extra).map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || Command::new("ipmitool").args(&argv).output())
    };
    // No -C: ipmitool asks Get Channel Cipher Suites and picks the best.
    let out = run(&["-v", "chassis", "power", "status"])
        .await
        .unwrap()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("Chassis Power is off"),
        "{text}"
    );
    let out = run(&["channel", "getciphers", "ipmi"])
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("hmac_sha1") && text.contains("hmac_sha256"),
        "{text}"
    );
}
