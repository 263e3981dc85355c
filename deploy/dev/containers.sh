#!/usr/bin/env bash
# Installs and configures the container runtimes the agent drives (podman and docker) and gives each
# of them the local test image localhost/busybox:test, then proves that each really runs a container.
#
# Usage:
#   deploy/dev/containers.sh            podman and docker
#   deploy/dev/containers.sh podman     podman only
#   deploy/dev/containers.sh docker     docker only
#
# Nothing is printed on stdout; progress goes to stderr. Running it again reuses whatever is already
# installed, configured, running and imported.
#
# Facts about the machines this script is made for (a Debian 12 VM or container, run as root, whose
# PID 1 is not systemd and which reaches package registries but no container registry), measured
# there, that shape this script:
#   - No container registry is reachable, so the image is built from Debian's busybox-static and
#     imported; nothing is ever pulled.
#   - The machine uses a hybrid cgroup v1 layout and the process lacks CAP_SYS_RESOURCE. crun refuses
#     that cgroup layout, and podman's default rlimits (nofile 1048576) exceed the hard limits, which
#     cannot be raised here. Podman therefore gets runc, cgroupfs and rlimits within the hard limits.
#   - PID 1 is not systemd, so there is no docker.service: dockerd is started by hand, detached.
#   - `docker run --privileged` fails here for lack of capabilities; nothing in this script uses it.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"

IMAGE=localhost/busybox:test
PODMAN_CONF=/etc/containers/containers.conf
DOCKERD_LOG=/var/log/fleetlet-dockerd.log
# dockerd writes its own PID here; we rely on it to tell our daemon apart from anything else.
DOCKERD_PIDFILE=/var/run/docker.pid
DOCKERD_CONFIG=/etc/fleetlet/dockerd.json

