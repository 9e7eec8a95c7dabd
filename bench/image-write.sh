#!/usr/bin/env bash
# Image write throughput: vmetal-agent against Ironic's method and plain dd, on this machine.
#
#   bench/image-write.sh            (root: uses a loop device and drops the page cache)
#   DISK_MBPS=1000 bench/image-write.sh   the same with writes to the target limited to
#                                   1000 MB/s (a blkio cgroup), like a real disk slower than RAM
#
# Images: a 2 GiB raw image (1.25 GiB of incompressible data, then zeros, like a mostly full
# OS image) and its qcow2 conversion (2 GiB virtual), served over loopback HTTP by Python's
# http.server. Target: a 2 GiB loop device backed by a file (direct I/O). Each method runs
# RUNS times (default 3); the table gives the median. Methods:
#   vmetal     vmetal-agent write-image: raw streamed to the device (download, hash and
#              O_DIRECT writes run at once, zero chunks as write-zeroes); qcow2 converted from
#              memory while it downloads; fsync at the end
#   ironic     what Ironic's agent does for images it does not stream: download to a temporary
#              file in the ramdisk's tmpfs (/dev/shm here), hashing on the way (OpenSSL), then
#              `qemu-img convert -t directsync -O raw` (qcow2) or `dd oflag=direct` (raw)
#   dd         plain `dd bs=4M oflag=direct conv=fsync` of a local raw file (raw only)
#   dd+sha256  the same `dd` with `openssl dgst -sha256` of the local file running alongside:
#              the least a verified write of this image can cost here (raw only)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
WORK=${BENCH_DIR:-/var/tmp/vmetal-image-bench}
PORT=${PORT:-18090}
mkdir -p "$WORK/images"
for tool in qemu-img curl python3 losetup; do
  command -v "$tool" >/dev/null || { echo "image-write.sh: $tool is missing" >&2; exit 1; }
done

cargo build --release --locked -q -p vmetal-agent --bin vmetal-agent
AGENT=$PWD/target/release/vmetal-agent

raw=$WORK/images/bench.raw
qcow=$WORK/images/bench.qcow2
if [[ ! -f $raw ]]; then
  echo "making the 2 GiB test image"
  # Deterministic incompressible data: AES-CTR keystream of a fixed key.
  # (openssl dies of SIGPIPE when head has enough; that is the expected end.)
  { openssl enc -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f -iv 0 -nosalt -in /dev/zero 2>/dev/null || true; } |
    head -c $((1280 << 20)) > "$raw.tmp"
  truncate -s 2G "$raw.tmp"
  # Real zeros on disk (not a hole) so every method reads the same bytes.
  dd if=/dev/zero of="$raw.tmp" bs=4M seek=320 count=192 conv=notrunc status=none
  mv "$raw.tmp" "$raw"
fi
[[ -f $qcow ]] || qemu-img convert -f raw -O qcow2 "$raw" "$qcow"
(cd "$WORK/images" && sha256sum bench.raw bench.qcow2 > SHA256SUMS)
raw_sum=$(awk '/bench.raw/ {print $1}' "$WORK/images/SHA256SUMS")
qcow_sum=$(awk '/bench.qcow2/ {print $1}' "$WORK/images/SHA256SUMS")

python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$WORK/images" >/dev/null 2>&1 &
server=$!
target_file=$WORK/target.img
truncate -s 2G "$target_file"
loop=$(losetup --find --show --direct-io=on "$target_file")
throttle=
cleanup() {
  kill "$server" 2>/dev/null || true
  if [[ -n $throttle ]]; then
    echo $$ > "${throttle%/*}/cgroup.procs" 2>/dev/null || true
    rmdir "$throttle" 2>/dev/null || true
  fi
  losetup -d "$loop" 2>/dev/null || true
  rm -f /dev/shm/vmetal-bench-*
}
trap cleanup EXIT
if [[ -n ${DISK_MBPS:-} ]]; then
  # Every method's writes to the target go through the same limit: this shell and all it
  # starts join a cgroup whose write bandwidth to the loop device is capped.
  dev=$(lsblk -dno MAJ:MIN "$loop" | tr -d ' ')
  if [[ -f /sys/fs/cgroup/blkio/blkio.throttle.write_bps_device ]]; then
    throttle=/sys/fs/cgroup/blkio/vmetal-image-bench
    mkdir -p "$throttle"
    echo "$dev $((DISK_MBPS * 1000000))" > "$throttle/blkio.throttle.write_bps_device"
  elif grep -qw io /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    throttle=/sys/fs/cgroup/vmetal-image-bench
    echo +io > /sys/fs/cgroup/cgroup.subtree_control
    mkdir -p "$throttle"
    echo "$dev wbps=$((DISK_MBPS * 1000000))" > "$throttle/io.max"
  else
    echo "image-write.sh: DISK_MBPS needs the blkio (v1) or io (v2) cgroup controller" >&2
    exit 1
  fi
  echo $$ > "$throttle/cgroup.procs"
  echo "writes to $loop limited to $DISK_MBPS MB/s"
fi
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/SHA256SUMS" && break; sleep 0.1; done
# Keep the images in the page cache, as an HTTP server would; the target is not cached.
cat "$raw" "$qcow" > /dev/null

