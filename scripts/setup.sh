#!/usr/bin/env bash
# Installs what building and testing need, idempotently: the wasm32-wasip2 Rust target.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
