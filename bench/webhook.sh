#!/usr/bin/env bash
# tollgate-webhook (default policy) side by side with its floor, bench/src/bin/floor_webhook.rs: rustls +
# hyper set up as the webhook's server, decoding the AdmissionReview and allowing it with the uid — what any
# webhook on this stack does at least. Both serve HTTPS (h1 and h2 by ALPN) on 127.0.0.1 (ports 18443 and
# 18444, WEBHOOK_BENCH_PORT moves them) with a P-256 certificate made here (the kind tollgate-certs makes),
# and are loaded in turn by oha (`cargo install oha --locked` where missing) with two AdmissionReviews of a
# pod as kube-apiserver sends it (defaults, the ServiceAccount token volume, a Job controller's labels):
#   - typical: one analysis container, 2.7 KB;
#   - huge: 12 containers with 300 env vars each, 191 KB.
# Measured: saturation (h2, 8 connections x 8 streams; huge 4 x 2; two rounds, averaged), p99 at a fixed
# rate with oha's latency correction (1,000 reviews/s typical over h1, 16 connections; 50 reviews/s huge
# over h2), and resident memory (VmRSS) after all of it.
# Prints bench/run.sh table rows on stdout, progress on stderr. Takes about 2.5 minutes after the release
# build (8 saturation runs of 6 s, 4 fixed-rate runs of 12 s, warm-ups). Run it on an otherwise idle
# machine, alone:
#   bench/webhook.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SAT_SECONDS=${SAT_SECONDS:-6}
RATE_SECONDS=${RATE_SECONDS:-12}
PORT=${WEBHOOK_BENCH_PORT:-18443}
URL="https://127.0.0.1:$PORT/mutate"

command -v python3 >/dev/null || { echo "bench/webhook.sh: needs python3" >&2; exit 2; }
command -v openssl >/dev/null || { echo "bench/webhook.sh: needs openssl" >&2; exit 2; }
if ! command -v oha >/dev/null; then
  echo "installing oha (cargo install oha --locked)" >&2
  cargo install oha --locked -q >&2
  export PATH="$HOME/.cargo/bin:$PATH"
fi
oha --version >&2
echo "building release binaries" >&2
cargo build --release --locked -q -p tollgate-webhook -p tollgate-bench --bin tollgate-webhook --bin floor-webhook >&2
bin=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release

work=$(mktemp -d)
servers=()
cleanup() {
  for p in "${servers[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${servers[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=tollgate-webhook.tollgate.svc \
  -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null

# The two reviews: pods as kube-apiserver hands them to webhooks (defaults filled in, the ServiceAccount
# admission plugin's token volume and mounts already there), created by the Job controller.
python3 - "$work" <<'EOF'
import json, sys
out = sys.argv[1]
def review(uid, pod):
    return {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {
        "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "flame-analyses", "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:job-controller", "uid": "4c7e0d7a-2b4a-4f57-9f0e-6a1d8b3c2e10",
                     "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
        "object": pod, "oldObject": None, "dryRun": False,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}}}
