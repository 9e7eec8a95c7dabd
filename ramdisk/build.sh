#!/usr/bin/env bash
# Build the vmetal agent ramdisk: ramdisk/out/vmlinuz and ramdisk/out/initramfs (+ SHA256SUMS)
# from Debian's kernel and busybox-static packages and the static vmetal-agent binary.
#
# Reproducible: every file gets the mtime SOURCE_DATE_EPOCH and owner 0:0, the newc cpio lists
# entries sorted with renumbered inodes (cpio --reproducible), and zstd/gzip -n write no
# timestamps, so the same inputs give the same sha256. Cached: the .debs are downloaded and
# unpacked once (debs.sh), cargo rebuilds the agent only when its sources changed, and when the
# fingerprint of all inputs matches the last build nothing else is redone.
#
#   SOURCE_DATE_EPOCH  mtime of every file in the initramfs (default: 1704067200, 2024-01-01)
#   RAMDISK_COMPRESS   zstd (default; needs CONFIG_RD_ZSTD) or gzip
#   VMETAL_KERNEL_PKG, VMETAL_CACHE: see debs.sh
set -euo pipefail
umask 022
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
out=$here/out
t0=$(date +%s%N)
epoch=${SOURCE_DATE_EPOCH:-1704067200}
compress=${RAMDISK_COMPRESS:-zstd}

# The drivers the agent needs; their dependencies are added from the modules' own `depends`.
# README.md says why these and not more.
modules=(
  virtio_pci virtio_net virtio_blk virtio_scsi # QEMU/KVM guests
  sd_mod ahci ata_piix nvme                    # SATA/SAS/SCSI and NVMe disks
  megaraid_sas mpt3sas smartpqi                # common server RAID controllers and HBAs
  e1000 e1000e igb ixgbe i40e ice              # Intel NICs
  bnxt_en tg3                                  # Broadcom NICs
  mlx5_core                                    # NVIDIA/Mellanox ConnectX-4 and later
)

die() {
  echo "build.sh: $*" >&2
  exit 1
}

missing=()
for tool in cpio:cpio depmod:kmod modinfo:kmod zstd:zstd gzip:gzip strip:binutils \
  file:file apt-get:apt dpkg-deb:dpkg flock:util-linux; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
((${#missing[@]} == 0)) || die "missing tools; install the Debian packages: ${missing[*]}"
case $compress in
zstd) compressor=(zstd -19 -T1 -q -c) ;;
gzip) compressor=(gzip -9 -n -c) ;;
*) die "RAMDISK_COMPRESS=$compress: use zstd or gzip" ;;
esac

mkdir -p "$out"
# One build at a time per output directory (tests and people may start one concurrently).
exec 9>"$out/.lock"
flock 9

# shellcheck source=ramdisk/debs.sh
source "$here/debs.sh"
kpkg=$(kernel_pkg)
kdir=$(fetch_deb "$kpkg")
bbdir=$(fetch_deb busybox-static)
agent=$("$here/static-build.sh" vmetal-agent vmetal-agent)

