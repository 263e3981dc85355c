#!/usr/bin/env bash
# Builds fleetlet for the Raspberry Pi targets from this x86_64 machine, with Debian's own cross
# toolchain, and runs the agent's unit tests for them under qemu-user.
#
# Usage:
#   deploy/dev/cross.sh [build]   install the toolchain (once), build the release agent for aarch64
#                                  and armv7 and the release manager for aarch64, then print, on
#                                  stdout, KEY=VALUE lines naming the binaries and the tools
#   deploy/dev/cross.sh install   only install the toolchain
#   deploy/dev/cross.sh unit-tests
#                                  run the agent's unit tests (`--lib`) for both targets under
#                                  qemu-user, as cargo's target runner
#   deploy/dev/cross.sh env       print the KEY=VALUE lines only (the binaries must be built)
#
# Targets: aarch64-unknown-linux-gnu (Pi 3/4/5 and Zero 2 W on a 64-bit OS) and
# armv7-unknown-linux-gnueabihf (32-bit Raspberry Pi OS / Debian armhf).
#
# Why Debian's toolchain and not rustup's targets: rustup cannot download anything on the machines
# this project builds on (only Debian's packages and crates.io are reachable), while Debian ships
# rustc with the standard library for both ARM targets (`libstd-rust-web-dev:arm64` / `:armhf`).
# The x86_64 build keeps the project's own (rustup) toolchain; Debian's is used for the foreign
# targets only, and is kept apart from it:
#   - PATH=/usr/bin:/bin, so rustup's proxies in ~/.cargo/bin are never picked up;
#   - its own CARGO_HOME: both cargos would otherwise share ~/.cargo/registry, and each re-extracting
#     the crate sources there makes the other rebuild everything;
#   - its own target directory, so the two compilers never fight over one set of artifacts.
# Both live under FLEETLET_CROSS_DIR (default /var/tmp/fleetlet-cross), which survives reboots, so a
# second run only rebuilds what changed.
#
# Running the results: qemu-user-static runs the ARM binaries with the ARM glibc from the
# `libc6:arm64` / `libc6:armhf` packages (multiarch, under /lib/<triple>/). qemu must NOT be given
# `-L /usr/<triple>`: that mixes the cross package's dynamic loader with the multiarch libc, which
# hangs in pthread_create on aarch64 and crashes on armhf. Without -L, the binaries' loader path
# (/lib/ld-linux-aarch64.so.1, /lib/ld-linux-armhf.so.3) resolves to the multiarch loader, matching
# its libc.
#
# One profile for the packages and the foreign tests: both build with `--release`, so the
# dependencies compile once per target (cargo keys artifacts by the profile's settings, and the
# test build's `bench` profile inherits `release` unchanged).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"

repo=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
CROSS_DIR=$(readlink -m "${FLEETLET_CROSS_DIR:-/var/tmp/fleetlet-cross}")
TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

# The Debian packages the cross build and its tests need. Architecture-qualified names need the
# foreign architectures to be added first (see install_toolchain).
PACKAGES=(
    rustc-web cargo-web
    libstd-rust-web-dev:arm64 libstd-rust-web-dev:armhf
    gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf
    # The target's C headers and start files, for ring's C and assembly. Only a Recommends of the
    # cross gcc, which --no-install-recommends leaves out.
    libc6-dev-arm64-cross libc6-dev-armhf-cross
    libc6:arm64 libc6:armhf
    qemu-user-static
)

missing_packages() {
    local p status
    for p in "${PACKAGES[@]}"; do
        status=$(dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null || true)
        if [ "$status" != installed ]; then
            printf '%s\n' "$p"
        fi
    done
}

install_toolchain() {
    require_root
    local arch added=0
    for arch in arm64 armhf; do
        if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
            dpkg --add-architecture "$arch"
            added=1
        fi
    done
    local missing
    missing=$(missing_packages)
    if [ -z "$missing" ]; then
        log "cross toolchain already installed"
        return
    fi
    if [ "$added" = 1 ]; then
        # The package lists know nothing of a just-added architecture until refreshed.
        DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=300 update \
            >>"$FLEETLET_APT_LOG" 2>&1 || die "apt-get update failed; see $FLEETLET_APT_LOG"
    fi
    # shellcheck disable=SC2086 # one package name per line
    apt_install --no-install-recommends $missing
}

# The upper-case, underscore form cargo uses in environment variable names.
env_triple() {
    printf '%s' "$1" | tr 'a-z-' 'A-Z_'
}

# The GNU triple of the cross gcc, binutils and multiarch directories.
gnu_triple() {
    case "$1" in
    aarch64-unknown-linux-gnu) printf 'aarch64-linux-gnu' ;;
    armv7-unknown-linux-gnueabihf) printf 'arm-linux-gnueabihf' ;;
    *) die "unknown target $1" ;;
    esac
}

qemu_for() {
    case "$1" in
    aarch64-unknown-linux-gnu) printf 'qemu-aarch64-static' ;;
    armv7-unknown-linux-gnueabihf) printf 'qemu-arm-static' ;;
    *) die "unknown target $1" ;;
    esac
}

