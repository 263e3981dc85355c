#!/usr/bin/env bash
# Brings up a private, throwaway PostgreSQL cluster for development and tests.
#
# Usage:
#   deploy/dev/postgres.sh [start]   start the cluster (creating it the first time) and print, on stdout,
#                                     DATABASE_URL=... and FLEETLET_PG_BINDIR=... for the caller to eval
#   deploy/dev/postgres.sh stop      stop it (fast shutdown: open sessions are cut)
#   deploy/dev/postgres.sh status    say whether it runs; exit status 0 if it does, 3 if not
#
# Typical use from a shell or CI:
#   set -a; eval "$(deploy/dev/postgres.sh)"; set +a
#
# Settings (environment):
#   FLEETLET_PG_DIR   where everything of this cluster lives (default /var/tmp/fleetlet-pg)
#   FLEETLET_PG_PORT  TCP port on 127.0.0.1 (default 55432)
#
# The cluster is deliberately separate from the Debian one that apt may have created on port 5432:
# that one may be missing, stopped or already running depending on the machine, and tests must not
# depend on which. We therefore drive initdb and pg_ctl directly and never use pg_ctlcluster, which
# would hand off to systemctl on machines where /run/systemd/system exists.
#
# Layout of FLEETLET_PG_DIR (initdb insists on an empty data directory, so the extra files sit beside it):
#   data/          the PostgreSQL data directory
#   run/           the Unix socket directory (private to the postgres user)
#   password       the superuser password, generated once and kept (mode 0600)
#   database_url   the URL clients use (mode 0644: this is a dev cluster)
#   postgres.log   the server log
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"

# We only change directory to / for the postgres user (see as_postgres), so the path must be absolute.
PG_DIR=$(readlink -m "${FLEETLET_PG_DIR:-/var/tmp/fleetlet-pg}")
PG_PORT=${FLEETLET_PG_PORT:-55432}
DATA_DIR="$PG_DIR/data"
SOCKET_DIR="$PG_DIR/run"
PASSWORD_FILE="$PG_DIR/password"
URL_FILE="$PG_DIR/database_url"
LOG_FILE="$PG_DIR/postgres.log"
SUPERUSER=fleetlet
DATABASE=fleetlet

# Runs a command as the postgres OS user. PostgreSQL refuses to run as root. We start from / because
# the caller's working directory (often root's home directory) is usually not readable for postgres,
# which makes the server tools print warnings.
as_postgres() {
    (cd / && runuser -u postgres -- "$@")
}

# Prints the bin directory of the newest PostgreSQL installed from Debian packages, or nothing.
newest_bindir() {
    local initdb
    initdb=$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | grep -v '[*]' | sort -V | tail -n 1 || true)
    if [ -n "$initdb" ]; then
        dirname "$initdb"
    fi
}

# Sets BINDIR without installing anything. An existing cluster can only be run by the major version
# that created it, so when the data directory exists we use that version's binaries if they are still
# installed; otherwise the newest installed version. BINDIR is empty when no PostgreSQL is installed.
find_bindir() {
    BINDIR=$(newest_bindir)
    if [ -f "$DATA_DIR/PG_VERSION" ]; then
        local own
        own="/usr/lib/postgresql/$(cat "$DATA_DIR/PG_VERSION")/bin"
        if [ -x "$own/pg_ctl" ]; then
            BINDIR=$own
        fi
    fi
}

# Like find_bindir, but installs PostgreSQL when no version is present and recreates a cluster whose
# version is no longer installed.
choose_bindir() {
    find_bindir
    if [ -z "$BINDIR" ]; then
        # apt creates a Debian cluster on 5432 but does not start it; we ignore that cluster entirely.
        apt_install postgresql
        find_bindir
        [ -n "$BINDIR" ] || die "postgresql is installed but no initdb was found under /usr/lib/postgresql"
    fi
    if [ -f "$DATA_DIR/PG_VERSION" ] && [ "$BINDIR" != "/usr/lib/postgresql/$(cat "$DATA_DIR/PG_VERSION")/bin" ]; then
        # The data is throwaway by design, so recreating it is better than failing.
        log "cluster in $DATA_DIR was made by PostgreSQL $(cat "$DATA_DIR/PG_VERSION"), which is no longer installed; recreating it"
        rm -rf "$DATA_DIR"
    fi
}

# pg_ctl status exits 0 when the server runs, 3 when it does not and 4 when there is no data directory.
is_running() {
    [ -f "$DATA_DIR/PG_VERSION" ] && as_postgres "$BINDIR/pg_ctl" -D "$DATA_DIR" status >/dev/null 2>&1
}

ensure_postgres_user() {
    if ! id -u postgres >/dev/null 2>&1; then
        # Normally created by the postgresql-common package; binaries from elsewhere may lack it.
        log "creating the postgres system user"
        useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
}

