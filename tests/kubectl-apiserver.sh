#!/usr/bin/env bash
# Drives the embedded API server with the real kubectl: CRDs and examples with `apply -f`,
# `get` tables (STATE/CONSUMER/ONLINE/ERROR/AGE), `get -w`, merge and status patches,
# server-side apply, `explain`, `delete`. Run by ./test.sh; needs a built `vmetal` binary.
set -euo pipefail
cd "$(dirname "$0")/.."

VMETAL=${VMETAL:-target/debug/vmetal}
DATA=$(mktemp -d)
PORT=${PORT:-$((20000 + RANDOM % 20000))}
LOG="$DATA/apiserver.log"
cleanup() { [[ -n "${PID:-}" ]] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$DATA"; }
trap cleanup EXIT
fail() { echo "kubectl-apiserver.sh: FAIL: $*" >&2; echo "--- server log" >&2; cat "$LOG" >&2; exit 1; }

"$VMETAL" apiserver --data-dir "$DATA" --bind "127.0.0.1:$PORT" >"$LOG" 2>&1 &
PID=$!
for _ in $(seq 100); do [[ -f "$DATA/kubeconfig" ]] && grep -q listening "$LOG" && break; sleep 0.1; done
[[ -f "$DATA/kubeconfig" ]] || fail "server did not write its kubeconfig"
[[ $(stat -c %a "$DATA/kubeconfig") == 600 ]] || fail "kubeconfig is not mode 0600"
k() { kubectl --kubeconfig "$DATA/kubeconfig" --cache-dir "$DATA/cache" "$@"; }

# Anonymous requests are refused.
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert <(grep certificate-authority-data "$DATA/kubeconfig" | awk '{print $2}' | base64 -d) "https://127.0.0.1:$PORT/api/v1/namespaces")
[[ $code == 401 ]] || fail "anonymous request got $code, want 401"

# `grep -q` in a pipeline would close it early under pipefail: capture, then match.
out=$(k get namespaces); grep -q '^default ' <<<"$out" || fail "default namespace missing: $out"
out=$("$VMETAL" crds | k apply -f -); grep -q 'baremetalhosts.metal3.io created' <<<"$out" || fail "CRDs not created: $out"
# `kubectl create namespace` sends protobuf, which we do not speak (see README); apply JSON/YAML.
printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: metal}\n' | k apply -f - >/dev/null || fail "namespace"
k apply -k deploy/examples >/dev/null || fail "examples rejected"

out=$(k get bmh -n metal)
echo "$out" | head -1 | grep -Eq '^NAME +STATE +CONSUMER +ONLINE +ERROR +AGE$' || fail "bmh columns: $out"
echo "$out" | grep -Eq '^worker-0 +false ' || fail "worker-0 row: $out"
out=$(k get bmh -n metal -o wide); grep -q 'BMC' <<<"$out" || fail "-o wide lacks BMC column: $out"
out=$(k get bmhost -n metal worker-1 -o jsonpath='{.spec.bmc.address}'); grep -q '^ipmi://' <<<"$out" || fail "short name bmhost: $out"

# Watch sees a change.
k get bmh -n metal worker-0 -w --output-watch-events >"$DATA/watch.out" 2>&1 &
WPID=$!
sleep 1
k patch bmh -n metal worker-0 --type merge -p '{"spec":{"online":true}}' >/dev/null || fail "merge patch"
for _ in $(seq 50); do grep -q MODIFIED "$DATA/watch.out" && break; sleep 0.1; done
kill $WPID 2>/dev/null || true
grep -q 'MODIFIED' "$DATA/watch.out" || fail "watch did not see the change: $(cat "$DATA/watch.out")"
[[ $(k get bmh -n metal worker-0 -o jsonpath='{.metadata.generation}') == 2 ]] || fail "generation not bumped"

# Status subresource.
k patch bmh -n metal worker-0 --subresource status --type merge \
  -p '{"status":{"provisioning":{"state":"available"},"operationalStatus":"OK","errorMessage":"","poweredOn":true,"errorCount":0}}' >/dev/null \
  || fail "status patch"
out=$(k get bmh -n metal worker-0); grep -q ' available ' <<<"$out" || fail "STATE column does not show the status: $out"
[[ $(k get bmh -n metal worker-0 -o jsonpath='{.metadata.generation}') == 2 ]] || fail "status bumped generation"

# Validation: a wrong enum value gets 422 naming the field.
if err=$(k patch bmh -n metal worker-0 --type merge -p '{"spec":{"bootMode":"bios"}}' 2>&1); then fail "invalid bootMode accepted"; fi
echo "$err" | grep -q 'spec.bootMode' || fail "invalid bootMode error does not name the field: $err"

# Server-side apply creates and then merges.
cat >"$DATA/ssa.yaml" <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata: {name: ssa, namespace: metal}
data: {a: "1"}
YAML
k apply --server-side -f "$DATA/ssa.yaml" >/dev/null || fail "server-side apply (create)"
sed -i 's/a: "1"/a: "2"/' "$DATA/ssa.yaml"
k apply --server-side -f "$DATA/ssa.yaml" >/dev/null || fail "server-side apply (update)"
[[ $(k get cm -n metal ssa -o jsonpath='{.data.a}') == 2 ]] || fail "server-side apply did not update"

# explain reads our OpenAPI.
out=$(k explain baremetalhost.spec.bmc 2>&1) || true; grep -qi 'address' <<<"$out" || fail "explain: $out"

# Delete.
out=$(k delete bmh -n metal worker-1); grep -q deleted <<<"$out" || fail "delete: $out"
k get bmh -n metal worker-1 >/dev/null 2>&1 && fail "worker-1 still there"
echo "kubectl-apiserver.sh: ok"