base=http://127.0.0.1:$PORT
now() { date +%s.%N; }
settle() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; cat "$raw" "$qcow" > /dev/null; }

run_vmetal() { # format url sum
  "$AGENT" write-image --url "$2" --device "$loop" --format "$1" --checksum "$3" --checksum-type sha256 \
    >/dev/null 2>>"$WORK/agent.log"
}
run_ironic() { # format url sum
  local tmp=/dev/shm/vmetal-bench-download got
  # Hashing on the way with OpenSSL (as IPA's Python hashlib does; coreutils' sha256sum here
  # lacks SHA-NI and would make Ironic look slower than it is).
  got=$(curl -sf "$2" | tee "$tmp" | openssl dgst -sha256 -r | cut -d' ' -f1)
  [[ $got == "$3" ]] || { echo "ironic: checksum mismatch" >&2; return 1; }
  if [[ $1 == qcow2 ]]; then
    qemu-img convert -t directsync -f qcow2 -O raw "$tmp" "$loop"
  else
    dd if="$tmp" of="$loop" bs=4M oflag=direct conv=fsync status=none
  fi
  rm -f "$tmp"
}
run_dd() { dd if="$raw" of="$loop" bs=4M oflag=direct conv=fsync status=none; }
run_dd_hashed() {
  local sum
  sum=$(openssl dgst -sha256 -r "$raw" | cut -d' ' -f1) &
  dd if="$raw" of="$loop" bs=4M oflag=direct conv=fsync status=none
  wait
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
measure() { # name command...
  local name=$1 times=() t0 t1
  shift
  for _ in $(seq "$RUNS"); do
    settle
    t0=$(now)
    "$@"
    t1=$(now)
    times+=("$(echo "$t1 - $t0" | bc -l)")
  done
  printf '%s\n' "${times[@]}" | median
}

size_mb=$((2048 * 1048576 / 1000000))
declare -A secs
secs[vmetal_raw]=$(measure vmetal_raw run_vmetal raw "$base/bench.raw" "$raw_sum")
secs[ironic_raw]=$(measure ironic_raw run_ironic raw "$base/bench.raw" "$raw_sum")
secs[dd_raw]=$(measure dd_raw run_dd)
secs[dd_hashed]=$(measure dd_hashed run_dd_hashed)
secs[vmetal_qcow2]=$(measure vmetal_qcow2 run_vmetal qcow2 "$base/bench.qcow2" "$qcow_sum")
secs[ironic_qcow2]=$(measure ironic_qcow2 run_ironic qcow2 "$base/bench.qcow2" "$qcow_sum")

# The written disk must equal the image (checked once, after the last vmetal qcow2 run).
run_vmetal qcow2 "$base/bench.qcow2" "$qcow_sum"
cmp -n $((2 << 30)) "$raw" "$loop" || { echo "image-write.sh: the disk differs from the image" >&2; exit 1; }

mbps() { echo "scale=0; $size_mb / $1" | bc -l; }
ratio() { printf %.2f "$(echo "scale=4; $1 / $2" | bc -l)"; }
echo
echo "| image (2 GiB virtual) | vmetal-agent | Ironic's method | plain dd | dd + sha256 | vmetal vs Ironic | vmetal vs dd | vmetal vs dd + sha256 |"
echo "|---|---|---|---|---|---|---|---|"
printf '| raw | %s s (%s MB/s) | %s s (%s MB/s) | %s s (%s MB/s) | %s s (%s MB/s) | %s× | %s× | %s× |\n' \
  "$(printf %.2f "${secs[vmetal_raw]}")" "$(mbps "${secs[vmetal_raw]}")" \
  "$(printf %.2f "${secs[ironic_raw]}")" "$(mbps "${secs[ironic_raw]}")" \
  "$(printf %.2f "${secs[dd_raw]}")" "$(mbps "${secs[dd_raw]}")" \
  "$(printf %.2f "${secs[dd_hashed]}")" "$(mbps "${secs[dd_hashed]}")" \
  "$(ratio "${secs[ironic_raw]}" "${secs[vmetal_raw]}")" "$(ratio "${secs[dd_raw]}" "${secs[vmetal_raw]}")" \
  "$(ratio "${secs[dd_hashed]}" "${secs[vmetal_raw]}")"
printf '| qcow2 (%s MiB file) | %s s (%s MB/s) | %s s (%s MB/s) | – | – | %s× | – | – |\n' \
  "$(($(stat -c %s "$qcow") >> 20))" \
  "$(printf %.2f "${secs[vmetal_qcow2]}")" "$(mbps "${secs[vmetal_qcow2]}")" \
  "$(printf %.2f "${secs[ironic_qcow2]}")" "$(mbps "${secs[ironic_qcow2]}")" \
  "$(ratio "${secs[ironic_qcow2]}" "${secs[vmetal_qcow2]}")"
echo
echo "(median of $RUNS runs; MB/s of the 2 GiB virtual size; ratios are speed-ups, >1 means vmetal is faster${DISK_MBPS:+; target writes limited to $DISK_MBPS MB/s})"
