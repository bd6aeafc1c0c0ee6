#!/usr/bin/env bash
# Runs every test of the workspace: webhook (unit, fixtures, generated pods, denial rules, CLI, HTTPS
# server), proxy (routes, egress, ingress, TLS) and the end-to-end tests against a real kube-apiserver.
# The first run builds kube-apiserver, kubectl, etcd and helm with Go and caches them (see
# tests/control-plane/provision.sh); later runs reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."
TOLLGATE_BIN_DIR=$(tests/control-plane/provision.sh)
export TOLLGATE_BIN_DIR
cargo build --workspace --locked
exec cargo test --workspace --locked "$@"
