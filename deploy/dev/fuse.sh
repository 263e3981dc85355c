#!/usr/bin/env bash
# Makes FUSE usable for the power-cut tests (tests/tests/agent_powercut.rs), idempotently, and
# prints KEY=VALUE lines for the tests (eval them):
#
#   fusermount3   from Debian's fuse3 package: the mount helper the `fuser` crate's pure-Rust
#                 mount falls back to (as root it mounts with mount(2) itself; no libfuse is linked)
#   /dev/fuse     the kernel's FUSE device, loaded as a module where it is not built in
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/dev/lib.sh
. "$here/lib.sh"
require_root

command -v fusermount3 >/dev/null || apt_install --no-install-recommends fuse3
if [ ! -c /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
fi
[ -c /dev/fuse ] || die "/dev/fuse is missing and the fuse module could not be loaded"
grep -qw fuse /proc/filesystems || die "the kernel does not list fuse in /proc/filesystems"
log "FUSE ready: /dev/fuse and $(command -v fusermount3)"
echo "FLEETLET_FUSERMOUNT=$(command -v fusermount3)"
