#!/usr/bin/env bash
# Fuzzes the DHCP request handler (crates/vmetal-boot/fuzz, target dhcp_request) for a bounded
# time: FUZZ_SECONDS of fuzzing (default 60) after the build. Exits non-zero on a crash; the
# crashing input is left in crates/vmetal-boot/fuzz/artifacts/dhcp_request/ (replay it with
# `cargo +nightly fuzz run dhcp_request <file>`). Needs the nightly toolchain (sanitizers);
# installs cargo-fuzz from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/../crates/vmetal-boot"
FUZZ_SECONDS=${FUZZ_SECONDS:-60}

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz-dhcp.sh: needs the nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz-dhcp.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# corpus/ grows between runs (ignored by git); seeds/ holds hand-made valid requests.
mkdir -p fuzz/corpus/dhcp_request
cargo +nightly fuzz build dhcp_request
cargo +nightly fuzz run dhcp_request fuzz/corpus/dhcp_request fuzz/seeds/dhcp_request -- \
  -max_total_time="$FUZZ_SECONDS" -max_len=1600 -timeout=10 -print_final_stats=1
