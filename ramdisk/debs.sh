# Sourced by the ramdisk and test-OS builds: fetch Debian packages with `apt-get download` into
# a cache and unpack them with `dpkg-deb -x`. Nothing is installed into the host.
#
#   VMETAL_CACHE       cache directory (default: ramdisk/cache, ignored by git)
#   VMETAL_KERNEL_PKG  kernel package (default: what linux-image-amd64 depends on today)

VMETAL_CACHE=${VMETAL_CACHE:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/cache}
mkdir -p "$VMETAL_CACHE/debs" "$VMETAL_CACHE/x"

# The kernel package, pinned by the caller or resolved from the metapackage.
kernel_pkg() {
  if [[ -n ${VMETAL_KERNEL_PKG:-} ]]; then
    echo "$VMETAL_KERNEL_PKG"
    return
  fi
  local pkg
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [[ -z $pkg ]]; then
    echo "debs.sh: cannot resolve linux-image-amd64 (run apt-get update, or set VMETAL_KERNEL_PKG)" >&2
    return 1
  fi
  echo "$pkg"
}

# fetch_deb PKG: download PKG's .deb once (cached by name and version), unpack it once, and
# print the directory it was unpacked into.
fetch_deb() {
  local pkg=$1 version deb dir
  version=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
  if [[ -z $version || $version == "(none)" ]]; then
    echo "debs.sh: no candidate version for $pkg (apt-get update?)" >&2
    return 1
  fi
  deb=$(ls "$VMETAL_CACHE/debs/${pkg}_${version//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)
  if [[ -z $deb ]]; then
    (cd "$VMETAL_CACHE/debs" && apt-get download -q "$pkg=$version" >&2) || {
      echo "debs.sh: apt-get download $pkg=$version failed" >&2
      return 1
    }
    deb=$(ls "$VMETAL_CACHE/debs/${pkg}_${version//:/%3a}_"*.deb | head -n1)
  fi
  dir="$VMETAL_CACHE/x/$(basename "$deb" .deb)"
  if [[ ! -e $dir/.unpacked ]]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    dpkg-deb -x "$deb" "$dir"
    touch "$dir/.unpacked"
  fi
  echo "$dir"
}
