//! QEMU's command line for one boot of a lab VM: firmware, boot order, disk, NIC, serial
//! console and QMP socket, as a pure function of the VM's config and the BMC's boot request.
//!
//! Boot order is set with `bootindex` on the devices, which both SeaBIOS and OVMF honour
//! (OVMF ignores `-boot order=`/`once=`). A one-time override stays one-time because QEMU runs
//! with `-no-reboot`: a guest reboot ends the process and the BMC model decides the next boot.

use std::path::{Path, PathBuf};

use vmetal_bmc::BootModeOverride;

use super::{Accel, DiskFormat, QemuConfig, QemuNet};
use crate::sim::BootSource;

/// What one QEMU run boots: the BMC's boot source and firmware mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootRequest {
    /// Where to boot from. `UefiHttp` boots the NIC like `Pxe` (the firmware picks PXE or
    /// HTTP); `BiosSetup` has no equivalent and boots the default order (disk, then network).
    pub source: BootSource,
    /// `Legacy` runs SeaBIOS (QEMU's default) with the iPXE virtio ROM; `Uefi` runs OVMF with
    /// its own network stack.
    pub mode: BootModeOverride,
}

/// Per-run files QEMU is pointed at (they live in the VM's workdir).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPaths {
    /// The QMP unix socket QEMU listens on.
    pub qmp_socket: PathBuf,
    /// Where QEMU writes its pid.
    pub pidfile: PathBuf,
}

/// Boot priorities of the devices (1 boots first); `None` leaves a device out of the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Order {
    cd: Option<u32>,
    disk: u32,
    nic: u32,
}

fn order(source: &BootSource) -> Order {
    match source {
        BootSource::Pxe | BootSource::UefiHttp => Order {
            cd: None,
            disk: 2,
            nic: 1,
        },
        BootSource::Cd(_) => Order {
            cd: Some(1),
            disk: 2,
            nic: 3,
        },
        // A real server's default order: the disk, then the network when it does not boot.
        BootSource::Disk | BootSource::BiosSetup => Order {
            cd: None,
            disk: 1,
            nic: 2,
        },
    }
}

/// QEMU option values escape a comma by doubling it.
fn esc(value: &str) -> String {
    value.replace(',', ",,")
}

fn path(p: &Path) -> String {
    // Paths were checked to be UTF-8 when the machine was created.
    esc(&p.to_string_lossy())
}

