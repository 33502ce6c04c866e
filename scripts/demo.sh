#!/usr/bin/env bash
# Runs the component locally with no accounts: builds it and the host, serves the HTTP export
# and asks /healthz, then runs the cron export once with a broken configuration to show the
# configuration check. Everything it starts, it stops.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --target wasm32-wasip2 --release -p sentry-logs-collector
cargo build -p collector-host
host=target/debug/collector-host
state=$(mktemp -d)
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$state"' EXIT

local_vars=(
  --variable gcs_bucket=demo-bucket
  --variable gcs_access_token=local-demo-token
  --variable gcs_endpoint=http://127.0.0.1:4443
  --variable sentry_org=demo
  --variable sentry_auth_token=sntryu_local_demo_token
  --variable sentry_api_base=http://127.0.0.1:9000
  --variable sentry_region_hosts=http://127.0.0.1:9000
)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$host" --state-dir "$state" "${local_vars[@]}" serve --listen "127.0.0.1:$port" &
server=$!
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null && break
  sleep 0.1
done

echo "== GET /healthz (valid configuration)"
python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/healthz').read().decode())"

echo "== cron run with an organization token and a bad duration (the configuration check)"
"$host" --state-dir "$state" "${local_vars[@]}" \
  --variable sentry_auth_token=sntrys_an_org_token --variable lag=ten cron || echo "(exit code $?, as expected)"