# Sets up the environment of Debian's cargo for the foreign targets.
# Lets the kernel run ARM programs through qemu (binfmt_misc, as the qemu-user-static package
# registers them on a booted Debian): the agent's unit tests start child processes of their own
# test binary, which are ARM programs too.
register_binfmt() {
    local misc=/proc/sys/fs/binfmt_misc
    if [ ! -e "$misc/register" ]; then
        mount -t binfmt_misc binfmt_misc "$misc" || die "cannot mount binfmt_misc"
    fi
    local name
    for name in qemu-aarch64 qemu-arm; do
        if [ ! -e "$misc/$name" ]; then
            /lib/systemd/systemd-binfmt "/usr/lib/binfmt.d/$name.conf" ||
                die "cannot register $name with binfmt_misc"
        fi
    done
}

# Unit tests that cannot pass under qemu-user, each with the reason; they run natively.
# - open_beneath_...: asserts the errno openat2(2) gives for a link in the path (ELOOP); qemu-user
#   7.2 does not pass openat2 through, so the agent takes its component walk, which refuses the
#   same links with ENOTDIR (the_walk_without_openat2_refuses_the_same_links covers the walk and
#   runs here). Real Pi kernels (5.6+) have openat2.
QEMU_SKIPS=(confined::tests::open_beneath_opens_plain_paths_and_refuses_links_and_dot_dot)

cross_env() {
    export PATH=/usr/bin:/bin
    export CARGO_HOME="$CROSS_DIR/cargo-home"
    export CARGO_TARGET_DIR="$CROSS_DIR/target"
    export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
    # A rustup toolchain file or override must not reach Debian's rustc.
    unset RUSTUP_TOOLCHAIN RUSTC_WRAPPER CARGO_BUILD_TARGET
    local t up gnu low
    for t in "${TARGETS[@]}"; do
        up=$(env_triple "$t")
        gnu=$(gnu_triple "$t")
        low=${t//-/_}
        export "CARGO_TARGET_${up}_LINKER=${gnu}-gcc"
        export "CARGO_TARGET_${up}_RUNNER=$(qemu_for "$t")"
        # ring's and jemalloc's C parts (cc crate, jemalloc's configure).
        export "CC_${low}=${gnu}-gcc" "AR_${low}=${gnu}-ar"
    done
    mkdir -p "$CARGO_HOME" "$CARGO_TARGET_DIR"
}

cargo_cross() {
    (cd "$repo" && cross_env && /usr/bin/cargo "$@")
}

build_all() {
    local start t
    # The build logs go here, so it must exist before the first redirect (a fresh machine has none).
    mkdir -p "$CROSS_DIR"
    for t in "${TARGETS[@]}"; do
        start=$(now_ms)
        log "building the release agent for $t (log: $CROSS_DIR/build-$t.log)"
        cargo_cross build --release --target "$t" -p fleetlet-agent \
            >"$CROSS_DIR/build-$t.log" 2>&1 ||
            { show_log_tail "$CROSS_DIR/build-$t.log"; die "agent build for $t failed"; }
        log "agent for $t built in $(elapsed_since "$start")"
    done
    start=$(now_ms)
    t=aarch64-unknown-linux-gnu
    log "building the release manager for $t (log: $CROSS_DIR/build-manager-$t.log)"
    cargo_cross build --release --target "$t" -p fleetlet-manager \
        >"$CROSS_DIR/build-manager-$t.log" 2>&1 ||
        { show_log_tail "$CROSS_DIR/build-manager-$t.log"; die "manager build for $t failed"; }
    log "manager for $t built in $(elapsed_since "$start")"
}

unit_tests() {
    local start t
    mkdir -p "$CROSS_DIR"
    for t in "${TARGETS[@]}"; do
        start=$(now_ms)
        log "agent unit tests for $t under $(qemu_for "$t")"
        # --release: the dependencies are the ones the packaged binary was built with.
        local skips=() skip
        for skip in "${QEMU_SKIPS[@]}"; do skips+=(--skip "$skip"); done
        cargo_cross test --release --target "$t" -p fleetlet-agent --lib -- "${skips[@]}" ||
            die "agent unit tests for $t failed"
        log "agent unit tests for $t passed in $(elapsed_since "$start")"
    done
}

print_env() {
    local out="$CROSS_DIR/target"
    local f
    for f in "$out/aarch64-unknown-linux-gnu/release/fleetlet-agent" \
        "$out/armv7-unknown-linux-gnueabihf/release/fleetlet-agent" \
        "$out/aarch64-unknown-linux-gnu/release/fleetlet-manager"; do
        [ -x "$f" ] || die "$f is missing; run deploy/dev/cross.sh build"
    done
    printf 'FLEETLET_CROSS_DIR=%s\n' "$CROSS_DIR"
    printf 'FLEETLET_AGENT_AARCH64=%s\n' "$out/aarch64-unknown-linux-gnu/release/fleetlet-agent"
    printf 'FLEETLET_AGENT_ARMV7=%s\n' "$out/armv7-unknown-linux-gnueabihf/release/fleetlet-agent"
    printf 'FLEETLET_MANAGER_AARCH64=%s\n' "$out/aarch64-unknown-linux-gnu/release/fleetlet-manager"
    printf 'FLEETLET_QEMU_AARCH64=%s\n' "$(command -v qemu-aarch64-static)"
    printf 'FLEETLET_QEMU_ARM=%s\n' "$(command -v qemu-arm-static)"
}

case "${1:-build}" in
install)
    install_toolchain
    ;;
build)
    install_toolchain
    build_all
    print_env
    ;;
unit-tests)
    install_toolchain
    register_binfmt
    unit_tests
    ;;
env)
    print_env
    ;;
*)
    die "usage: $0 [build|install|unit-tests|env]"
    ;;
esac