# The root filesystem of the test image is built at most once per run, and only if some runtime
# still lacks the image. It lives in a temporary directory that is removed on exit.
ROOTFS=""
cleanup() {
    if [ -n "$ROOTFS" ]; then
        rm -rf "$ROOTFS"
    fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------------
# The test image
# ---------------------------------------------------------------------------------------------------

# The image only needs a statically linked busybox: no shared libraries to copy along.
ensure_busybox() {
    if ! dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
        apt_install busybox-static
    fi
    [ -x /bin/busybox ] || die "busybox-static is installed but /bin/busybox is missing"
}

# Builds a minimal root filesystem: busybox, one symbolic link per applet at the place busybox itself
# lists for it (bin/sh, usr/bin/awk, sbin/ifconfig, ...), and user and group files so that `id`,
# `--user nobody` and similar work inside the container.
build_rootfs() {
    if [ -n "$ROOTFS" ]; then
        return
    fi
    ensure_busybox
    ROOTFS=$(mktemp -d /var/tmp/fleetlet-rootfs.XXXXXX)
    log "building the image root filesystem in $ROOTFS"
    mkdir -p "$ROOTFS"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,var/tmp,proc,sys,dev,run}
    chmod 1777 "$ROOTFS/tmp" "$ROOTFS/var/tmp"
    chmod 0700 "$ROOTFS/root"
    cp /bin/busybox "$ROOTFS/bin/busybox"
    # `busybox --install -s` would have to run inside the new root; instead we ask busybox for the
    # list of applets with their paths and create the links ourselves. Entries without a directory
    # (such as linuxrc) are boot-time leftovers and are skipped.
    local applet
    while read -r applet; do
        case "$applet" in
            */*)
                mkdir -p "$ROOTFS/${applet%/*}"
                if [ ! -e "$ROOTFS/$applet" ]; then
                    ln -s /bin/busybox "$ROOTFS/$applet"
                fi
                ;;
        esac
    done < <(/bin/busybox --list-full)
    [ -L "$ROOTFS/bin/sh" ] || die "busybox did not list bin/sh among its applets"
    cat >"$ROOTFS/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
    cat >"$ROOTFS/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
GROUP
}

# Writes the root filesystem as a tar stream on stdout. Files are recorded as owned by root whatever
# the build machine's IDs, so both runtimes import identical content.
rootfs_tar() {
    tar -C "$ROOTFS" --numeric-owner --owner=0 --group=0 -c .
}

# import_image RUNTIME: imports the image into podman or docker unless it is already there.
import_image() {
    local runtime=$1
    if image_exists "$runtime"; then
        log "$runtime already has $IMAGE"
        return
    fi
    build_rootfs
    local start
    start=$(now_ms)
    # podman reports copy progress on stderr unless told to be quiet; docker prints only the image ID.
    local quiet=()
    if [ "$runtime" = podman ]; then
        quiet=(--quiet)
    fi
    rootfs_tar | "$runtime" import "${quiet[@]}" --change 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
    log "imported $IMAGE into $runtime in $(elapsed_since "$start")"
}

image_exists() {
    case "$1" in
        podman) podman image exists "$IMAGE" ;;
        docker) docker image inspect "$IMAGE" >/dev/null 2>&1 ;;
    esac
}

# verify RUNTIME: runs a real container and checks what it printed.
verify() {
    local runtime=$1 start output errors
    start=$(now_ms)
    # Only stdout is compared; warnings a runtime prints on stderr are shown only if the check fails.
    errors=$(mktemp)
    if ! output=$("$runtime" run --rm "$IMAGE" echo ok 2>"$errors") || [ "$output" != ok ]; then
        { printf '%s\n' "$output"; cat "$errors"; } | sed 's/^/    /' >&2
        rm -f "$errors"
        die "$runtime could not run a container from $IMAGE"
    fi
    rm -f "$errors"
    log "$runtime runs containers: '$runtime run --rm $IMAGE echo ok' printed ok in $(elapsed_since "$start")"
}

# ---------------------------------------------------------------------------------------------------
# Podman
# ---------------------------------------------------------------------------------------------------

# Prints the hard limit of a resource (as in `ulimit -H -n`), capped at CAP. "unlimited" counts as CAP.
capped_hard_limit() {
    local option=$1 cap=$2 value
    value=$(ulimit -H "$option")
    if [ "$value" = unlimited ] || [ "$value" -gt "$cap" ]; then
        value=$cap
    fi
    printf '%s\n' "$value"
}

configure_podman() {
    # Containers may not get more than the hard limits of the process that starts them, because
    # raising a hard limit needs CAP_SYS_RESOURCE, which this machine does not grant. Podman itself
    # refuses nproc above 32768. The nofile cap is podman's own default.
    local nofile nproc
    nofile=$(capped_hard_limit -n 1048576)
    nproc=$(capped_hard_limit -u 32768)
    local content
    content=$(cat <<CONF
# Written by deploy/dev/containers.sh; it rewrites this file whenever the content below changes.
#
# crun rejects this machine's hybrid cgroup v1 layout, so podman uses runc. Without systemd as PID 1
# there is no systemd cgroup manager and no journald, hence cgroupfs and a plain file for events.
# The default rlimits stay within the hard limits that podman's caller has here (nofile $nofile,
# nproc $nproc), because this machine cannot raise hard limits.

[containers]
default_ulimits = [
  "nofile=$nofile:$nofile",
  "nproc=$nproc:$nproc",
]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
)
    if write_if_changed "$PODMAN_CONF" 0644 "$content"; then
        log "wrote $PODMAN_CONF (runc, cgroupfs, nofile=$nofile, nproc=$nproc)"
    else
        log "$PODMAN_CONF is up to date"
    fi
}

setup_podman() {
    if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
        apt_install podman runc
    fi
    configure_podman
    import_image podman
    verify podman
}

# ---------------------------------------------------------------------------------------------------
# Docker
# ---------------------------------------------------------------------------------------------------

docker_answers() {
    # `docker info` alone also prints client details; asking for the server version fails cleanly
    # when no daemon answers on the socket.
    [ -n "$(docker info --format '{{.ServerVersion}}' 2>/dev/null)" ]
}

# Decides the daemon settings by probing this machine rather than assuming, and writes them to a
# configuration file of our own (so that a daemon.json someone else may have written never clashes
# with command-line flags). Returns 0 when the file changed.
configure_dockerd() {
    local iptables=true bridge=""
    # Docker publishes ports and isolates networks with iptables. When the kernel offers no netfilter
    # at all, dockerd dies at start; without iptables it still runs containers, and port publishing on
    # 127.0.0.1 keeps working through docker-proxy.
    if ! command -v iptables >/dev/null || ! iptables -S >/dev/null 2>&1; then
        log "iptables does not work here; dockerd will run with iptables disabled"
        iptables=false
    fi
    # Likewise the default docker0 bridge needs the kernel's bridge support. We try to create and
    # delete a throwaway bridge; if that is refused, containers get no network besides loopback.
    if ! ip link show docker0 >/dev/null 2>&1; then
        if ip link add fleetlet-probe0 type bridge >/dev/null 2>&1; then
            ip link del fleetlet-probe0
        else
            log "this kernel cannot create bridges; dockerd will run with --bridge=none"
            bridge=none
        fi
    fi
    # cgroupfs because there is no systemd to delegate cgroups to. The storage driver is left to
    # dockerd's own detection: it picks overlay2 where the kernel has overlayfs and vfs otherwise.
    local bridge_line=""
    if [ -n "$bridge" ]; then
        bridge_line=$'\n  "bridge": "'"$bridge"'",'
    fi
    local content
    content=$(cat <<JSON
{
  "exec-opts": ["native.cgroupdriver=cgroupfs"],
  "iptables": $iptables,
  "ip-masq": $iptables,$bridge_line
  "log-driver": "json-file",
  "log-opts": {"max-size": "10m", "max-file": "2"}
}
JSON
)
    if write_if_changed "$DOCKERD_CONFIG" 0644 "$content"; then
        log "wrote $DOCKERD_CONFIG"
        return 0
    fi
    return 1
}

# PID of the dockerd that this script started, if it still runs.
our_dockerd_pid() {
    local pid
    pid=$(cat "$DOCKERD_PIDFILE" 2>/dev/null || true)
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = dockerd ] &&
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--config-file $DOCKERD_CONFIG"; then
        printf '%s\n' "$pid"
    fi
}

stop_our_dockerd() {
    local pid
    pid=$(our_dockerd_pid)
    [ -n "$pid" ] || return 0
    log "stopping dockerd (PID $pid) to apply the new configuration"
    kill -TERM "$pid"
    if ! wait_until 30 "dockerd to exit" process_gone "$pid"; then
        die "dockerd (PID $pid) did not exit; see $DOCKERD_LOG"
    fi
}

# Removes a PID file whose process is dead. A daemon killed without warning leaves its PID file
# behind, and for a second or so its PID still exists as a zombie (see process_gone in lib.sh).
# dockerd treats such a PID as alive: it refuses to start over its own stale file, and it tries to
# reuse a "running" containerd from the stale file of the containerd it supervises, which times out.
remove_stale_pidfile() {
    local file=$1 pid
    pid=$(cat "$file" 2>/dev/null || true)
    if [ -n "$pid" ] && process_gone "$pid"; then
        log "removing stale $file (PID $pid is dead)"
        rm -f "$file"
    fi
}

start_dockerd() {
    remove_stale_pidfile "$DOCKERD_PIDFILE"
    remove_stale_pidfile /var/run/docker/containerd/containerd.pid
    local start
    start=$(now_ms)
    log "starting dockerd (log in $DOCKERD_LOG)"
    # setsid and nohup detach the daemon from our session, so that it outlives this script and the
    # terminal or CI step that ran it. All three standard streams are redirected: a daemon holding
    # our stdout would make a caller's "$(containers.sh)" wait forever.
    setsid nohup dockerd --config-file "$DOCKERD_CONFIG" </dev/null >>"$DOCKERD_LOG" 2>&1 &
    local pid=$!
    # Poll until the daemon answers, but give up at once if it exits instead of waiting out the
    # deadline: its log then says why.
    local deadline=$(( $(now_ms) + 60000 ))
    until docker_answers; do
        if process_gone "$pid"; then
            show_log_tail "$DOCKERD_LOG"
            die "dockerd exited during startup"
        fi
        if [ "$(now_ms)" -ge "$deadline" ]; then
            show_log_tail "$DOCKERD_LOG"
            die "dockerd (PID $pid) did not answer within 60s"
        fi
        sleep 0.2
    done
    log "dockerd (PID $pid) answers after $(elapsed_since "$start")"
}

# Makes sure some dockerd answers on the default socket, starting one if none runs.
ensure_dockerd() {
    if docker_answers; then
        log "dockerd already answers ($(docker info --format '{{.ServerVersion}}, storage {{.Driver}}, cgroup driver {{.CgroupDriver}}'))"
        return
    fi
    # A dockerd that is still starting (another run of this script, say) must not get a twin.
    local pid
    pid=$(cat "$DOCKERD_PIDFILE" 2>/dev/null || true)
    if [ -n "$pid" ] && ! process_gone "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = dockerd ]; then
        log "dockerd (PID $pid) runs but does not answer yet; waiting for it"
        if ! wait_until 60 "dockerd to answer" docker_answers; then
            show_log_tail "$DOCKERD_LOG"
            die "dockerd (PID $pid) runs but does not answer on /var/run/docker.sock"
        fi
        return
    fi
    start_dockerd
}

setup_docker() {
    if ! command -v dockerd >/dev/null; then
        # A docker CLI may already exist in /usr/local/bin, but the engine comes from Debian. Without
        # the recommended extras (cgroupfs-mount, git, ...), none of which we need.
        apt_install --no-install-recommends docker.io
    fi
    command -v docker >/dev/null || die "no docker command found after installing docker.io"
    mkdir -p "$(dirname "$DOCKERD_CONFIG")"
    local changed=false
    if configure_dockerd; then
        changed=true
    fi
    # A daemon we started earlier with other settings is restarted once; a daemon someone else
    # runs is reused as it is, since we must not stop what we did not start.
    if $changed && [ -n "$(our_dockerd_pid)" ]; then
        stop_our_dockerd
    fi
    ensure_dockerd
    import_image docker
    verify docker
}

# ---------------------------------------------------------------------------------------------------

main() {
    require_root
    # One run at a time, so that two callers cannot both start a dockerd or import the image twice.
    with_lock containers "$@"
    local which=${1:-all}
    case "$which" in
        all) setup_podman; setup_docker ;;
        podman) setup_podman ;;
        docker) setup_docker ;;
        *) die "unknown argument '$which' (expected podman, docker or nothing for both)" ;;
    esac
    log "done"
}

main "$@"
