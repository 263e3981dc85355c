#!/usr/bin/env bash
# The main job, end to end, from a fresh machine: brings up PostgreSQL, builds fleetlet, starts the
# manager and one agent (memory of a device: a temporary state dir and file root), applies the
# example manifest manifests/examples/demo.json through the API and waits until the manager reports
# the device converged, then prints its status.
#
#   deploy/dev/demo.sh          run the demo, then stop the manager and the agent
#   deploy/dev/demo.sh --keep   leave both running; prints the dashboard's address (with a reader
#                               token) and how to use the CLI against them
#   deploy/dev/demo.sh --stop   stop what a previous --keep left running, and exit
#
# Every run first stops the manager and agent of a previous run (kept or interrupted), found by the
# PIDs it recorded in /run/fleetlet-demo, because each run starts from a fresh demo database that
# an old manager must not keep serving.
#
# FLEETLET_DEMO_BIN_DIR=DIR uses the binaries in DIR instead of building them (the tests use it,
# so that the demo does not rebuild target/debug under other tests that run from it).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
FLEETLET_LOG_TAG=demo.sh
# shellcheck source=deploy/dev/lib.sh
. deploy/dev/lib.sh

mode=run
case "${1:-}" in
    "") ;;
    --keep) mode=keep ;;
    --stop) mode=stop ;;
    *) die "unknown argument '$1'; usage: deploy/dev/demo.sh [--keep | --stop]" ;;
