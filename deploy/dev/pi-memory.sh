#!/usr/bin/env bash
# Measures the ARM agents' resident memory inside a full-system emulated guest (BENCHMARKS.md,
# "Raspberry Pi targets"). Under qemu-user the process's RSS would include qemu itself; in a
# guest, /proc/<pid>/status is the guest kernel's account of the agent alone.
#
# Usage:
#   deploy/dev/pi-memory.sh [aarch64|armv7|x86_64 ...]   (default: aarch64 armv7)
# (x86_64: the same measurement on this machine, no emulation, as the reference)
# prints one line per target: VmRSS, RssAnon, RssFile and VmHWM in KiB, read SECONDS (default 60)
# after the agent converged 100 File resources in standalone mode with a 1 s resync.
#
# The guest: Debian's own kernel (linux-image-*-arm64 / -armmp, fetched with apt-get download),
# an initramfs holding busybox-static for the target, the agent binary, the target's glibc from
# the libc6:arm64 / libc6:armhf packages, and an /init script that runs the measurement and
# powers off; results come out on the serial console. `-M virt` (armhf: `highmem=off`), 512 MiB,
# no network and no disk: nothing else runs in the guest.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"

repo=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
seconds=${FLEETLET_PI_MEMORY_SECONDS:-60}
eval "$("$repo/deploy/dev/cross.sh" env)"
vm_dir="$FLEETLET_CROSS_DIR/vm"
mkdir -p "$vm_dir"
command -v qemu-system-aarch64 >/dev/null || apt_install --no-install-recommends qemu-system-arm
command -v cpio >/dev/null || apt_install --no-install-recommends cpio

# fetch DEB_ARCH FLAVOUR: the kernel and busybox debs of an architecture, once.
fetch() {
    local arch=$1 flavour=$2 kernel
    kernel=$(apt-cache depends "linux-image-$flavour:$arch" | sed -n 's/^ *Depends: \(linux-image-[^:]*\).*/\1/p' | head -n 1)
    [ -n "$kernel" ] || die "no linux-image-$flavour for $arch"
    (cd "$vm_dir" && {
        ls "$kernel"_*_"$arch".deb >/dev/null 2>&1 || apt-get download "$kernel:$arch" >&2
        ls busybox-static_*_"$arch".deb >/dev/null 2>&1 || apt-get download "busybox-static:$arch" >&2
    })
    rm -rf "${vm_dir:?}/${arch:?}"
    mkdir -p "$vm_dir/$arch/kernel" "$vm_dir/$arch/busybox"
    dpkg-deb -x "$(ls "$vm_dir/$kernel"_*_"$arch".deb)" "$vm_dir/$arch/kernel"
    dpkg-deb -x "$(ls "$vm_dir"/busybox-static_*_"$arch".deb)" "$vm_dir/$arch/busybox"
}

# The guest's /init: 100 Files in a standalone manifest, the agent started, the files awaited
# (with a deadline), then SECONDS of resyncs and the agent's memory from /proc.
init_script() {
    cat <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
mkdir -p /tmp/root /tmp/state
{
    printf '{"apiVersion":"fleetlet.dev/v1","kind":"AgentManifest","agentId":"pi","resources":['
    i=0
    while [ \$i -lt 100 ]; do
        [ \$i -gt 0 ] && printf ','
        printf '{"id":"f%d","kind":"File","spec":{"path":"/tmp/root/f%d.conf","content":{"text":"setting %d\\\\n"},"mode":"0644"}}' \$i \$i \$i
        i=\$((i + 1))
    done
    printf ']}'
} >/tmp/manifest.json
FLEETLET_STATE_DIR=/tmp/state FLEETLET_FILE_ROOTS=/tmp/root FLEETLET_CONTAINER_RUNTIME=none \\
    FLEETLET_SYSTEMD_SCOPE=none FLEETLET_RESYNC_INTERVAL=1s FLEETLET_AGENT_ID=pi \\
    /fleetlet-agent --manifest-file /tmp/manifest.json >/tmp/agent.log 2>&1 &
pid=\$!
waited=0
while [ "\$(ls /tmp/root | wc -l)" -lt 100 ] && [ \$waited -lt 300 ]; do
    sleep 1
    waited=\$((waited + 1))
done
echo "FLEETLET converged files=\$(ls /tmp/root | wc -l) after=\${waited}s"
sleep $seconds
grep -E '^(VmHWM|VmRSS|RssAnon|RssFile|RssShmem|Threads):' /proc/\$pid/status | sed 's/^/FLEETLET /'
echo "FLEETLET cpu=\$(cut -d' ' -f14,15 /proc/\$pid/stat) (utime stime, ticks)"
tail -n 3 /tmp/agent.log | sed 's/^/FLEETLET log: /'
poweroff -f
EOF
}

