#!/usr/bin/env bash
# The main job, end to end, from a fresh machine: brings up PostgreSQL, builds fleetlet, starts the
# manager and one agent (memory of a device: a temporary state dir and file root), applies the
# example manifest manifests/examples/demo.json through the API and waits until the manager reports
# the device converged, then prints its status.
#
#   deploy/dev/demo.sh          run the demo, then stop the manager and the agent
#   deploy/dev/demo.sh --keep   leave both running (their PIDs and logs are printed)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
FLEETLET_LOG_TAG=demo.sh
# shellcheck source=deploy/dev/lib.sh
. deploy/dev/lib.sh

keep=false
[ "${1:-}" = "--keep" ] && keep=true

demo_dir=/var/tmp/fleetlet-demo
agent_id=demo-pi
manifest=manifests/examples/demo.json

set -a
eval "$(deploy/dev/postgres.sh)"
set +a

log "building fleetlet (debug)"
cargo build --quiet --workspace --bins
bin="$repo/target/debug"

# Each run starts from a clean slate: a fresh demo database, state dir and file root. The paths in
# the example manifest live under $demo_dir/root, the agent's only file root.
rm -rf "$demo_dir"
mkdir -p "$demo_dir/root" "$demo_dir/state"
chmod 0700 "$demo_dir"
admin_db_url="$DATABASE_URL"
demo_db_url="${DATABASE_URL%/*}/fleetlet_demo"
psql -q -v ON_ERROR_STOP=1 "$admin_db_url" \
    -c "DROP DATABASE IF EXISTS fleetlet_demo WITH (FORCE)" -c "CREATE DATABASE fleetlet_demo" >&2

admin_token="demo-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s' "$admin_token" >"$demo_dir/admin-token"
chmod 0600 "$demo_dir/admin-token"

pids=()
cleanup() {
    if [ "$keep" = false ]; then
        for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
        for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    fi
}
trap cleanup EXIT

log "starting fleetlet-manager (log: $demo_dir/manager.log)"
DATABASE_URL="$demo_db_url" FLEETLET_LISTEN=127.0.0.1:0 FLEETLET_PORT_FILE="$demo_dir/manager.addr" \
    FLEETLET_ADMIN_TOKEN_FILE="$demo_dir/admin-token" FLEETLET_REPORT_INTERVAL=10s \
    "$bin/fleetlet-manager" >"$demo_dir/manager.log" 2>&1 &
pids+=($!)
deadline=$((SECONDS + 30))
until [ -s "$demo_dir/manager.addr" ]; do
    kill -0 "${pids[0]}" 2>/dev/null || die "the manager exited; see $demo_dir/manager.log"
    [ $SECONDS -lt $deadline ] || die "the manager did not start within 30 s; see $demo_dir/manager.log"
    sleep 0.1
done
export FLEETLET_URL="http://$(cat "$demo_dir/manager.addr")"
export FLEETLET_TOKEN="$admin_token"
log "manager listening at $FLEETLET_URL"

log "registering agent $agent_id"
# The token is printed once, on stdout; it goes straight into a file only root can read.
(umask 077 && "$bin/fleetlet" agent add "$agent_id" --label site=demo >"$demo_dir/agent-token")

log "starting fleetlet-agent (log: $demo_dir/agent.log)"
# FLEETLET_TOKEN holds the admin token for the CLI; the agent must see only its own token file.
env -u FLEETLET_TOKEN FLEETLET_AGENT_ID="$agent_id" FLEETLET_MANAGER_URL="$FLEETLET_URL" FLEETLET_TOKEN_FILE="$demo_dir/agent-token" \
    FLEETLET_STATE_DIR="$demo_dir/state" FLEETLET_FILE_ROOTS="$demo_dir/root" \
    FLEETLET_CONTAINER_RUNTIME=none FLEETLET_SYSTEMD_SCOPE=none FLEETLET_RESYNC_INTERVAL=5s \
    FLEETLET_WATCH_WAIT=10s "$bin/fleetlet-agent" >"$demo_dir/agent.log" 2>&1 &
pids+=($!)

log "applying $manifest and waiting for the device to converge"
"$bin/fleetlet" apply -f "$manifest" --wait --timeout 60s

log "status as the manager reports it:"
"$bin/fleetlet" get status "$agent_id"
log "files on the device:"
find "$demo_dir/root" -type f -exec ls -l {} + >&2

if [ "$keep" = true ]; then
    log "left running: manager pid ${pids[0]} at $FLEETLET_URL, agent pid ${pids[1]}"
    log "admin token in $demo_dir/admin-token; try: FLEETLET_URL=$FLEETLET_URL FLEETLET_TOKEN=\$(cat $demo_dir/admin-token) $bin/fleetlet get agents"
fi
log "demo converged"
