#!/usr/bin/env bash
# The whole test suite, on a fresh clone of a fresh machine: installs what the tests need
# (Debian packages), then checks formatting and lints and runs every test in the workspace.
# CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages the tests drive as real, independent peers.
#   kubernetes-client: kubectl, a real client for the embedded API server
#   ipmitool:          a real IPMI lanplus client for the virtual IPMI BMC
#   curl:              a real HTTP client for the virtual Redfish BMC
need=()
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
command -v ipmitool >/dev/null 2>&1 || need+=(ipmitool)
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]})); then
  echo "test.sh: installing ${need[*]}"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
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
echo "test.sh: all tests passed"