token_volume = {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}
token_mount = {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}
def container(name, env):
    return {"name": name, "image": "ghcr.io/privateaim/analysis-python:2.1.0", "args": ["--input", "/data/in", "--output", "/data/out"],
            "env": env, "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
            "volumeMounts": [token_mount], "imagePullPolicy": "IfNotPresent",
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}
def pod(containers):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "generateName": "analysis-job-", "namespace": "flame-analyses",
        "labels": {"batch.kubernetes.io/job-name": "analysis-job", "job-name": "analysis-job",
                   "batch.kubernetes.io/controller-uid": "0b9a7c6e-1111-4222-8333-944455556666",
                   "controller-uid": "0b9a7c6e-1111-4222-8333-944455556666"},
        "annotations": {"tollgate.dev/analysis-id": "urn:osa:localhost:dep:abc123", "tollgate.dev/project-id": "project-42"},
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "analysis-job",
                             "uid": "0b9a7c6e-1111-4222-8333-944455556666", "controller": True, "blockOwnerDeletion": True}]},
      "spec": {"restartPolicy": "Never", "containers": containers, "volumes": [token_volume],
               "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler", "securityContext": {},
               "serviceAccountName": "default", "serviceAccount": "default", "terminationGracePeriodSeconds": 30,
               "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority", "priority": 0,
               "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                               {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]}}
typical = review("5c1f3e2a-7b9d-4e6f-8a0b-1c2d3e4f5a6b", pod([container("analysis", [{"name": "ANALYSIS_MODE", "value": "federated"}])]))
huge = review("9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a", pod([container(f"worker-{c}",
    [{"name": f"VAR_{c:02d}_{i:03d}", "value": f"value-{c:02d}-{i:03d}-abcde"} for i in range(300)]) for c in range(12)]))
for name, body in [("typical", typical), ("huge", huge)]:
    with open(f"{out}/{name}.json", "w") as f:
        json.dump(body, f, separators=(",", ":"))
EOF
echo "review bodies: typical $(wc -c <"$work/typical.json") bytes, huge $(wc -c <"$work/huge.json") bytes" >&2

wait_ready() { # port pid
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "bench/webhook.sh: the server on $1 exited:" >&2; cat "$work"/*.log >&2; exit 1; }
    sleep 0.05
  done
  echo "bench/webhook.sh: nothing listens on $1" >&2
  exit 1
}

# load WHO NAME BODY ARGS...: one oha run against WHO, its JSON report in $work/WHO-NAME.json; fails unless
# every answer was a 200.
load() {
  local who=$1 name=$2 body=$3; shift 3
  oha --no-tui --output-format json --insecure -w -m POST -T application/json -D "$work/$body.json" "$@" \
    "https://127.0.0.1:${port[$who]}/mutate" >"$work/$who-$name.json"
  python3 - "$work/$who-$name.json" "$who $name" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
codes = report.get("statusCodeDistribution", {})
# Requests still in flight when the duration ends are cut off by oha, not failed by the server.
errors = {k: v for k, v in report.get("errorDistribution", {}).items() if k != "aborted due to deadline"}
total = sum(codes.values())
if errors or total == 0 or set(codes) != {"200"}:
    sys.exit(f"bench/webhook.sh: {sys.argv[2]}: status codes {codes}, errors {errors}")
s, p = report["summary"], report["latencyPercentiles"]
print(f"  {sys.argv[2]}: {total} reviews, {s['requestsPerSec']:.0f}/s, p50 {p['p50']*1000:.2f} ms, p99 {p['p99']*1000:.2f} ms",
      file=sys.stderr)
EOF
}

# Both servers run side by side, each on its own port, and are loaded in turn, measurement by measurement
# (tollgate, floor, tollgate, floor for saturation), so that a change in the machine's speed during the run
# affects both alike; the one not being loaded is idle.
declare -A port=([tollgate]=$PORT [floor]=$((PORT + 1)))
declare -A pid
# A port already taken would have the bench load whatever listens there instead of the server it started.
for p in "${port[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "bench/webhook.sh: port $p is already in use; stop what listens there or set WEBHOOK_BENCH_PORT" >&2
    exit 1
  fi
done
"$bin/tollgate-webhook" serve --listen "127.0.0.1:${port[tollgate]}" --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" \
  --drain-delay 0s >"$work/tollgate.log" 2>&1 &
pid[tollgate]=$!
servers+=("${pid[tollgate]}")
"$bin/floor-webhook" --listen "127.0.0.1:${port[floor]}" --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" >"$work/floor.log" 2>&1 &
pid[floor]=$!
servers+=("${pid[floor]}")
for who in tollgate floor; do
  wait_ready "${port[$who]}" "${pid[$who]}"
  oha --no-tui --output-format quiet --insecure -m POST -T application/json -D "$work/typical.json" --http2 -c 4 -p 4 -z 2s \
    "https://127.0.0.1:${port[$who]}/mutate" >/dev/null
done
echo "tollgate (pid ${pid[tollgate]}) and floor (pid ${pid[floor]}); load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in 1 2; do
  for who in tollgate floor; do load "$who" "sat-typical-$round" typical --http2 -c 8 -p 8 -z "${SAT_SECONDS}s"; done
  for who in tollgate floor; do load "$who" "sat-huge-$round" huge --http2 -c 4 -p 2 -z "${SAT_SECONDS}s"; done
done
for who in tollgate floor; do load "$who" rate-typical typical -c 16 -q 1000 --latency-correction -z "${RATE_SECONDS}s"; done
for who in tollgate floor; do load "$who" rate-huge huge --http2 -c 4 -p 1 -q 50 --latency-correction -z "${RATE_SECONDS}s"; done
sleep 1
for who in tollgate floor; do
  awk '/^VmRSS:/ {print $2}' "/proc/${pid[$who]}/status" >"$work/$who-rss"
  echo "  $who RSS after load: $(cat "$work/$who-rss") KiB" >&2
done
echo "reviews logged by tollgate: $(grep -c '"message":"review"' "$work/tollgate.log"); load at the end $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$work" <<'EOF'
import json, sys
work = sys.argv[1]
def report(who, name):
    return json.load(open(f"{work}/{who}-{name}.json"))
def rps(who, name):
    return sum(report(who, f"{name}-{r}")["summary"]["requestsPerSec"] for r in (1, 2)) / 2
def p99(who, name):
    return report(who, name)["latencyPercentiles"]["p99"] * 1000
def rss(who):
    return int(open(f"{work}/{who}-rss").read()) / 1024
def count(n):
    return f"{n/1000:.1f}k reviews/s" if n >= 10000 else f"{n:,.0f} reviews/s"
rows = [
    ("saturation, typical pod (h2, TLS)", count(rps("tollgate", "sat-typical")), count(rps("floor", "sat-typical")),
     rps("tollgate", "sat-typical") / rps("floor", "sat-typical"), "≥ 0.5× (0.7×)"),
    ("saturation, huge pod (12 containers × 300 env, 191 KB; h2)", count(rps("tollgate", "sat-huge")), count(rps("floor", "sat-huge")),
     rps("tollgate", "sat-huge") / rps("floor", "sat-huge"), "≥ 0.8×"),
    ("p99 at 1,000 reviews/s, typical pod (h1)", f"{p99('tollgate', 'rate-typical'):.2f} ms", f"{p99('floor', 'rate-typical'):.2f} ms",
     p99("tollgate", "rate-typical") / p99("floor", "rate-typical"), "≤ 1.5×"),
    ("p99 at 50 reviews/s, huge pod (h2)", f"{p99('tollgate', 'rate-huge'):.2f} ms", f"{p99('floor', 'rate-huge'):.2f} ms",
     p99("tollgate", "rate-huge") / p99("floor", "rate-huge"), "≤ 1.5×"),
    ("RSS after the load", f"{rss('tollgate'):.1f} MiB", f"{rss('floor'):.1f} MiB", rss("tollgate") / rss("floor"), "≤ 1×"),
]
for what, ours, floor, ratio, goal in rows:
    print(f"ROW\twebhook\t{what}\t{ours}\tfloor {floor}\t{ratio:.2f}×\t{goal}")
EOF
