#!/usr/bin/env bash
# Runs every test from a fresh clone: installs prerequisites, builds the component for
# wasm32-wasip2 and the host, then runs the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# The build goes to the repository's own target/, whatever CARGO_TARGET_DIR or a cargo config
# above the clone says: the tests and the manifests look for the component there.
export CARGO_TARGET_DIR="$PWD/target"

scripts/setup.sh --test-tools
cargo build --target wasm32-wasip2 --release -p sentry-logs-collector
cargo test --workspace "$@"
