#!/usr/bin/env bash
# What tollgate costs on a real one-node cluster built on this machine (scripts/cluster.sh: containerd, a
# kubelet, the chart installed with Helm): pod creation with the webhook running as a pod versus without,
# and what the sidecar adds to an analysis's start and end (tests/src/bin/node_bench.rs). Needs root and a
# VM (scripts/cluster.sh check); brings the cluster up and takes it down. About 4 minutes after the builds.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/cluster.sh check
cargo build --release --locked -q -p tollgate-e2e --bin tollgate-node-bench >&2
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
env_file=$(mktemp)
trap 'scripts/cluster.sh down >&2 || true; rm -f "$env_file"' EXIT
scripts/cluster.sh up > "$env_file"
# shellcheck disable=SC1090
source "$env_file"
"$target/release/tollgate-node-bench" "${TOLLGATE_BENCH_PODS:-100}" "${TOLLGATE_BENCH_RUNS:-6}"
