#!/usr/bin/env bash
# Runs every test of the workspace: webhook (unit, fixtures, generated pods, denial rules, after-admission
# decisions, CLI, HTTPS server), proxy (routes, egress, ingress, TLS, local destinations), the egress lock
# (tollgate-cni, in network namespaces it creates: needs root, or TOLLGATE_SKIP_PRIVILEGED=1), the end-to-end
# tests against a real kube-apiserver, and the node tests on a real one-node cluster (scripts/cluster.sh), FLAME's
# end to end among them (tests/tests/node_flame.rs).
# The first run builds kube-apiserver, kubectl, etcd, helm, containerd, kubelet and the other node binaries
# with Go and caches them (tests/control-plane/provision.sh, tests/node/provision.sh); later runs reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."
TOLLGATE_BIN_DIR=$(tests/control-plane/provision.sh)
export TOLLGATE_BIN_DIR
cargo build --workspace --locked
cargo test --workspace --locked "$@"

# The node tests share one cluster. They need root on a Linux host or VM with cgroups.
if [[ $(id -u) != 0 && -z ${TOLLGATE_REQUIRE_NODE:-} ]]; then
  echo "test.sh: the node tests were NOT run: they need root (scripts/cluster.sh); everything else passed" >&2
  exit 0
fi
scripts/cluster.sh check
tests/node/provision.sh > /dev/null   # installs what the node needs from Debian before the host is fingerprinted
before=$(tests/node/host-state.sh)
down_and_compare() {
  scripts/cluster.sh down
  if ! diff <(echo "$before") <(tests/node/host-state.sh) >&2; then
    echo "test.sh: cluster.sh down did not leave the host as it found it (the diff above)" >&2
    return 1
  fi
}
trap 'down_and_compare || exit 1' EXIT
exports=$(scripts/cluster.sh up)
eval "$exports"
# README's "tollgate in ten minutes", as written, on the cluster as `up` leaves it (it deletes what it made).
cargo test -p tollgate-e2e --locked --test walkthrough -- --ignored
# Each suite is one test that runs its steps in their order (STEPS in the file), stopping at the first failure.
cargo test -p tollgate-e2e --locked --test node -- --ignored
# The egress lock's installer, on this node, where it cannot lock: it fails visibly (its own namespace).
cargo test -p tollgate-e2e --locked --test chart_platforms -- --ignored
# FLAME end to end on the same cluster, after the node tests uninstalled tollgate: it installs the FLAME profile
# itself (charts/tollgate/values-flame.yaml) beside the FLAME node's stand-ins.
cargo test -p tollgate-e2e --locked --test node_flame -- --ignored
