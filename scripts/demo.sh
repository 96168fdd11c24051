#!/usr/bin/env bash
# `make demo`: start the embedded stack, run the main job with live logs, show limits at work.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=${CRONIUM_DEMO_DIR:-.cronium/demo}
PORT=$($BIN/python -c 'from cronium_bus.embedded import free_port; print(free_port())')
export CRONIUM_WEBSOCKET_PORT=$($BIN/python -c 'from cronium_bus.embedded import free_port; print(free_port())')
export CRONIUM_CONSOLE_PORT=$($BIN/python -c 'from cronium_bus.embedded import free_port; print(free_port())')
mkdir -p "$DATA"
: > "$DATA/up.out"
$BIN/cronium up --data-dir "$DATA" --nats-port "$PORT" >"$DATA/up.out" 2>"$DATA/up.log" &
UP=$!
trap 'kill -TERM $UP 2>/dev/null || true; wait $UP 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do grep -q "cronium ready" "$DATA/up.out" && break; sleep 0.5; done
if ! grep -q "cronium ready" "$DATA/up.out"; then
  echo "the stack did not start; its log ($DATA/up.log) ends with:" >&2
  tail -20 "$DATA/up.log" >&2
  exit 1
fi
cat "$DATA/up.out"
export CRONIUM_NATS_URL="nats://127.0.0.1:$PORT"
export CRONIUM_DATA_DIR="$DATA"  # clients use the admin credential `cronium up` wrote there
step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "$2"; }

step "1. the main job: a python script in a fresh, isolated container, output live" \
     "cronium run scripts/demo-job.py --id <id>"
ID=ex_demo_$(date +%s)
$BIN/cronium run scripts/demo-job.py --id "$ID"

step "2. its lifecycle, as events on the bus" "cronium show $ID"
$BIN/cronium show "$ID"

step "3. bash and node" "cronium run --runtime bash -c 'echo \$((6*7))'; cronium run --runtime node -c ..."
$BIN/cronium run --runtime bash -c 'echo "bash says $((6*7))"'
$BIN/cronium run --runtime node -c 'console.log(`node ${process.version} says ${6*7}`)'

step "4. limits: a request for 999 GB of memory is rejected (exit 2)" \
     "cronium run --runtime python --memory 999g -c 'print(1)'"
set +e
$BIN/cronium run --runtime python --memory 999g -c 'print(1)'; echo "exit code $?"

step "5. isolation: no network, read-only root, memory limit enforced (exit 137)" \
     "cronium run --runtime python --memory 64m -c '<allocate forever>'"
$BIN/cronium run --runtime bash -c 'touch /x 2>&1; (exec 3<>/dev/tcp/127.0.0.1/22) 2>&1 | head -1'
$BIN/cronium run --runtime python --memory 64m -c 'x=[]
while True: x.append(bytearray(8<<20))'; echo "exit code $?"
set -e

step "6. the stack" "cronium status"
$BIN/cronium status

step "7. its metrics, as Prometheus scrapes them (a few of them)" \
     "cronium metrics | grep -E '^cronium_(up|lane_jobs|attempts|docker_up|run_time_seconds_count)'"
$BIN/cronium metrics \
  | grep -E '^cronium_(up|attempts|docker_up|run_time_seconds_count)|^cronium_lane_jobs.*"normal",runner="container"' \
  || true
step "8. the web console: live logs in a browser, signed in as a user of their own" \
     "cronium user add demo; cronium user token demo --url --execution <id>"
$BIN/cronium user add demo --data-dir "$DATA" >/dev/null 2>&1 || true
CREDS="$DATA/auth/users/demo.creds"
WEB_ID=$($BIN/cronium run --detach --creds "$CREDS" --runtime bash \
  -c 'for i in $(seq 1 120); do echo "line $i"; sleep 1; done')
LINK=$($BIN/cronium user token demo --data-dir "$DATA" --url --ttl 1h --execution "$WEB_ID")
printf 'open this link in a browser on this machine (it signs in as demo for an hour):\n  %s\n' "$LINK"
if [ -t 0 ] && [ -z "${CI:-}" ]; then
  read -r -p "press Enter to stop the stack... " _ || true
fi
printf '\nDone. Stopping the stack (data kept in %s).\n' "$DATA"
