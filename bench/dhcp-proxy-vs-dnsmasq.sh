#!/usr/bin/env bash
# DISCOVER→OFFER rate and latency of vmetal's proxy DHCP vs dnsmasq in proxy mode, on the
# same machine, over a veth pair between two network namespaces, with the same packet stream
# (BIOS PXE DISCOVERs, broadcast flag, from a fixed set of known MACs) at fixed concurrencies.
#
#   sudo bench/dhcp-proxy-vs-dnsmasq.sh [SECONDS] [CONCURRENCY...]   (default: 10 s, 1 and 16)
#
# Needs root, iproute2 and dnsmasq-base. Both servers know exactly the benchmark MACs (ours
# from its host set, dnsmasq from a dhcp-hostsfile plus dhcp-ignore=tag:!known) and log
# nothing per packet. Each configuration runs ROUNDS times, alternating servers.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${1:-10}
shift || true
CONCURRENCIES=("${@:-1 16}")
read -r -a CONCURRENCIES <<<"${CONCURRENCIES[*]}"
ROUNDS=${ROUNDS:-3}
MACS=256
SRV=vmb-bench-srv-$$
CLI=vmb-bench-cli-$$
SERVER_IP=10.88.0.1
DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)

[[ $(id -u) -eq 0 ]] || { echo "needs root (network namespaces, port 67)" >&2; exit 1; }
[[ -x $DNSMASQ ]] || { echo "dnsmasq missing: apt-get install -y dnsmasq-base" >&2; exit 1; }

cargo build --release --locked -q -p vmetal-boot --example dhcp_load
LOAD=target/release/examples/dhcp_load
WORK=$(mktemp -d)
SERVER_PID=

stop_server() {
  if [[ -n $SERVER_PID ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}
cleanup() {
  stop_server
  ip netns delete "$SRV" 2>/dev/null || true
  ip netns delete "$CLI" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$SRV"
ip netns add "$CLI"
ip link add veth-srv netns "$SRV" type veth peer name veth-cli netns "$CLI"
ip -n "$SRV" link set lo up
ip -n "$CLI" link set lo up
ip -n "$SRV" addr add "$SERVER_IP/24" dev veth-srv
ip -n "$CLI" addr add 10.88.0.2/24 dev veth-cli
ip -n "$SRV" link set veth-srv up
ip -n "$CLI" link set veth-cli up

# The MACs dhcp_load uses: 02:42:be:00:HI:LO for i in 0..MACS.
for ((i = 0; i < MACS; i++)); do
  printf '02:42:be:00:%02x:%02x,set:known\n' $((i >> 8)) $((i & 255))
done >"$WORK/hosts"

start_vmetal() {
  ip netns exec "$SRV" "$LOAD" serve --interface veth-srv --server-ip "$SERVER_IP" \
    --macs "$MACS" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
}
start_dnsmasq() {
  ip netns exec "$SRV" "$DNSMASQ" --keep-in-foreground --no-resolv --no-hosts --port=0 \
    --conf-file=/dev/null --pid-file="$WORK/dnsmasq.pid" --user=root \
    --interface=veth-srv --bind-interfaces \
    --dhcp-range="$SERVER_IP,proxy" \
    --dhcp-hostsfile="$WORK/hosts" --dhcp-ignore='tag:!known' \
    --pxe-service=x86PC,"vmetal bench",undionly \
    --quiet-dhcp --log-facility="$WORK/dnsmasq.log" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
}

run_one() { # server concurrency → RESULT line
  "start_$1"
  sleep 1
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "$1 did not start:" >&2
    cat "$WORK/server.log" >&2
    exit 1
  fi
  ip netns exec "$CLI" "$LOAD" load --interface veth-cli --macs "$MACS" \
    --concurrency "$2" --seconds "$SECONDS_PER_RUN" --warmup 2 --label "$1" | grep '^RESULT'
  stop_server
}

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "# dhcp-proxy-vs-dnsmasq: $(nproc) CPUs, ${SECONDS_PER_RUN}s per run, $ROUNDS rounds, $MACS MACs"
echo "# $($DNSMASQ --version | head -1)"
declare -A RATE P50 P99 LOST
for c in "${CONCURRENCIES[@]}"; do
  for ((r = 1; r <= ROUNDS; r++)); do
    for server in vmetal dnsmasq; do
      line=$(run_one "$server" "$c")
      echo "$line round=$r"
      RATE[$server,$c]+="$(field offers_per_sec "$line") "
      P50[$server,$c]+="$(field p50_ms "$line") "
      P99[$server,$c]+="$(field p99_ms "$line") "
      LOST[$server,$c]+="$(field lost "$line") "
    done
  done
done

echo
echo "Medians of $ROUNDS rounds:"
printf '| %-11s | %-8s | %10s | %8s | %8s | %5s |\n' concurrency server "offers/s" "p50 ms" "p99 ms" lost
printf '|%s|\n' "-------------|----------|------------|----------|----------|-------"
for c in "${CONCURRENCIES[@]}"; do
  for server in vmetal dnsmasq; do
    rate=$(tr ' ' '\n' <<<"${RATE[$server,$c]}" | grep . | median)
    p50=$(tr ' ' '\n' <<<"${P50[$server,$c]}" | grep . | median)
    p99=$(tr ' ' '\n' <<<"${P99[$server,$c]}" | grep . | median)
    lost=$(tr ' ' '\n' <<<"${LOST[$server,$c]}" | grep . | awk '{s+=$1} END {print s}')
    printf '| %-11s | %-8s | %10.0f | %8.3f | %8.3f | %5s |\n' "$c" "$server" "$rate" "$p50" "$p99" "$lost"
    eval "m_${server}_rate=$rate m_${server}_p99=$p99"
  done
  # shellcheck disable=SC2154
  awk -v c="$c" -v vr="$m_vmetal_rate" -v dr="$m_dnsmasq_rate" -v vp="$m_vmetal_p99" -v dp="$m_dnsmasq_p99" \
    'BEGIN { printf "| %-11s | ratio    | %9.2fx | %8s | %7.2fx |       |\n", c, vr / dr, "", vp / dp }'
done
echo "(ratio = vmetal / dnsmasq: above 1 is faster for offers/s, slower for p99)"
