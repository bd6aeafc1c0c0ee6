#!/usr/bin/env bash
# What tollgate adds to pod creation through a real kube-apiserver (etcd + kube-apiserver on loopback, the
# binaries tests/control-plane/provision.sh builds and caches): tests/src/bin/admission_bench.rs creates
# the same plain pod in turn in a namespace tollgate hardens, in three where the webhook floor answers (with
# tollgate's patch, with one label, with none) and in one nothing is registered for, splits tollgate's call
# with the API server's and the webhook's metrics, and prints bench/run.sh table rows. About a minute after the release build (the first run also builds the
# Kubernetes binaries, which takes several minutes once).
set -euo pipefail
cd "$(dirname "$0")/.."
TOLLGATE_BIN_DIR=$(tests/control-plane/provision.sh)
export TOLLGATE_BIN_DIR
cargo build --release --locked -q -p tollgate-webhook -p tollgate-certs -p tollgate-e2e -p tollgate-bench --bin floor-webhook --bin tollgate-webhook --bin tollgate-certs --bin tollgate-admission-bench >&2
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
"$target/release/tollgate-admission-bench" "${TOLLGATE_BENCH_PODS:-200}"
