#!/usr/bin/env bash
# Brings up a real systemd user manager for root, on machines whose PID 1 is not systemd, so that the
# agent's SystemdUnit reconciler and its tests can drive genuine systemd units.
#
# Usage:
#   deploy/dev/systemd-user.sh [start]   start the manager unless it runs, prove that it can run a unit,
#                                         and print XDG_RUNTIME_DIR=... and DBUS_SESSION_BUS_ADDRESS=...
#                                         on stdout for the caller to eval
#   deploy/dev/systemd-user.sh stop      stop the manager this script started (by its recorded PID)
#
# Typical use:
#   set -a; eval "$(deploy/dev/systemd-user.sh)"; set +a
#   systemctl --user status
#
# Facts about the machines this script is made for (a Debian 12 VM or container, run as root, whose
# PID 1 is not systemd), measured there, that shape this script:
#   - systemd refuses to run unless /run/systemd/system exists when it starts ("not booted with
#     systemd"). We create that directory just for the start and remove it again right after, because
#     other tools take its presence as "PID 1 is systemd" and then fail (pg_ctlcluster, for one).
#   - The manager must start in a cgroup of its own. Started from a root cgroup it considers the whole
#     machine its own and moves every process into its scope. It gets a fresh child cgroup in every
#     hierarchy except cpuset (a cpuset child has no CPUs or memory nodes until configured, and a
#     process cannot join it).
#   - There is no journald. Units therefore inherit the manager's stdout and stderr, which is the log
#     file below (set through a user.conf drop-in: on systemd 252 the --default-standard-output flag
#     did not take effect in our tests, while the drop-in does). The manager's own messages go to the
#     kernel log (`dmesg`): a user manager told to log to the "console" opens /dev/console, not its
#     stderr, and on such a VM that is the serial port.
#   - `systemctl --user is-system-running` says "offline" here because PID 1 is not systemd, so
#     readiness is read from the manager's SystemState property instead.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"

RUNTIME_DIR=/run/user/0
BUS_ADDRESS="unix:path=$RUNTIME_DIR/bus"
PID_FILE="$RUNTIME_DIR/fleetlet-systemd-user.pid"
# The cgroup directories we created for the manager, one per line, so that stop can remove them.
CGROUPS_FILE="$RUNTIME_DIR/fleetlet-systemd-user.cgroups"
LOG_FILE=/var/log/fleetlet-systemd-user.log
CGROUP_NAME=fleetlet-systemd-user
MANAGER=/lib/systemd/systemd
ROOT_HOME=$(getent passwd 0 | cut -d: -f6)
PROBE_UNIT=fleetlet-probe.service
MANAGER_DROPIN="$ROOT_HOME/.config/systemd/user.conf.d/fleetlet.conf"
PROBE_FILE="$ROOT_HOME/.config/systemd/user/$PROBE_UNIT"

# systemctl --user finds the manager through XDG_RUNTIME_DIR (its private socket lives below it).
export XDG_RUNTIME_DIR=$RUNTIME_DIR
export DBUS_SESSION_BUS_ADDRESS=$BUS_ADDRESS

# Prints the manager's SystemState (initializing, starting, running, degraded, stopping, ...), or
# nothing when no manager answers.
system_state() {
    # systemctl first tries the manager's private socket. When that fails it falls back to the D-Bus
    # session bus, and a bus daemon left over from a crashed manager accepts the call and then waits
    # 25 seconds for a manager that never answers. The timeout keeps such a check short.
    timeout 3 systemctl --user show -p SystemState --value 2>/dev/null || true
}

is_ready() {
    case "$(system_state)" in
        running | degraded) return 0 ;;
        *) return 1 ;;
    esac
}

# PID of the manager recorded by an earlier start, if that process still is a systemd user manager.
recorded_pid() {
    local pid
    pid=$(cat "$PID_FILE" 2>/dev/null || true)
    if [ -n "$pid" ] && ! process_gone "$pid" &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "^$MANAGER --user"; then
        printf '%s\n' "$pid"
    fi
}

