#!/usr/bin/env bash
# The local demo. On a machine that can run a node (root on a Linux host or VM with cgroups), a real
# analysis: scripts/cluster.sh brings up a one-node cluster with tollgate installed from its Helm chart, a
# FLAME-shaped Job is created with plain kubectl, hardened, run, and its requests reach stand-ins for the hub,
# storage and message broker with the proxy's token; then everything is taken down again. Elsewhere it says
# why and shows the admission-only demo: a real control plane (etcd + kube-apiserver), tollgate-webhook
# registered with it, a plain `kubectl run` pod shown hardened, and a request through tollgate-proxy to a
# stand-in hub with the token added. Binaries come from the Go module proxy on first use, then are cached.
set -euo pipefail
cd "$(dirname "$0")/.."

admission_only() {
  TOLLGATE_BIN_DIR=$(tests/control-plane/provision.sh)
  export TOLLGATE_BIN_DIR
  cargo build --release --locked -q --workspace
  exec target/release/demo
}

if [[ $(id -u) != 0 ]] || ! scripts/cluster.sh check 2>/tmp/tollgate-demo-check.$$; then
  echo "== no node here ($(cat /tmp/tollgate-demo-check.$$ 2>/dev/null || echo 'needs root')): the admission-only demo instead"
  rm -f /tmp/tollgate-demo-check.$$
  admission_only
fi
rm -f /tmp/tollgate-demo-check.$$

step() { printf '\n== %s\n' "$*"; }
trap 'step "taking the cluster down"; scripts/cluster.sh down' EXIT
step "bringing up a one-node cluster and installing tollgate with its Helm chart (first run: builds, then cached)"
exports=$(scripts/cluster.sh up)
eval "$exports"
BIN=$(cat "$TOLLGATE_CLUSTER_DIR/bin")
k() { "$BIN/kubectl" "$@"; }
k get nodes
k -n tollgate get deployment,pods,service

step "a FLAME-shaped analysis Job, created with plain kubectl (no security settings of its own)"
cat <<JOB | tee /dev/stderr | k apply -f -
apiVersion: batch/v1
kind: Job
metadata: { name: analysis, namespace: $TOLLGATE_ANALYSIS_NAMESPACE }
spec:
  backoffLimit: 0
  template:
    metadata:
      annotations: { tollgate.dev/analysis-id: a1, tollgate.dev/project-id: p1 }
    spec:
      restartPolicy: Never
      containers:
        - name: analysis
          image: localhost/tollgate/example-analysis:0.1.0
          env: [{ name: ANALYSIS_ID, value: a1 }, { name: PROJECT_ID, value: p1 }]
JOB
k -n "$TOLLGATE_ANALYSIS_NAMESPACE" wait --for=condition=Complete job/analysis --timeout=120s
pod=$(k -n "$TOLLGATE_ANALYSIS_NAMESPACE" get pods -l job-name=analysis -o jsonpath='{.items[0].metadata.name}')

step "what the API server stored: the proxy as a native sidecar, restricted security contexts, resources, lifetime"
k -n "$TOLLGATE_ANALYSIS_NAMESPACE" get pod "$pod" -o jsonpath='{range .spec.initContainers[*]}init container {.name}: {.image} restartPolicy={.restartPolicy} runAsUser={.securityContext.runAsUser}{"\n"}{end}{range .spec.containers[*]}container {.name}: runAsNonRoot(pod)=true readOnlyRootFilesystem={.securityContext.readOnlyRootFilesystem} limits={.resources.limits}{"\n"}{end}activeDeadlineSeconds={.spec.activeDeadlineSeconds}{"\n"}'

step "the analysis ran, and completed (its log)"
k -n "$TOLLGATE_ANALYSIS_NAMESPACE" logs "$pod" -c analysis

step "what the stand-ins received: the proxy's token, fetched by the proxy; never a credential of the app's"
python3 - "$TOLLGATE_CLUSTER_DIR/standins.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"  {r['service']:8} {r['method']:5} {r['path']:50} authorization={r.get('authorization')}")
PY
step "done"
