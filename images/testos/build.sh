#!/usr/bin/env bash
# Build the vmetal test OS: a small BIOS-bootable disk image (MBR, one FAT partition with
# syslinux, a Debian kernel and a busybox + vmetal-testos initramfs) that applies a config
# drive's cloud-init subset and joins a cluster with `kubeadm join`.
#
#   images/testos/build.sh        -> images/testos/out/{testos.raw,testos.qcow2,SHA256SUMS}
#
#   SOURCE_DATE_EPOCH   timestamp of every file in the image (default: 2024-01-01)
#   VMETAL_TESTOS_DISK_MIB  image size in MiB (default 64)
#   VMETAL_KERNEL_PKG, VMETAL_CACHE   see ramdisk/debs.sh
#
# Nothing is mounted: the partition is formatted and filled with mtools and syslinux's
# mtools-based installer, so it builds as root in a container that cannot mount vfat.
# Reproducible (same inputs, same bytes) and cached (unchanged inputs rebuild nothing).
set -euo pipefail
start=$SECONDS
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=$here/out
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1704067200}
disk_mib=${VMETAL_TESTOS_DISK_MIB:-64}
# The boot partition starts at 1 MiB and runs to the end of the image: the agent appends the
# config drive after the image's end, so no free space is left in it.
part_start=2048
part_sectors=$((disk_mib * 2048 - part_start))
# Boot partition type FAT16 LBA (0x0E), not FAT32 LBA (0x0C): the agent's config-drive reader
# takes the last 0x0C partition, and the boot partition must never look like a config drive.
part_type=0e
disk_signature=7e570500
mbr_bin=/usr/lib/syslinux/mbr/mbr.bin

die() {
  echo "build.sh: $*" >&2
  exit 1
}

need() { # need COMMAND DEBIAN_PACKAGE
  command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]] ||
    die "$1 is missing: apt-get install $2"
}
need mkfs.fat dosfstools
need mcopy mtools
need syslinux syslinux
need cpio cpio
need qemu-img qemu-utils
need modinfo kmod
need strip binutils
need sha256sum coreutils
need flock util-linux
[[ -r $mbr_bin ]] || die "$mbr_bin is missing: apt-get install syslinux-common"
export PATH=$PATH:/usr/sbin:/sbin

# Concurrent builds (tests running side by side) take turns; the second finds the cache.
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

# shellcheck source=../../ramdisk/debs.sh
source "$repo/ramdisk/debs.sh"
kernel_pkg=$(kernel_pkg)
kernel_dir=$(fetch_deb "$kernel_pkg")
busybox_dir=$(fetch_deb busybox-static)
testos_bin=$("$repo/ramdisk/static-build.sh" vmetal-lab vmetal-testos)
kver=$(basename "$(ls -d "$kernel_dir"/lib/modules/*/ | head -n1)")
vmlinuz=$kernel_dir/boot/vmlinuz-$kver
[[ -r $vmlinuz ]] || die "no kernel image in $kernel_dir"
moddir=$kernel_dir/lib/modules/$kver

# Drivers for QEMU's virtio and emulated devices and the usual server disks and NICs.
modules=(virtio_pci virtio_blk virtio_scsi virtio_net virtio_rng sd_mod ahci ata_piix nvme e1000 e1000e)

# Cache: every input that shapes the bytes of the image.
key=$(
  {
    sha256sum "$here/build.sh" "$testos_bin" "$vmlinuz" "$busybox_dir/bin/busybox" "$mbr_bin"
    echo "$kernel_pkg $(basename "$kernel_dir") $(basename "$busybox_dir")"
    echo "$SOURCE_DATE_EPOCH $disk_mib ${modules[*]}"
    syslinux --version 2>&1 | head -n1
    mkfs.fat --help 2>&1 | tail -n1
    mcopy --version | head -n1
    qemu-img --version | head -n1
    cpio --version | head -n1
    gzip --version | head -n1
  } | sha256sum | cut -d' ' -f1
)
if [[ -f $out/.inputs && $(cat "$out/.inputs") == "$key" && -f $out/testos.raw &&
  -f $out/testos.qcow2 && -f $out/SHA256SUMS ]]; then
  echo "build.sh: up to date ($out)" >&2
  echo "$out/testos.raw"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/vmetal-testos.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root

