#!/usr/bin/env bash
# Runs every test of the workspace: unit, fixture, denial-rule, CLI and HTTPS server tests.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked "$@"
