#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium for the dashboard tests (tests/tests/dashboard.rs),
# idempotently, and prints FLEETLET_CHROMIUM=<path> on stdout for the caller to eval.
#
# Usage:
#   set -a; eval "$(deploy/dev/chromium.sh)"; set +a
#
# Only Debian's `chromium` package is used: no browser is downloaded from elsewhere, and the tests
# run it with --headless --no-sandbox (the machine runs everything as root, where Chromium's
# sandbox refuses to start).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

require_root
with_lock chromium "$@"
if ! command -v chromium >/dev/null 2>&1; then
    apt_install --no-install-recommends chromium fonts-dejavu-core
fi
path=$(command -v chromium) || die "chromium is still missing after the install"
log "using $("$path" --version 2>/dev/null || echo chromium)"
echo "FLEETLET_CHROMIUM=$path"
