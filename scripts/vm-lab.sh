#!/usr/bin/env bash
# A rack of QEMU VMs provisioned by vmetal, on one machine (what metal3-dev-env does with
# libvirt and sushy-tools). Needs root, iproute2 and the packages ./test.sh installs.
#
#   scripts/vm-lab.sh [N]        N VMs (default 2): odd ones behind Redfish, even ones behind IPMI
#
# Creates network namespace `vmetal-lab` with bridge br0 (10.0.0.1/24) and one tap per VM,
# builds the agent ramdisk and the test OS images (cached), and runs `vmetal up` inside the
# namespace with the boot services on br0 (DHCP reservation mode). Ctrl-C stops everything and
# removes the namespace. Talk to it from another terminal with the printed kubectl prefix.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2}
ns=vmetal-lab
data=${VMETAL_DATA:-.vmetal-vm-data}

ramdisk/build.sh
images/testos/build.sh
cargo build --release --locked -p vmetal
mkdir -p "$data/images"
cp images/testos/out/testos.raw images/testos/out/testos.qcow2 images/testos/out/SHA256SUMS "$data/images/"

ip netns del "$ns" 2>/dev/null || true
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip -n "$ns" link set lo up
ip -n "$ns" link add br0 type bridge
ip -n "$ns" addr add 10.0.0.1/24 dev br0
ip -n "$ns" link set br0 up
vms=()
for i in $(seq 1 "$n"); do
  ip -n "$ns" tuntap add dev "tap$i" mode tap
  ip -n "$ns" link set "tap$i" master br0
  ip -n "$ns" link set "tap$i" up
  bmc=redfish
  ((i % 2 == 0)) && bmc=ipmi
  vms+=(--vm "name=vm-$i,mac=52:54:00:10:00:$(printf %02x "$i"),tap=tap$i,bmc=$bmc,disk=8G,cpus=2,memory=1024,ip=10.0.0.$((10 + i))/24")
done

echo "kubectl from another terminal:"
echo "  ip netns exec $ns kubectl --kubeconfig $data/kubeconfig get bmh,vmach"
ip netns exec "$ns" target/release/vmetal up --data-dir "$data" \
  --boot-interface br0 --boot-server-ip 10.0.0.1 --boot-mode reservation \
  --ramdisk ramdisk/out "${vms[@]}"
