#!/usr/bin/env bash
# Installs what the network-fault tests (tests/tests/net_faults.rs) need, idempotently: `ip`
# (iproute2) for network namespaces and veth pairs, `nft` (nftables) for packet loss and
# partitions inside them. Checks that this kernel can do both, since the tests fail without.
#
#   deploy/dev/netfaults.sh
#
# Traffic shaping with netem is not used: some kernels (this project's CI machine among them)
# are built without sch_netem; delay comes from the tests' own TCP proxy instead.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"
require_root

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install --no-install-recommends "${missing[@]}"
fi

# A throwaway namespace proves namespaces, veth pairs and nftables' numgen work here.
probe="fleetlet-probe-$$"
cleanup() { ip netns del "$probe" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$probe" || die "cannot create a network namespace (is this a container without CAP_SYS_ADMIN?)"
ip -n "$probe" link add fpa$$ type veth peer name fpb$$ || die "cannot create a veth pair"
ip netns exec "$probe" nft -f - <<NFT || die "nftables does not work in a network namespace"
add table inet probe
add chain inet probe output { type filter hook output priority 0; }
add rule inet probe output numgen random mod 100 < 30 drop
NFT
log "ip $(ip -V | awk '{print $NF}'), nft $(nft --version | awk '{print $2}'): namespaces, veth and nftables work"