kvers=("$kdir"/lib/modules/*)
((${#kvers[@]} == 1)) || die "$kpkg has ${#kvers[@]} module trees, expected one"
kver=$(basename "${kvers[0]}")
moddir=$kdir/lib/modules/$kver
vmlinuz=$kdir/boot/vmlinuz-$kver
busybox=$bbdir/bin/busybox
[[ -f $vmlinuz ]] || die "$kpkg has no boot/vmlinuz-$kver"
[[ -x $busybox ]] || die "busybox-static has no bin/busybox"
grep -q "^CONFIG_RD_${compress^^}=y" "$kdir/boot/config-$kver" ||
  die "kernel $kver cannot unpack a $compress initramfs (CONFIG_RD_${compress^^}); use RAMDISK_COMPRESS=gzip"

report() {
  local ms=$((($(date +%s%N) - t0) / 1000000))
  awk -v what="$1" -v kver="$kver" -v c="$compress" -v out="$out" -v ms="$ms" \
    -v i="$(stat -c %s "$out/initramfs")" -v k="$(stat -c %s "$out/vmlinuz")" 'BEGIN {
      printf "ramdisk: %s (kernel %s): initramfs %.1f MiB (%s), vmlinuz %.1f MiB in %s; %.1f s\n",
        what, kver, i / 1048576, c, k / 1048576, out, ms / 1000 }' >&2
  sed 's/^/ramdisk: /' "$out/SHA256SUMS" >&2
}

# Everything the output depends on; the agent binary stands for the whole workspace.
fingerprint=$(
  {
    echo "epoch=$epoch compress=$compress modules=${modules[*]}"
    basename "$kdir"
    basename "$bbdir"
    sha256sum "$here/build.sh" "$here/init" "$agent" | cut -d' ' -f1
  } | sha256sum | cut -d' ' -f1
)
if [[ -f $out/.fingerprint && $(<"$out/.fingerprint") == "$fingerprint" ]] &&
  (cd "$out" && sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1); then
  report "up to date"
  exit 0
fi

# Module name (dashes as underscores, as the kernel compares them) → path under $moddir.
declare -A path_of=()
while IFS= read -r ko; do
  name=$(basename "$ko" .ko)
  path_of[${name//-/_}]=${ko#"$moddir"/}
done < <(find "$moddir/kernel" -name '*.ko')
declare -A want=()
# resolve NAME [optional]: add NAME and what it depends on (hard deps, then softdeps).
resolve() {
  local name=${1//-/_} optional=${2:-} rel dep
  [[ -z ${want[$name]:-} ]] || return 0
  rel=${path_of[$name]:-}
  if [[ -z $rel ]]; then
    # Built into the kernel, or an optional softdep we do not ship: nothing to copy.
    grep -Eq "/${name//_/[-_]}\.ko\$" "$moddir/modules.builtin" && return 0
    [[ -n $optional ]] && return 0
    die "module $1 is neither in $kpkg nor built in"
  fi
  want[$name]=$rel
  for dep in $(modinfo -F depends "$moddir/$rel" | tr ',' ' '); do
    resolve "$dep"
  done
  for dep in $(modinfo -F softdep "$moddir/$rel" | tr ' ' '\n' | grep -v -e ':$' -e '^$' || true); do
    resolve "$dep" optional
  done
}
for m in "${modules[@]}"; do
  resolve "$m"
done

stage=$out/.stage
rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,root,lib/modules/"$kver"}
chmod 1777 "$stage/tmp"
chmod 0700 "$stage/root"

install -m 0755 "$busybox" "$stage/bin/busybox"
while IFS= read -r applet; do
  [[ -e $stage/$applet || -L $stage/$applet ]] && continue
  mkdir -p "$(dirname "$stage/$applet")"
  ln -s /bin/busybox "$stage/$applet"
done < <("$busybox" --list-full)
# Symbols are of no use on the console; stripping roughly halves the binary.
strip --strip-all -o "$stage/bin/vmetal-agent" "$agent"
chmod 0755 "$stage/bin/vmetal-agent"
install -m 0755 "$here/init" "$stage/init"

for rel in "${want[@]}"; do
  install -D -m 0644 "$moddir/$rel" "$stage/lib/modules/$kver/$rel"
done
printf '%s\n' "${want[@]}" | sort >"$out/.shipped"
grep -Fx -f "$out/.shipped" "$moddir/modules.order" >"$stage/lib/modules/$kver/modules.order" || true
cp "$moddir/modules.builtin" "$moddir/modules.builtin.modinfo" "$stage/lib/modules/$kver/"
depmod -b "$stage" "$kver"

find "$stage" -exec touch -h -d "@$epoch" {} +
(cd "$stage" && find . -mindepth 1 -printf '%P\n' | sort |
  cpio --quiet -o -H newc -R 0:0 --reproducible) >"$out/initramfs.cpio.tmp"
"${compressor[@]}" "$out/initramfs.cpio.tmp" >"$out/initramfs.tmp"
uncompressed=$(stat -c %s "$out/initramfs.cpio.tmp")
rm -f "$out/initramfs.cpio.tmp"
install -m 0644 "$vmlinuz" "$out/vmlinuz.tmp"
touch -d "@$epoch" "$out/vmlinuz.tmp" "$out/initramfs.tmp"
mv -f "$out/vmlinuz.tmp" "$out/vmlinuz"
mv -f "$out/initramfs.tmp" "$out/initramfs"
(cd "$out" && sha256sum vmlinuz initramfs >SHA256SUMS)
echo "$fingerprint" >"$out/.fingerprint"
echo "ramdisk: ${#want[@]} modules: $(sed 's#.*/##; s#\.ko$##' "$out/.shipped" | sort | tr '\n' ' ')" >&2
echo "ramdisk: uncompressed cpio $((uncompressed / 1048576)) MiB; agent $(($(stat -c %s "$stage/bin/vmetal-agent") / 1048576)) MiB stripped" >&2
rm -rf "$stage"
report "built"