measure() {
    local target=$1 arch flavour qemu machine console agent
    case "$target" in
    aarch64)
        arch=arm64 flavour=arm64 qemu=qemu-system-aarch64 console=ttyAMA0
        machine=(-M virt -cpu cortex-a72)
        agent=$FLEETLET_AGENT_AARCH64
        ;;
    armv7)
        arch=armhf flavour=armmp qemu=qemu-system-arm console=ttyAMA0
        # highmem=off: else the virtio-pci devices never appear on 32-bit ARM.
        machine=(-M "virt,highmem=off" -cpu cortex-a15)
        agent=$FLEETLET_AGENT_ARMV7
        ;;
    x86_64)
        # The reference: the same script on this machine, the release agent of target/release,
        # in a mount namespace of its own with a private /tmp (and no poweroff).
        local dir
        dir=$(mktemp -d -p /var/tmp)
        cp "$repo/target/release/fleetlet-agent" "$dir/fleetlet-agent"
        init_script | sed -e '1,/^mount -t tmpfs/d' -e 's|^poweroff -f$||' \
            -e "s|/fleetlet-agent --manifest|$dir/fleetlet-agent --manifest|" >"$dir/init"
        unshare --mount --propagation private sh -c \
            "mount -t tmpfs tmp /tmp && sh $dir/init; kill \$(pgrep -f '^$dir/fleetlet-agent') 2>/dev/null" |
            grep -a '^FLEETLET' | sed "s/^FLEETLET/$target:/"
        rm -rf "$dir"
        return
        ;;
    *) die "unknown target $target (aarch64, armv7 or x86_64)" ;;
    esac
    fetch "$arch" "$flavour"
    local gnu initrd="$vm_dir/$arch/initrd"
    case "$arch" in
    arm64) gnu=aarch64-linux-gnu ;;
    armhf) gnu=arm-linux-gnueabihf ;;
    esac
    rm -rf "$initrd" && mkdir -p "$initrd"/{bin,dev,proc,sys,tmp,lib/"$gnu"}
    cp "$vm_dir/$arch/busybox/bin/busybox" "$initrd/bin/busybox"
    cp "$agent" "$initrd/fleetlet-agent"
    local lib
    for lib in libc.so.6 libgcc_s.so.1 libm.so.6; do
        [ -e "/lib/$gnu/$lib" ] && cp -L "/lib/$gnu/$lib" "$initrd/lib/$gnu/"
    done
    case "$arch" in
    arm64) cp -L /lib/ld-linux-aarch64.so.1 "$initrd/lib/" ;;
    armhf) cp -L /lib/ld-linux-armhf.so.3 "$initrd/lib/" ;;
    esac
    init_script >"$initrd/init"
    chmod 0755 "$initrd/init"
    (cd "$initrd" && find . | cpio -o -H newc --quiet | gzip -1) >"$vm_dir/$arch/initrd.gz"
    local kernel
    kernel=$(ls "$vm_dir/$arch/kernel/boot"/vmlinuz-*)
    log "booting $target ($qemu, $(basename "$kernel")); ~$((seconds + 60)) s"
    timeout $((seconds + 600)) "$qemu" "${machine[@]}" -m 512 -smp 2 -nographic -no-reboot -nic none \
        -kernel "$kernel" -initrd "$vm_dir/$arch/initrd.gz" \
        -append "console=$console rdinit=/init quiet panic=-1" </dev/null >"$vm_dir/$arch/console.log" 2>&1 ||
        true
    tr -d '\r' <"$vm_dir/$arch/console.log" | grep -a '^FLEETLET' | sed "s/^FLEETLET/$target:/" ||
        { show_log_tail "$vm_dir/$arch/console.log"; die "no result from the $target guest"; }
}

for target in "${@:-aarch64 armv7}"; do
    # shellcheck disable=SC2086 # the default is two words
    for one in $target; do measure "$one"; done
done
