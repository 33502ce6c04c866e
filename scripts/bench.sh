#!/usr/bin/env bash
# The performance benchmark (docs/performance.md): builds the component and the hot-path
# micro-benchmark for wasm32-wasip2, runs the micro-benchmark natively and in wasm, then the
# end-to-end scenarios against the Sentry simulator with sentry.io's rate limits and 50 ms per
# request, and the scale scenario (a million events and spans an hour, in 25-second slices
# under --max-memory 128MiB). Takes about 35 minutes, most of it waiting for rate limits.
# Arguments pick scenarios: steady backlog wide full scale backfill webhooks hot-path (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
# The build goes to the repository's own target/, whatever CARGO_TARGET_DIR or a cargo config
# above the clone says: the tests and the manifests look for the component there.
export CARGO_TARGET_DIR="$PWD/target"

scripts/setup.sh
cargo build --quiet --target wasm32-wasip2 --release -p sentry-logs-collector
cargo build --quiet --target wasm32-wasip2 --release --example hot_path --no-default-features
cargo run --quiet --release --example hot_path
cargo run --quiet -p collector-host --example bench -- "$@"
