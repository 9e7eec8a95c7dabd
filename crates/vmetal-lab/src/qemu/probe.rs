//! Whether KVM is usable here: a short OVMF boot under KVM must reach the firmware's boot
//! manager within seconds, else the lab runs VMs under TCG.

use std::fs::OpenOptions;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::worker::Process;
use super::{Accel, DEFAULT_OVMF, contains, last_lines};

/// How long the KVM probe waits for OVMF to reach its boot manager (about 1 s with working
/// KVM, 3 s under TCG; broken nested KVM never gets there).
const PROBE_TIMEOUT: Duration = Duration::from_secs(6);

/// Whether KVM works here: a short probe boot of OVMF under KVM must reach its boot manager
/// within a few seconds (OVMF runs in long mode with paging, where broken nested KVM hangs,
/// while SeaBIOS alone often still gets through). Returns [`Accel::Kvm`] only if it did, and
/// says why on a log line.
pub fn probe_accel(qemu: &Path) -> Accel {
    let (accel, why) = probe(qemu, Path::new(DEFAULT_OVMF), PROBE_TIMEOUT);
    match accel {
        Accel::Kvm => tracing::info!("accelerator: KVM ({why})"),
        Accel::Tcg => tracing::info!("accelerator: TCG, because {why}"),
    }
    accel
}

fn probe(qemu: &Path, ovmf: &Path, timeout: Duration) -> (Accel, String) {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return (Accel::Tcg, format!("/dev/kvm cannot be opened ({e})"));
    }
    if !ovmf.is_file() {
        return (
            Accel::Tcg,
            format!(
                "{} is missing (apt-get install -y ovmf), so KVM cannot be probed",
                ovmf.display()
            ),
        );
    }
    let started = Instant::now();
    let child = Command::new(qemu)
        .args([
            "-no-user-config",
            "-nodefaults",
            "-machine",
            "pc,graphics=off",
            "-display",
            "none",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-no-reboot",
            "-serial",
            "stdio",
            "-bios",
        ])
        .arg(ovmf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => Process(c),
        Err(e) => return (Accel::Tcg, format!("{} cannot run ({e})", qemu.display())),
    };
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    if let Some(mut stdout) = child.0.stdout.take() {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
    }
    let mut console = Vec::new();
    let reached = loop {
        if contains(&console, b"BdsDxe") {
            break true;
        }
        let left = timeout.saturating_sub(started.elapsed());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(bytes) => console.extend_from_slice(&bytes),
            Err(_) => break contains(&console, b"BdsDxe"),
        }
    };
    let exited_early = matches!(child.0.try_wait(), Ok(Some(_)));
    let _ = child.0.kill();
    let _ = child.0.wait();
    let mut stderr = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    if reached {
        (
            Accel::Kvm,
            format!(
                "OVMF reached its boot manager under KVM in {} ms",
                started.elapsed().as_millis()
            ),
        )
    } else if exited_early {
        (
            Accel::Tcg,
            format!("QEMU with KVM exited at once: {}", last_lines(&stderr, 3)),
        )
    } else {
        (
            Accel::Tcg,
            format!(
                "OVMF did not reach its boot manager under KVM within {} s (nested KVM that \
                 hangs?)",
                timeout.as_secs()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_without_firmware_or_qemu_falls_back_to_tcg_and_says_why() {
        let (accel, why) = probe(
            Path::new("qemu-system-x86_64"),
            Path::new("/nonexistent/OVMF.fd"),
            Duration::from_secs(1),
        );
        assert_eq!(accel, Accel::Tcg);
        assert!(why.contains("/dev/kvm") || why.contains("ovmf"), "{why}");
        if Path::new("/dev/kvm").exists() && Path::new(DEFAULT_OVMF).exists() {
            let (accel, why) = probe(
                Path::new("/nonexistent/qemu"),
                Path::new(DEFAULT_OVMF),
                Duration::from_secs(1),
            );
            assert_eq!(accel, Accel::Tcg);
            assert!(why.contains("cannot run"), "{why}");
        }
    }
}