/// The arguments (without the program) for one QEMU run.
pub fn qemu_args(config: &QemuConfig, boot: &BootRequest, paths: &RunPaths) -> Vec<String> {
    let order = order(&boot.source);
    let uefi = boot.mode == BootModeOverride::Uefi;
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_string()));

    push(&["-name", &esc(&config.name)]);
    push(&["-no-user-config", "-nodefaults"]);
    // graphics=off makes SeaBIOS copy its (and the iPXE ROM's) screen output to the serial port.
    push(&["-machine", "pc,graphics=off", "-display", "none"]);
    match config.accel {
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
    }
    push(&["-smp", &config.cpus.to_string()]);
    push(&["-m", &config.memory_mib.to_string()]);
    // Start paused: the worker resumes the guest once QMP is up, so no event is missed.
    push(&["-S", "-no-reboot"]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=qmp,path={},server=on,wait=off",
            path(&paths.qmp_socket)
        ),
        "-mon",
        "chardev=qmp,mode=control",
    ]);
    push(&["-pidfile", &path(&paths.pidfile)]);
    push(&[
        "-chardev",
        &format!(
            "file,id=serial0,path={},append=on",
            path(&config.serial_log)
        ),
        "-serial",
        "chardev:serial0",
    ]);
    if uefi {
        push(&["-bios", &path(&config.ovmf)]);
    }
    if let Some(id) = &config.smbios {
        push(&["-uuid", &esc(&id.uuid)]);
        push(&[
            "-smbios",
            &format!(
                "type=1,manufacturer={},product={},serial={}",
                esc(&id.manufacturer),
                esc(&id.model),
                esc(&id.serial_number)
            ),
        ]);
    }

    let format = match config.disk_format {
        DiskFormat::Raw => "raw",
        DiskFormat::Qcow2 => "qcow2",
    };
    push(&[
        "-drive",
        &format!(
            "if=none,id=disk0,file={},format={format},discard=unmap",
            path(&config.disk)
        ),
        "-device",
        &format!("virtio-blk-pci,drive=disk0,bootindex={}", order.disk),
    ]);

    match &config.net {
        QemuNet::Tap { ifname } => push(&[
            "-netdev",
            &format!("tap,id=net0,ifname={},script=no,downscript=no", esc(ifname)),
        ]),
        QemuNet::User => push(&["-netdev", "user,id=net0"]),
    }
    // Legacy: QEMU's default ROM for virtio-net is Debian's iPXE (ipxe-qemu), which does the
    // PXE. UEFI: no ROM, so OVMF's own virtio driver and PXE client (arch 7) do it, as a real
    // server's UEFI would.
    let rom = if uefi { ",romfile=" } else { "" };
    push(&[
        "-device",
        &format!(
            "virtio-net-pci,netdev=net0,mac={},bootindex={}{rom}",
            esc(&config.mac),
            order.nic
        ),
    ]);

    if let (BootSource::Cd(media), Some(index)) = (&boot.source, order.cd) {
        // An inserted URL is read through QEMU's curl block driver; none is an empty tray.
        let file = media
            .as_deref()
            .map(|url| format!(",file={}", esc(url)))
            .unwrap_or_default();
        push(&[
            "-drive",
            &format!("if=none,id=cd0,media=cdrom,readonly=on{file}"),
            "-device",
            &format!("ide-cd,drive=cd0,bootindex={index}"),
        ]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::ServerIdentity;

    fn config(net: QemuNet) -> QemuConfig {
        let mut c = QemuConfig::new(
            "vm-1",
            "/run/lab/vm-1",
            "52:54:00:aa:bb:01",
            "/var/lib/lab/vm-1.img",
        );
        c.net = net;
        c
    }

    fn paths() -> RunPaths {
        RunPaths {
            qmp_socket: "/run/lab/vm-1/vm-1.qmp".into(),
            pidfile: "/run/lab/vm-1/vm-1.pid".into(),
        }
    }

    fn args(c: &QemuConfig, source: BootSource, mode: BootModeOverride) -> Vec<String> {
        qemu_args(c, &BootRequest { source, mode }, &paths())
    }

    /// The value following `flag`, for every occurrence.
    fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    fn device<'a>(args: &'a [String], prefix: &str) -> &'a str {
        let found: Vec<&str> = values(args, "-device")
            .into_iter()
            .filter(|d| d.starts_with(prefix))
            .collect();
        assert_eq!(found.len(), 1, "{prefix} in {args:?}");
        found[0]
    }

    #[test]
    fn legacy_network_boot_tries_the_nic_first_with_the_ipxe_rom_then_the_disk() {
        let c = config(QemuNet::User);
        let a = args(&c, BootSource::Pxe, BootModeOverride::Legacy);
        assert_eq!(
            device(&a, "virtio-net-pci"),
            "virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:01,bootindex=1"
        );
        assert_eq!(
            device(&a, "virtio-blk-pci"),
            "virtio-blk-pci,drive=disk0,bootindex=2"
        );
        assert!(!a.contains(&"-bios".to_string()), "SeaBIOS is the default");
        assert_eq!(values(&a, "-netdev"), vec!["user,id=net0"]);
        assert_eq!(
            values(&a, "-drive"),
            vec!["if=none,id=disk0,file=/var/lib/lab/vm-1.img,format=raw,discard=unmap"]
        );
    }

    #[test]
    fn uefi_network_boot_uses_ovmf_without_an_option_rom() {
        let c = config(QemuNet::Tap {
            ifname: "tap-vm1".into(),
        });
        for source in [BootSource::Pxe, BootSource::UefiHttp] {
            let a = args(&c, source, BootModeOverride::Uefi);
            assert_eq!(values(&a, "-bios"), vec!["/usr/share/ovmf/OVMF.fd"]);
            assert_eq!(
                device(&a, "virtio-net-pci"),
                "virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:01,bootindex=1,romfile="
            );
            assert_eq!(
                values(&a, "-netdev"),
                vec!["tap,id=net0,ifname=tap-vm1,script=no,downscript=no"]
            );
        }
    }

    #[test]
    fn disk_boot_tries_the_disk_then_the_network_in_both_modes() {
        let mut c = config(QemuNet::User);
        c.disk_format = DiskFormat::Qcow2;
        for mode in [BootModeOverride::Legacy, BootModeOverride::Uefi] {
            for source in [BootSource::Disk, BootSource::BiosSetup] {
                let a = args(&c, source, mode);
                assert_eq!(
                    device(&a, "virtio-blk-pci"),
                    "virtio-blk-pci,drive=disk0,bootindex=1"
                );
                assert!(device(&a, "virtio-net-pci").contains("bootindex=2"));
                assert!(values(&a, "-drive")[0].contains("format=qcow2"));
                assert_eq!(
                    values(&a, "-bios").len(),
                    usize::from(mode == BootModeOverride::Uefi)
                );
            }
        }
    }

    #[test]
    fn cd_boot_attaches_the_inserted_url_first_or_an_empty_tray() {
        let c = config(QemuNet::User);
        let a = args(
            &c,
            BootSource::Cd(Some("http://images/boot,1.iso".into())),
            BootModeOverride::Legacy,
        );
        assert_eq!(
            values(&a, "-drive")[1],
            "if=none,id=cd0,media=cdrom,readonly=on,file=http://images/boot,,1.iso"
        );
        assert_eq!(device(&a, "ide-cd"), "ide-cd,drive=cd0,bootindex=1");
        assert!(device(&a, "virtio-blk-pci").ends_with("bootindex=2"));
        assert!(device(&a, "virtio-net-pci").ends_with("bootindex=3"));
        let empty = args(&c, BootSource::Cd(None), BootModeOverride::Uefi);
        assert_eq!(
            values(&empty, "-drive")[1],
            "if=none,id=cd0,media=cdrom,readonly=on"
        );
        let no_cd = args(&c, BootSource::Disk, BootModeOverride::Legacy);
        assert!(
            values(&no_cd, "-device")
                .iter()
                .all(|d| !d.contains("ide-cd"))
        );
    }

    #[test]
    fn every_run_is_headless_paused_one_shot_and_controlled_over_qmp() {
        let mut c = config(QemuNet::User);
        c.cpus = 4;
        c.memory_mib = 2048;
        let a = args(&c, BootSource::Disk, BootModeOverride::Legacy);
        for flag in ["-no-user-config", "-nodefaults", "-S", "-no-reboot"] {
            assert!(a.iter().any(|x| x == flag), "{flag} in {a:?}");
        }
        assert_eq!(values(&a, "-display"), vec!["none"]);
        assert_eq!(values(&a, "-machine"), vec!["pc,graphics=off"]);
        assert_eq!(values(&a, "-accel"), vec!["tcg"]);
        assert_eq!(values(&a, "-smp"), vec!["4"]);
        assert_eq!(values(&a, "-m"), vec!["2048"]);
        assert_eq!(
            values(&a, "-chardev"),
            vec![
                "socket,id=qmp,path=/run/lab/vm-1/vm-1.qmp,server=on,wait=off",
                "file,id=serial0,path=/run/lab/vm-1/vm-1-serial.log,append=on"
            ]
        );
        assert_eq!(values(&a, "-mon"), vec!["chardev=qmp,mode=control"]);
        assert_eq!(values(&a, "-serial"), vec!["chardev:serial0"]);
        assert_eq!(values(&a, "-pidfile"), vec!["/run/lab/vm-1/vm-1.pid"]);
        assert!(values(&a, "-smbios").is_empty());

        c.accel = Accel::Kvm;
        let kvm = args(&c, BootSource::Disk, BootModeOverride::Legacy);
        assert_eq!(values(&kvm, "-accel"), vec!["kvm"]);
        assert_eq!(values(&kvm, "-cpu"), vec!["host"]);
    }

    #[test]
    fn smbios_identity_matches_the_bmc_and_commas_are_escaped() {
        let mut c = config(QemuNet::User);
        c.name = "vm,odd".into();
        c.disk = "/srv/a,b.img".into();
        let mut id = ServerIdentity::numbered(4);
        id.model = "Lab, Model 2".into();
        c.smbios = Some(id.clone());
        let a = args(&c, BootSource::Disk, BootModeOverride::Uefi);
        assert_eq!(values(&a, "-name"), vec!["vm,,odd"]);
        assert_eq!(values(&a, "-uuid"), vec![id.uuid.as_str()]);
        assert_eq!(
            values(&a, "-smbios"),
            vec![format!(
                "type=1,manufacturer=vmetal,product=Lab,, Model 2,serial={}",
                id.serial_number
            )]
        );
        assert!(values(&a, "-drive")[0].contains("file=/srv/a,,b.img,"));
    }
}
