#!/usr/bin/env bash
# The one command that runs every check of the project, from a fresh machine: it brings up the real
# components the system tests need (PostgreSQL, podman and docker with a locally built image, a
# systemd user manager, headless Chromium, Schemathesis, the third-party validators), then runs formatting, lints and all tests.
# `.ci/run` calls this and nothing else.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
FLEETLET_LOG_TAG=test.sh
# shellcheck source=deploy/dev/lib.sh
. deploy/dev/lib.sh

# A CI run builds once from a fresh clone: incremental state would only cost disk (gigabytes over
# the ~50 test binaries) and time. A developer's repeated runs keep it.
if [ -n "${CI:-}" ]; then
    export CARGO_INCREMENTAL=0
fi
log "disk before the run: $(df -h --output=avail "$repo" | tail -1 | tr -d ' ') free"

# Real components. Each script is idempotent and prints KEY=VALUE lines for the tests to use.
set -a
eval "$(deploy/dev/postgres.sh)"
eval "$(deploy/dev/systemd-user.sh)"
eval "$(deploy/dev/chromium.sh)"
eval "$(deploy/dev/validators.sh)"
eval "$(deploy/dev/fuse.sh)"
set +a
deploy/dev/containers.sh
deploy/dev/schemathesis.sh >/dev/null
deploy/dev/netfaults.sh
log "postgres, systemd (user manager), chromium, podman, docker, schemathesis and the validators ready"

log "cargo fmt --check"
cargo fmt --all --check

log "clippy (all features, then the agent without fs-store)"
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo clippy -p fleetlet-agent --no-default-features --all-targets -- -D warnings

# The end-to-end tests run the real binaries from target/debug, so build them before any test starts.
log "building the binaries"
cargo build --workspace --bins

# Raspberry Pi targets (issue 21): the ARM agents and manager with Debian's cross toolchain, all
# five Debian packages (lintian errors fail), and the agent's unit tests for aarch64 and armv7
# under qemu-user. The cross_agent and packages tests read the variables printed here.
log "cross builds, Debian packages, the agent's unit tests for aarch64 and armv7 under qemu-user"
set -a
eval "$(deploy/dev/packages.sh)"
eval "$(deploy/dev/cross.sh env)"
set +a
deploy/dev/cross.sh unit-tests

log "tests: whole workspace, all features"
cargo test --workspace --all-features --no-fail-fast

log "tests: the agent without default features (memory store only)"
cargo test -p fleetlet-agent --no-default-features --no-fail-fast

log "disk after the run: $(df -h --output=avail "$repo" | tail -1 | tr -d ' ') free; target/ holds $(du -sh target | cut -f1)"
