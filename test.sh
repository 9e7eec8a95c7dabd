#!/usr/bin/env bash
# The whole test suite, on a fresh clone of a fresh machine: installs what the tests need
# (Debian packages), then checks formatting and lints and runs every test in the workspace.
# CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages the tests drive as real, independent peers.
#   kubernetes-client: kubectl, a real client for the embedded API server
#   ipmitool:          a real IPMI lanplus client for the virtual IPMI BMC
#   curl:              a real HTTP client for the virtual Redfish BMC, and a TFTP client
#   qemu-system-x86, ipxe-qemu, ipxe, ovmf: real PXE firmware (SeaBIOS + iPXE ROM, OVMF)
#                      booting from vmetal boot in a network namespace
#   dnsmasq-base:      a real DHCP server beside vmetal boot's proxy mode
# The VM tests (crates/vmetal/tests/vm_*.rs) build the agent ramdisk and the test OS from
# Debian packages and provision QEMU VMs end to end; they need root (network namespaces).
need=()
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
command -v ipmitool >/dev/null 2>&1 || need+=(ipmitool)
command -v curl >/dev/null 2>&1 || need+=(curl)
#   syslinux, syslinux-common, mtools, dosfstools: images/testos/build.sh (BIOS boot loader
#                      and MBR code; the FAT boot partition is made and filled without mounting)
command -v syslinux >/dev/null 2>&1 || need+=(syslinux)
[[ -e /usr/lib/syslinux/mbr/mbr.bin ]] || need+=(syslinux-common)
command -v mcopy >/dev/null 2>&1 || need+=(mtools)
command -v mkfs.fat >/dev/null 2>&1 || [[ -x /usr/sbin/mkfs.fat || -x /sbin/mkfs.fat ]] || need+=(dosfstools)
#   qemu-utils:        qemu-img, to make qcow2 test images (Debian's, matching qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
[[ -e /usr/lib/ipxe/qemu/efi-virtio.rom ]] || need+=(ipxe-qemu)
[[ -e /usr/lib/ipxe/undionly.kpxe ]] || need+=(ipxe)
[[ -e /usr/share/ovmf/OVMF.fd ]] || need+=(ovmf)
command -v dnsmasq >/dev/null 2>&1 || [[ -x /usr/sbin/dnsmasq ]] || need+=(dnsmasq-base)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
#   cpio, kmod, zstd, file: ramdisk/build.sh (newc archive, modinfo/depmod, compression,
#                      static-binary check) for the agent ramdisk the QEMU tests boot
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v depmod >/dev/null 2>&1 || [[ -x /usr/sbin/depmod || -x /sbin/depmod ]] || need+=(kmod)
command -v zstd >/dev/null 2>&1 || need+=(zstd)
command -v file >/dev/null 2>&1 || need+=(file)
# Debian's qemu-system-x86 replaces a newer backported qemu-utils; reinstall the matching one.
if [[ " ${need[*]} " == *" qemu-system-x86 "* && " ${need[*]} " != *" qemu-utils "* ]]; then
  need+=(qemu-utils)
fi
if ((${#need[@]})); then
  echo "test.sh: installing ${need[*]}"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# The ramdisk and test-OS builds `apt-get download` the Debian kernel and busybox-static
# (unpacked, never installed): they need the package lists.
if ! apt-cache policy busybox-static 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  echo "test.sh: apt-get update (package lists for the ramdisk build)"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
fi

echo "test.sh: cargo fmt --check"
cargo fmt --all -- --check
echo "test.sh: cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "test.sh: cargo test"
cargo test --workspace --lib --bins --tests --examples --locked
cargo test --workspace --doc --locked
echo "test.sh: kubectl against the embedded API server"
cargo build -p vmetal --locked
tests/kubectl-apiserver.sh
echo "test.sh: fuzzing the DHCP request handler (60 s after the build)"
FUZZ_SECONDS=60 tests/fuzz-dhcp.sh
echo "test.sh: all tests passed"
