#!/usr/bin/env bash
# Runs every test from a fresh clone: installs prerequisites, builds the component for
# wasm32-wasip2 and the host, then runs the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --test-tools
cargo build --target wasm32-wasip2 --release -p sentry-logs-collector
cargo test --workspace "$@"