esac
[ $# -le 1 ] || die "one argument at most; usage: deploy/dev/demo.sh [--keep | --stop]"
require_root

# Two demos at once would stop each other's processes and drop each other's database.
with_lock demo "$@"

demo_dir=/var/tmp/fleetlet-demo
# PID records live on /run, which is emptied at boot: a PID recorded before a reboot means nothing.
run_dir=/run/fleetlet-demo
agent_id=demo-pi
manifest=manifests/examples/demo.json
started_at=$(now_ms)

# Prints "PID STARTTIME" for a live process. The start time (clock ticks after boot, field 22 of
# /proc/PID/stat) tells the process we started apart from a later one that was given the same PID.
process_identity() {
    local pid=$1 stat fields
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    # The fields after the command name, which is in parentheses and may contain spaces.
    read -r -a fields <<<"${stat##*) }"
    [ "${#fields[@]}" -ge 20 ] || return 1
    printf '%s %s\n' "$pid" "${fields[19]}"
}

# record NAME PID: writes the identity of a process this run started to $run_dir/NAME.pid.
record() {
    local name=$1 pid=$2 identity
    identity=$(process_identity "$pid") || die "$name (pid $pid) exited at once; see $demo_dir/$name.log"
    mkdir -p "$run_dir"
    printf '%s\n' "$identity" >"$run_dir/$name.pid"
}

# stop_recorded NAME WHOSE: stops the process recorded as NAME if it is still the one recorded
# (SIGTERM, then SIGKILL after 10 s), and removes the record. WHOSE only words the progress line.
stop_recorded() {
    local name=$1 whose=$2 file="$run_dir/$1.pid" recorded pid
    [ -f "$file" ] || return 0
    recorded=$(cat "$file")
    pid=${recorded%% *}
    if [ -n "$pid" ] && [ "$(process_identity "$pid" 2>/dev/null || true)" = "$recorded" ]; then
        log "stopping $whose $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_until 10 "the $name (pid $pid) to exit" process_gone "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
            wait_until 5 "the $name (pid $pid) to die" process_gone "$pid" ||
                die "could not stop the $name (pid $pid)"
        fi
    fi
    rm -f "$file"
}

# stop_demo WHOSE: the agent first, so it does not spend its last seconds failing to reach a
# stopped manager.
stop_demo() {
    stop_recorded agent "$1"
    stop_recorded manager "$1"
}

if [ "$mode" = stop ]; then
    if [ ! -f "$run_dir/agent.pid" ] && [ ! -f "$run_dir/manager.pid" ]; then
        log "no demo is recorded as running"
    fi
    stop_demo "the kept demo's"
    log "demo stopped"
    exit 0
fi

set -a
eval "$(deploy/dev/postgres.sh)"
set +a

if [ -n "${FLEETLET_DEMO_BIN_DIR:-}" ]; then
    bin=$FLEETLET_DEMO_BIN_DIR
    log "using the binaries in $bin (FLEETLET_DEMO_BIN_DIR)"
else
    # cargo's own progress goes to stderr; the first build takes several minutes.
    step=$(now_ms)
    log "building fleetlet (debug; several minutes the first time, cargo's progress follows)"
    cargo build --workspace --bins
    log "built in $(elapsed_since "$step")"
    bin="$repo/target/debug"
fi
for binary in fleetlet-manager fleetlet-agent fleetlet; do
    [ -x "$bin/$binary" ] || die "$bin/$binary is missing"
done

stop_demo "a previous run's"

# Each run starts from a clean slate: a fresh demo database, state dir and file root. The paths in
# the example manifest live under $demo_dir/root, the agent's only file root.
rm -rf "$demo_dir"
mkdir -p "$demo_dir/root" "$demo_dir/state"
chmod 0700 "$demo_dir"
admin_db_url="$DATABASE_URL"
demo_db_url="${DATABASE_URL%/*}/fleetlet_demo"
psql -q -v ON_ERROR_STOP=1 "$admin_db_url" \
    -c "DROP DATABASE IF EXISTS fleetlet_demo WITH (FORCE)" -c "CREATE DATABASE fleetlet_demo" >&2

random_hex() {
    head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'
}
admin_token="demo-admin-$(random_hex)"
reader_token="demo-reader-$(random_hex)"
(umask 077 && printf '%s' "$admin_token" >"$demo_dir/admin-token" &&
    printf '%s' "$reader_token" >"$demo_dir/reader-token")

converged=false
cleanup() {
    if [ "$mode" = keep ] && [ "$converged" = true ]; then
        return
    fi
    stop_demo "this run's"
}
trap cleanup EXIT

# setsid: a kept demo outlives the terminal it was started from. The log files are the daemons'
# only output.
step=$(now_ms)
log "starting fleetlet-manager (log: $demo_dir/manager.log)"
DATABASE_URL="$demo_db_url" FLEETLET_LISTEN=127.0.0.1:0 FLEETLET_PORT_FILE="$demo_dir/manager.addr" \
    FLEETLET_ADMIN_TOKEN_FILE="$demo_dir/admin-token" FLEETLET_READER_TOKEN_FILE="$demo_dir/reader-token" \
    FLEETLET_REPORT_INTERVAL=10s \
    setsid "$bin/fleetlet-manager" </dev/null >"$demo_dir/manager.log" 2>&1 &
manager_pid=$!
record manager "$manager_pid"
deadline=$(($(now_ms) + 30000))
until [ -s "$demo_dir/manager.addr" ]; do
    if process_gone "$manager_pid" || [ "$(now_ms)" -ge "$deadline" ]; then
        show_log_tail "$demo_dir/manager.log"
        die "the manager did not start (within 30 s)"
    fi
    sleep 0.1
done
FLEETLET_URL="http://$(cat "$demo_dir/manager.addr")"
export FLEETLET_URL
export FLEETLET_TOKEN="$admin_token"
log "manager listening at $FLEETLET_URL (pid $manager_pid, started in $(elapsed_since "$step"))"

log "registering agent $agent_id"
# The token is printed once, on stdout; it goes straight into a file only root can read.
(umask 077 && "$bin/fleetlet" agent add "$agent_id" --label site=demo >"$demo_dir/agent-token")

log "starting fleetlet-agent (log: $demo_dir/agent.log)"
# FLEETLET_TOKEN holds the admin token for the CLI; the agent must see only its own token file.
env -u FLEETLET_TOKEN FLEETLET_AGENT_ID="$agent_id" FLEETLET_MANAGER_URL="$FLEETLET_URL" FLEETLET_TOKEN_FILE="$demo_dir/agent-token" \
    FLEETLET_STATE_DIR="$demo_dir/state" FLEETLET_FILE_ROOTS="$demo_dir/root" \
    FLEETLET_CONTAINER_RUNTIME=none FLEETLET_SYSTEMD_SCOPE=none FLEETLET_RESYNC_INTERVAL=5s \
    FLEETLET_WATCH_WAIT=10s setsid "$bin/fleetlet-agent" </dev/null >"$demo_dir/agent.log" 2>&1 &
agent_pid=$!
record agent "$agent_pid"

step=$(now_ms)
log "applying $manifest and waiting for the device to converge"
if ! "$bin/fleetlet" apply -f "$manifest" --wait --timeout 60s; then
    show_log_tail "$demo_dir/agent.log"
    die "the device did not converge"
fi
log "converged in $(elapsed_since "$step")"

log "status as the manager reports it:"
"$bin/fleetlet" get status "$agent_id"
log "files on the device:"
find "$demo_dir/root" -type f -exec ls -l {} + >&2
converged=true

log "demo converged in $(elapsed_since "$started_at")"
if [ "$mode" = keep ]; then
    log "left running: manager pid $manager_pid at $FLEETLET_URL, agent pid $agent_pid (logs in $demo_dir)"
    log "dashboard (reader token in the address's fragment, which the browser never sends): $FLEETLET_URL/#token=$reader_token"
    log "CLI: FLEETLET_URL=$FLEETLET_URL FLEETLET_TOKEN=\$(cat $demo_dir/admin-token) $bin/fleetlet get agents"
    log "stop them with: deploy/dev/demo.sh --stop"
else
    log "stopping the manager and the agent; deploy/dev/demo.sh --keep leaves them running, with a dashboard link"
fi
