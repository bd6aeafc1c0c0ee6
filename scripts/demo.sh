#!/usr/bin/env bash
# The local demo, no cluster and no setup beyond the toolchains: a real control plane (etcd +
# kube-apiserver built from the Go module proxy on first use, then cached), tollgate-webhook registered
# with it, a plain `kubectl run` pod shown hardened, and a request through tollgate-proxy to a stand-in hub
# with the token added. Everything it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
TOLLGATE_BIN_DIR=$(tests/control-plane/provision.sh)
export TOLLGATE_BIN_DIR
cargo build --release --locked -q --workspace
exec target/release/demo
