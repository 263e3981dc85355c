# shellcheck shell=bash
# Helpers shared by the dev scripts in this directory. This file is sourced, never executed.
#
# Conventions every script follows:
#   - progress and diagnostics go to stderr, so stdout stays free for KEY=VALUE lines that callers eval;
#   - every step first checks whether its result is already there, so running a script again is cheap
#     and changes nothing that is already up;
#   - we only ever stop processes whose PID we recorded ourselves.

# The name shown in front of every progress line, e.g. "[postgres.sh]".
FLEETLET_LOG_TAG="${FLEETLET_LOG_TAG:-$(basename "$0")}"

log() {
    printf '[%s] %s\n' "$FLEETLET_LOG_TAG" "$*" >&2
}

die() {
    printf '[%s] ERROR: %s\n' "$FLEETLET_LOG_TAG" "$*" >&2
    exit 1
}

# The scripts install packages and write below /etc and /run, which only root may do.
require_root() {
    if [ "$(id -u)" -ne 0 ]; then
        die "must run as root (it installs packages and starts system daemons)"
    fi
}

# Milliseconds since the epoch; used to report how long each step took.
now_ms() {
    date +%s%3N
}

# Prints the seconds elapsed since a timestamp taken with now_ms, with one decimal.
elapsed_since() {
    local start_ms=$1 end_ms
    end_ms=$(now_ms)
    awk -v d="$((end_ms - start_ms))" 'BEGIN { printf "%.1fs", d / 1000 }'
}

# apt's own output is long, so it goes to a log file and we only print one line per install.
FLEETLET_APT_LOG=/var/log/fleetlet-apt.log

# Installs Debian packages. A fresh machine may have empty or outdated package lists, in which case
# the first attempt fails to locate the package; we then refresh the lists once and try again.
# Extra apt options (such as --no-install-recommends) may precede the package names.
apt_install() {
    local start
    start=$(now_ms)
    log "installing $* with apt-get (output in $FLEETLET_APT_LOG)"
    # Waiting for the dpkg lock, instead of failing at once, lets two scripts run side by side.
    local apt=(apt-get -y -q -o DPkg::Lock::Timeout=300)
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "$@" >>"$FLEETLET_APT_LOG" 2>&1; then
        log "install failed; refreshing the package lists once and retrying"
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >>"$FLEETLET_APT_LOG" 2>&1 ||
            die "apt-get update failed; see $FLEETLET_APT_LOG"
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "$@" >>"$FLEETLET_APT_LOG" 2>&1 ||
            die "apt-get install $* failed; see $FLEETLET_APT_LOG"
    fi
    log "installed $* in $(elapsed_since "$start")"
}

# wait_until SECONDS DESCRIPTION COMMAND...
# Runs COMMAND every 0.2 s until it succeeds or the deadline passes. Returns 1 on timeout, so the
# caller decides what to print (usually the tail of a log file) before giving up.
wait_until() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$(( $(now_ms) + seconds * 1000 ))
    while ! "$@" >/dev/null 2>&1; do
        if [ "$(now_ms)" -ge "$deadline" ]; then
            log "timed out after ${seconds}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

# Shows the end of a log file on stderr, to explain a failure.
show_log_tail() {
    local file=$1
    if [ -r "$file" ]; then
        log "last lines of $file:"
        tail -n 25 "$file" | sed 's/^/    /' >&2
    fi
}

# Writes CONTENT to FILE (with MODE) only when the file does not already hold exactly that content.
# Returns 0 when the file was (re)written and 1 when it was already up to date, so callers can react
# to a real change only. The new content is written next to the target and renamed over it, so a
# reader never sees half a file.
write_if_changed() {
    local file=$1 mode=$2 content=$3
    if [ -f "$file" ] && [ "$(cat "$file")" = "$content" ]; then
        return 1
    fi
    mkdir -p "$(dirname "$file")"
    local tmp
    tmp=$(mktemp "$file.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$file"
    return 0
}

# True when no live process has this PID. A killed daemon whose parent has gone is re-parented to
# PID 1, and a PID 1 that is not systemd may reap such orphans only after a second or so; until
# then it is a zombie that still shows in /proc but holds no resources, so it counts as gone.
process_gone() {
    local pid=$1 state
    # The state letter follows the command name, which is in parentheses and may contain spaces.
    state=$(sed -n 's/^.*) \(.\).*$/\1/p' "/proc/$pid/stat" 2>/dev/null || true)
    [ -z "$state" ] || [ "$state" = Z ]
}

# with_lock NAME ARGS...: makes sure only one run of the calling script (per NAME) works at a time.
# The first call re-executes the script under `flock` with the same arguments; the re-executed
# script sees FLEETLET_LOCK_HELD and carries on. flock's -o option keeps the lock out of the script's
# reach, so daemons the script starts (postgres, dockerd, systemd) do not inherit it, which would
# otherwise keep every later run waiting for as long as the daemon lives.
with_lock() {
    local name=$1
    shift
    if [ "${FLEETLET_LOCK_HELD:-}" != "$name" ]; then
        exec env FLEETLET_LOCK_HELD="$name" flock -o "/run/lock/fleetlet-$name.lock" \
            bash "$(readlink -f "$0")" "$@"
    fi
    # The daemons we start need not know about it.
    unset FLEETLET_LOCK_HELD
}
