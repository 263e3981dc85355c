#!/usr/bin/env bash
# Installs Schemathesis (the OpenAPI fuzzer of issue 8's acceptance 2) from PyPI into a private
# virtual environment, idempotently, and prints how to call it.
#
#   deploy/dev/schemathesis.sh            # install if needed, print the path of the binary
#
# The version is pinned: the manager's schemathesis test was written against it, and a new
# release may add checks. tests/tests/manager_schemathesis.rs looks for the binary at
# $FLEETLET_SCHEMATHESIS, else at the path below, else on PATH.
set -euo pipefail

SCHEMATHESIS_VERSION="4.32.5"
VENV="${FLEETLET_SCHEMATHESIS_VENV:-/var/tmp/fleetlet-schemathesis}"
BIN="$VENV/bin/st"

installed_version() {
    "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true
}

if [[ "$(installed_version)" != "$SCHEMATHESIS_VERSION" ]]; then
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        # Debian splits venv/ensurepip out of python3.
        apt-get update -qq >&2
        apt-get install -y -qq python3-venv >&2
    fi
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2
fi
test -x "$BIN" || { echo "schemathesis.sh: $BIN is missing after the install" >&2; exit 1; }
echo "schemathesis $SCHEMATHESIS_VERSION is installed; run it as: $BIN run <url>/api/v1/openapi.json" >&2
echo "$BIN"
