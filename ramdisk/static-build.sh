#!/usr/bin/env bash
# Build one binary of the workspace as a statically linked executable (glibc, crt-static; no
# musl target is needed) and print its path. Used for the agent ramdisk and the test OS.
#   ramdisk/static-build.sh <package> <binary>
set -euo pipefail
cd "$(dirname "$0")/.."
pkg=$1 bin=$2
target=x86_64-unknown-linux-gnu
# Build scripts track some variables (ring's: CARGO_MANIFEST_DIR, SOURCE_DATE_EPOCH): a caller
# inside a cargo test or an image build exporting them would make every switch of callers
# rebuild the TLS stack. The binary depends on neither.
unset SOURCE_DATE_EPOCH
while IFS= read -r var; do
  unset "$var"
done < <(compgen -e | grep -E '^CARGO_(MANIFEST_|PKG_|CRATE_|BIN_|PRIMARY_|TARGET_TMPDIR)' || true)
# --target keeps these flags off build scripts and proc macros, and out of the host build.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" -p "$pkg" --bin "$bin" >&2
out="target/$target/release/$bin"
if ! file "$out" 2>/dev/null | grep -Eq "statically linked|static-pie linked" && ldd "$out" >/dev/null 2>&1; then
  echo "static-build.sh: $out is not statically linked" >&2
  exit 1
fi
echo "$PWD/$out"