ensure_packages() {
    local wanted=()
    [ -x "$MANAGER" ] || wanted+=(systemd)
    # dbus-user-session provides dbus.socket for user managers, i.e. the bus at $RUNTIME_DIR/bus.
    [ -e /usr/lib/systemd/user/dbus.socket ] || wanted+=(dbus-user-session)
    if [ "${#wanted[@]}" -gt 0 ]; then
        apt_install "${wanted[@]}"
    fi
}

# Settings the user manager reads at start (and again on daemon-reload). Returns 0 when the file
# changed.
configure_manager() {
    local content
    content=$(cat <<'CONF'
# Written by deploy/dev/systemd-user.sh. There is no journald on these machines, so units write to
# the manager's own stdout and stderr, i.e. /var/log/fleetlet-systemd-user.log.
[Manager]
DefaultStandardOutput=inherit
DefaultStandardError=inherit
CONF
)
    write_if_changed "$MANAGER_DROPIN" 0644 "$content"
}

# Prints the mount point of the cgroup hierarchy that carries the given controllers, as listed in
# /proc/self/cgroup ("cpu", "name=systemd", ...); an empty list means the unified (v2) hierarchy.
hierarchy_mountpoint() {
    local controllers=$1 target options controller found
    if [ -z "$controllers" ]; then
        findmnt -n -l -t cgroup2 -o TARGET | head -n 1
        return
    fi
    while read -r target options; do
        found=yes
        for controller in ${controllers//,/ }; do
            if [[ ",$options," != *",$controller,"* ]]; then
                found=no
                break
            fi
        done
        if [ "$found" = yes ]; then
            printf '%s\n' "$target"
            return
        fi
    done < <(findmnt -n -l -t cgroup -o TARGET,FS-OPTIONS)
}

# Creates the manager's cgroups: a child of our own cgroup in every hierarchy except cpuset, and
# writes their paths to CGROUPS_FILE. Being a child of the caller's cgroup (rather than of the root)
# keeps the manager inside whatever resource limits the caller itself runs under.
create_cgroups() {
    local id controllers path mountpoint dir
    : >"$CGROUPS_FILE"
    while IFS=: read -r id controllers path; do
        if [[ ",$controllers," == *",cpuset,"* ]]; then
            continue
        fi
        mountpoint=$(hierarchy_mountpoint "$controllers")
        if [ -z "$mountpoint" ]; then
            log "cgroup hierarchy $id ($controllers) is not mounted; skipping it"
            continue
        fi
        dir="$mountpoint${path%/}/$CGROUP_NAME"
        mkdir -p "$dir"
        printf '%s\n' "$dir" >>"$CGROUPS_FILE"
    done </proc/self/cgroup
    [ -s "$CGROUPS_FILE" ] || die "found no cgroup hierarchy to start the manager in"
}

# Removes the cgroups listed in CGROUPS_FILE, deepest first (the manager creates init.scope, app.slice
# and so on below its own). rmdir only removes empty cgroups, so nothing that still runs is touched.
remove_cgroups() {
    local dir sub busy=0
    [ -f "$CGROUPS_FILE" ] || return 0
    while read -r dir; do
        [ -d "$dir" ] || continue
        while read -r sub; do
            rmdir "$sub" 2>/dev/null || busy=$((busy + 1))
        done < <(find "$dir" -depth -type d)
    done <"$CGROUPS_FILE"
    if [ "$busy" -gt 0 ]; then
        log "left $busy cgroups in place because processes still run in them"
    else
        rm -f "$CGROUPS_FILE"
    fi
}

# Prints the PIDs of all processes in the manager's cgroups. After the manager itself is gone, these
# are services it started that outlived it (a manager killed with SIGKILL cannot stop its units).
processes_in_our_cgroups() {
    local dir
    [ -f "$CGROUPS_FILE" ] || return 0
    while read -r dir; do
        # Only directories this script creates are considered, whatever the file says.
        if [ "${dir##*/}" = "$CGROUP_NAME" ] && [ -d "$dir" ]; then
            find "$dir" -name cgroup.procs -exec cat {} +
        fi
    done <"$CGROUPS_FILE" | sort -u
}

# Ends the services left behind by a dead manager. They were started by our manager and live only in
# our cgroups, so they are ours to stop; left alive they hold the bus socket, and a bus daemon without
# its manager makes every client wait for a timeout.
end_leftover_processes() {
    local pids pid
    mapfile -t pids < <(processes_in_our_cgroups)
    [ "${#pids[@]}" -gt 0 ] || return 0
    log "ending ${#pids[@]} processes left behind by a dead user manager: ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for pid in "${pids[@]}"; do
        if ! wait_until 5 "PID $pid to exit" process_gone "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

# /run/systemd/system is created only for the moment of the start; this undoes it. It is called on
# every exit path (see the trap in start_manager), so a failed start does not leave it behind.
CREATED_MARKER=no
remove_booted_marker() {
    if [ "$CREATED_MARKER" = yes ]; then
        rmdir /run/systemd/system 2>/dev/null || true
        CREATED_MARKER=no
    fi
}

start_manager() {
    local start
    start=$(now_ms)
    install -d -m 0700 "$RUNTIME_DIR"
    create_cgroups
    if [ ! -d /run/systemd/system ]; then
        mkdir -p /run/systemd/system
        CREATED_MARKER=yes
        trap remove_booted_marker EXIT
    fi
    local cgroup_dirs
    mapfile -t cgroup_dirs <"$CGROUPS_FILE"
    log "starting $MANAGER --user (log in $LOG_FILE)"
    # The launcher shell moves itself into the new cgroups, records its PID and then becomes the
    # manager through exec, so the recorded PID is the manager's whether or not setsid had to fork.
    # setsid and nohup detach the manager from our session so that it outlives this script.
    # The environment is rebuilt from scratch: the manager passes it on to every unit, and it should
    # not carry whatever the caller happened to have set (CI variables, tokens).
    # shellcheck disable=SC2016 # the single-quoted script is expanded by the launcher shell
    setsid bash -c '
        pid_file=$1
        shift
        while [ "$1" != -- ]; do
            echo $$ >"$1/cgroup.procs"
            shift
        done
        shift
        echo $$ >"$pid_file"
        exec "$@"
    ' fleetlet-systemd-launcher "$PID_FILE" "${cgroup_dirs[@]}" -- \
        nohup env -i \
        HOME="$ROOT_HOME" USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        XDG_RUNTIME_DIR="$RUNTIME_DIR" DBUS_SESSION_BUS_ADDRESS="$BUS_ADDRESS" \
        "$MANAGER" --user --log-target=kmsg --log-level=info \
        </dev/null >>"$LOG_FILE" 2>&1 &

    # Wait until the manager reports running or degraded; give up at once if it exits.
    local deadline=$(( $(now_ms) + 30000 )) pid=""
    until is_ready; do
        pid=${pid:-$(cat "$PID_FILE" 2>/dev/null || true)}
        if [ -n "$pid" ] && process_gone "$pid"; then
            show_log_tail "$LOG_FILE"
            remove_cgroups
            die "the user manager exited during startup"
        fi
        if [ "$(now_ms)" -ge "$deadline" ]; then
            show_log_tail "$LOG_FILE"
            die "the user manager did not become ready within 30s (state: '$(system_state)')"
        fi
        sleep 0.1
    done
    remove_booted_marker
    log "user manager (PID $(cat "$PID_FILE")) is $(system_state) after $(elapsed_since "$start")"
}

# Leftovers of a manager that died: the services it started, its cgroups and its PID file.
clean_up_after_dead_manager() {
    end_leftover_processes
    remove_cgroups
    rm -f "$PID_FILE"
}

ensure_manager() {
    local config_changed=no pid
    if configure_manager; then
        config_changed=yes
    fi
    # A PID file whose process is gone means our manager died (killed, or the machine rebooted with
    # /run kept). Checked first, because asking a half-dead setup over the bus is slow.
    pid=$(recorded_pid)
    if [ -z "$pid" ] && [ -f "$PID_FILE" ]; then
        log "the user manager recorded in $PID_FILE is gone; cleaning up after it"
        clean_up_after_dead_manager
        start_manager
        return
    fi
    if is_ready; then
        log "user manager already $(system_state)"
        if [ "$config_changed" = yes ]; then
            log "reloading it to apply the changed $MANAGER_DROPIN"
            systemctl --user daemon-reload
        fi
        return
    fi
    if [ -n "$pid" ]; then
        # Still starting (or stopping): wait for it instead of starting a second manager.
        log "user manager (PID $pid) runs but is '$(system_state)'; waiting for it"
        if ! wait_until 30 "the user manager to become ready" is_ready; then
            show_log_tail "$LOG_FILE"
            die "the user manager (PID $pid) does not become ready"
        fi
        return
    fi
    if [ "$(cat /proc/1/comm)" = systemd ]; then
        # On a machine booted with systemd the system manager runs root's user manager itself.
        log "PID 1 is systemd; asking it to start user@0.service"
        systemctl start user@0.service
        wait_until 30 "the user manager to become ready" is_ready || die "user@0.service did not become ready"
        return
    fi
    clean_up_after_dead_manager
    start_manager
}

# Proves that the manager really runs units: a throwaway service is written, loaded, started,
# checked, stopped and removed again.
verify_with_probe() {
    local start state
    start=$(now_ms)
    mkdir -p "$(dirname "$PROBE_FILE")"
    cat >"$PROBE_FILE" <<'UNIT'
[Unit]
Description=fleetlet probe written by deploy/dev/systemd-user.sh (safe to delete)

[Service]
ExecStart=/bin/sleep 300
UNIT
    systemctl --user daemon-reload
    # A failed start is reported below, after the probe has been cleaned up.
    systemctl --user start "$PROBE_UNIT" || true
    state=$(systemctl --user is-active "$PROBE_UNIT" || true)
    systemctl --user stop "$PROBE_UNIT" || true
    rm -f "$PROBE_FILE"
    systemctl --user daemon-reload
    if [ "$state" != active ]; then
        show_log_tail "$LOG_FILE"
        die "the probe unit did not become active (is-active said '$state')"
    fi
    log "probe unit $PROBE_UNIT started and stopped in $(elapsed_since "$start")"
    local output
    output=$(systemctl --user show -p DefaultStandardOutput --value)
    if [ "$output" != inherit ]; then
        log "warning: units write to '$output' instead of the log file; restart with '$0 stop; $0'"
    fi
}

cmd_start() {
    require_root
    ensure_packages
    ensure_manager
    verify_with_probe
    if [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm)" != systemd ]; then
        log "warning: /run/systemd/system exists although PID 1 is not systemd; pg_ctlcluster and others will misbehave"
    fi
    printf 'XDG_RUNTIME_DIR=%s\n' "$RUNTIME_DIR"
    printf 'DBUS_SESSION_BUS_ADDRESS=%s\n' "$BUS_ADDRESS"
}

cmd_stop() {
    require_root
    local pid
    pid=$(recorded_pid)
    if [ -n "$pid" ]; then
        # On SIGTERM the user manager stops all its units and then exits.
        log "stopping the user manager (PID $pid)"
        kill -TERM "$pid"
        if ! wait_until 60 "the user manager to exit" process_gone "$pid"; then
            die "the user manager (PID $pid) did not exit; see $LOG_FILE"
        fi
    else
        log "no user manager started by this script is running"
    fi
    rm -f "$PID_FILE"
    # Anything a crashed manager left behind in its cgroups goes too; then the cgroups themselves.
    end_leftover_processes
    remove_cgroups
    log "stopped"
}

# One run at a time: two managers started side by side would fight over the same sockets.
with_lock systemd-user "$@"

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    *) die "unknown command '$1' (expected start or stop)" ;;
esac