# --- initramfs ------------------------------------------------------------------------------
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/testos,proc,sys,dev,run,tmp,root,var/lib}
chmod 0700 "$root/root"
chmod 1777 "$root/tmp"
cp "$busybox_dir/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list-full); do
  [[ -e $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
done
cp "$testos_bin" "$root/bin/vmetal-testos"
strip "$root/bin/vmetal-testos"
ln -s bin/vmetal-testos "$root/init"
for applet in kubeadm curl; do
  rm -f "$root/usr/bin/$applet"
  ln -s /bin/vmetal-testos "$root/usr/bin/$applet"
done

# Kernel modules with their dependencies, listed in load order for init.
declare -A seen=()
order=()
module_file() { # module name (- and _ are the same) -> path relative to $moddir
  local pattern=${1//[-_]/[-_]}
  (cd "$moddir" && find kernel -name "$pattern.ko" | head -n1)
}
add_module() {
  local name=${1//-/_} file dep
  [[ -n ${seen[$name]:-} ]] && return
  seen[$name]=1
  file=$(module_file "$1")
  if [[ -z $file ]]; then
    grep -q "/${1//[-_]/[-_]}.ko\$" "$moddir/modules.builtin" 2>/dev/null ||
      die "kernel module $1 is neither in $kernel_pkg nor built in"
    return
  fi
  for dep in $(modinfo -F depends "$moddir/$file" | tr ',' ' '); do
    add_module "$dep"
  done
  mkdir -p "$root/lib/modules/$kver/$(dirname "$file")"
  cp "$moddir/$file" "$root/lib/modules/$kver/$file"
  order+=("/lib/modules/$kver/$file")
}
for m in "${modules[@]}"; do add_module "$m"; done
printf '%s\n' "${order[@]}" >"$root/etc/testos/modules"

cat >"$root/etc/os-release" <<OS
NAME="vmetal test OS"
ID=vmetal-testos
PRETTY_NAME="vmetal test OS (Debian kernel $kver, busybox)"
OS
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"

find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
  cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9 -n >"$work/initrd.gz"

# --- boot partition -------------------------------------------------------------------------
cat >"$work/syslinux.cfg" <<CFG
SERIAL 0 115200
DEFAULT testos
PROMPT 0
TIMEOUT 0
LABEL testos
  LINUX /vmlinuz
  INITRD /initrd.gz
  APPEND console=tty0 console=ttyS0,115200
CFG
cp "$vmlinuz" "$work/vmlinuz"
touch -d "@$SOURCE_DATE_EPOCH" "$work/vmlinuz" "$work/initrd.gz" "$work/syslinux.cfg"

raw=$work/testos.raw
truncate -s "${disk_mib}M" "$raw"
le32() { # little-endian 32-bit value as printf escapes
  printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $((($1 >> 8) & 255)) \
    $((($1 >> 16) & 255)) $((($1 >> 24) & 255))
}
# MBR: syslinux's boot code, a fixed disk signature, one active partition, the boot signature.
dd if="$mbr_bin" of="$raw" bs=440 count=1 conv=notrunc status=none
# shellcheck disable=SC2059
printf "$(le32 0x$disk_signature)\\x00\\x00\\x80\\xfe\\xff\\xff\\x$part_type\\xfe\\xff\\xff$(le32 $part_start)$(le32 $part_sectors)" |
  dd of="$raw" bs=1 seek=440 conv=notrunc status=none
printf '\x55\xaa' | dd of="$raw" bs=1 seek=510 conv=notrunc status=none

mkfs.fat -F 16 -n TESTOS --invariant -h "$part_start" \
  --offset "$part_start" "$raw" $((part_sectors / 2)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mcopy -m -i "$raw@@$((part_start * 512))" "$work/vmlinuz" "$work/initrd.gz" "$work/syslinux.cfg" ::/
syslinux --install --offset $((part_start * 512)) "$raw"

# --- outputs --------------------------------------------------------------------------------
# qcow2 without compression: the kernel and initramfs are compressed already, and an
# uncompressed qcow2 streams through any reader.
qemu-img convert -f raw -O qcow2 "$raw" "$work/testos.qcow2"
mkdir -p "$out"
rm -f "$out/.inputs"
mv "$raw" "$work/testos.qcow2" "$out/"
(cd "$out" && sha256sum testos.raw testos.qcow2 >SHA256SUMS)
echo "$key" >"$out/.inputs"
initrd_kib=$(($(stat -c %s "$work/initrd.gz") / 1024))
qcow2_kib=$(($(stat -c %s "$out/testos.qcow2") / 1024))
echo "build.sh: built $out/testos.raw (${disk_mib} MiB; initramfs ${initrd_kib} KiB, \
qcow2 ${qcow2_kib} KiB, kernel $kver) in $((SECONDS - start)) s" >&2
echo "$out/testos.raw"