# Creates the directory layout and the password, keeping both across runs.
ensure_layout() {
    # The whole tree belongs to postgres: initdb, run as postgres, must be able to create data/ in it.
    install -d -o postgres -g postgres -m 0755 "$PG_DIR"
    install -d -o postgres -g postgres -m 0700 "$SOCKET_DIR"
    if [ ! -s "$PASSWORD_FILE" ]; then
        # Hex keeps the password safe inside a URL and inside shell KEY=VALUE lines without quoting.
        log "generating a new superuser password in $PASSWORD_FILE"
        (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$PASSWORD_FILE")
    fi
    # initdb reads the password file as the postgres user.
    chown postgres:postgres "$PASSWORD_FILE"
    chmod 0600 "$PASSWORD_FILE"
}

ensure_cluster() {
    if [ -f "$DATA_DIR/PG_VERSION" ]; then
        return
    fi
    # A data directory without PG_VERSION is what an interrupted initdb leaves behind; start over.
    rm -rf "$DATA_DIR"
    local start
    start=$(now_ms)
    log "creating a new cluster in $DATA_DIR with $BINDIR/initdb"
    # Local (socket) connections are trusted because the socket directory is private to postgres and
    # root; TCP connections must present the password. --no-sync skips fsync: the data is disposable.
    if ! as_postgres "$BINDIR/initdb" -D "$DATA_DIR" \
        --username="$SUPERUSER" --pwfile="$PASSWORD_FILE" \
        --auth-host=scram-sha-256 --auth-local=trust \
        --encoding=UTF8 --no-locale --no-sync >"$PG_DIR/initdb.log" 2>&1; then
        show_log_tail "$PG_DIR/initdb.log"
        rm -rf "$DATA_DIR"
        die "initdb failed"
    fi
    log "cluster created in $(elapsed_since "$start")"
}

# True when the server answers on its socket.
accepts_connections() {
    "$BINDIR/pg_isready" -q -h "$SOCKET_DIR" -p "$PG_PORT"
}

# Starts the server unless it already runs.
ensure_started() {
    # pg_ctl status only checks that the PID in postmaster.pid exists. That is also true for a server
    # that is still starting up, and for one that was killed but not yet reaped: a PID 1 that is not
    # systemd (in a container or a minimal VM) may reap orphans only after a second or so. So we
    # wait until the server either answers or is really gone.
    local deadline=$(( $(now_ms) + 30000 ))
    while is_running; do
        if accepts_connections; then
            log "already running (data in $DATA_DIR)"
            return
        fi
        [ "$(now_ms)" -lt "$deadline" ] || die "a server is registered in $DATA_DIR/postmaster.pid but does not answer"
        sleep 0.2
    done
    local start
    start=$(now_ms)
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    # The settings trade durability for speed (fsync and friends off), which is right for throwaway
    # test data. Many tests open connection pools in parallel, hence the large max_connections.
    local options="-p $PG_PORT -k $SOCKET_DIR -c listen_addresses=127.0.0.1"
    options+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    options+=" -c max_connections=300"
    if ! as_postgres "$BINDIR/pg_ctl" -D "$DATA_DIR" -l "$LOG_FILE" -o "$options" -w -t 60 start >/dev/null 2>&1; then
        show_log_tail "$LOG_FILE"
        die "PostgreSQL did not start (is port $PG_PORT taken by another program?)"
    fi
    log "started in $(elapsed_since "$start")"
}

# Runs psql over the private Unix socket, where the superuser is trusted.
psql_local() {
    as_postgres "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKET_DIR" -p "$PG_PORT" -U "$SUPERUSER" "$@"
}

ensure_database() {
    local exists
    exists=$(psql_local -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")
    if [ "$exists" != 1 ]; then
        log "creating database $DATABASE"
        psql_local -d postgres -c "CREATE DATABASE $DATABASE"
    fi
    # Setting the password again each run costs nothing and repairs a cluster whose password file was
    # deleted and regenerated. It is sent on stdin so it never shows up in a process listing.
    printf "ALTER ROLE %s PASSWORD '%s';\n" "$SUPERUSER" "$(cat "$PASSWORD_FILE")" | psql_local -d postgres
}

write_url() {
    DATABASE_URL="postgres://$SUPERUSER:$(cat "$PASSWORD_FILE")@127.0.0.1:$PG_PORT/$DATABASE"
    write_if_changed "$URL_FILE" 0644 "$DATABASE_URL" || true
}

# Checks from the outside, the way the manager and the tests will connect: over TCP with the password.
check_tcp_login() {
    if ! PGPASSWORD=$(cat "$PASSWORD_FILE") "$BINDIR/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" \
        -U "$SUPERUSER" -d "$DATABASE" -tAc 'SELECT 1' >/dev/null; then
        die "cannot log in over TCP on 127.0.0.1:$PG_PORT with the stored password"
    fi
}

cmd_start() {
    require_root
    ensure_postgres_user
    choose_bindir
    ensure_layout
    ensure_cluster
    ensure_started
    ensure_database
    write_url
    check_tcp_login
    log "ready: postgres://$SUPERUSER:***@127.0.0.1:$PG_PORT/$DATABASE (full URL in $URL_FILE)"
    printf 'DATABASE_URL=%s\n' "$DATABASE_URL"
    printf 'FLEETLET_PG_BINDIR=%s\n' "$BINDIR"
}

cmd_stop() {
    require_root
    find_bindir
    if [ -z "$BINDIR" ] || ! is_running; then
        log "not running"
        return
    fi
    # Fast shutdown: roll back open transactions and disconnect clients instead of waiting for them.
    as_postgres "$BINDIR/pg_ctl" -D "$DATA_DIR" -m fast -w -t 60 stop >/dev/null
    log "stopped"
}

cmd_status() {
    find_bindir
    if [ -n "$BINDIR" ] && is_running; then
        log "running on 127.0.0.1:$PG_PORT (data in $DATA_DIR)"
        exit 0
    fi
    log "not running"
    exit 3
}

# Runs that start or stop the cluster take turns, so that two callers starting at the same moment
# (say, two test jobs) cannot both run initdb or pg_ctl start.
case "${1:-start}" in
    start | stop) with_lock postgres "$@" ;;
esac

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) die "unknown command '$1' (expected start, stop or status)" ;;
esac
