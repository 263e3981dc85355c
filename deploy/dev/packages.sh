#!/usr/bin/env bash
# Builds the Debian packages of fleetlet: the agent for amd64, arm64 and armhf, the manager for
# amd64 and arm64, and checks each with lintian (any error fails the build).
#
# Usage:
#   deploy/dev/packages.sh [OUT_DIR]   (default: target/debian)
# prints, on stdout, FLEETLET_DEB_DIR=<OUT_DIR> and FLEETLET_DEB_VERSION=<version>; the packages
# are OUT_DIR/fleetlet-{agent,manager}_<version>_<arch>.deb.
#
# The amd64 binaries are release builds of the project's own toolchain (target/release); the
# foreign ones come from deploy/dev/cross.sh (Debian's cross toolchain). The package contents
# come from deploy/debian/ (control files, maintainer scripts, the commented conffiles, the
# manager's unit, copyright, changelog) and from deploy/systemd/fleetlet-agent.service, the one
# agent unit of the project, which is only pointed at the packaged binary and its config file.
#
# Why dpkg-deb and not cargo-deb: the tree of each package is written out here and packed by the
# tool every Debian system has, so a foreign architecture's package is the same few lines as
# amd64's, from binaries built however that target needs (Debian's cross toolchain), and nothing
# else has to be compiled or installed for packaging. dpkg-shlibdeps computes the library
# dependencies from the binaries themselves, as Debian's own builds do.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"

repo=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
out=$(readlink -m "${1:-$repo/target/debian}")
debian="$repo/deploy/debian"

require_root
for tool in dpkg-deb dpkg-shlibdeps lintian fakeroot; do
    command -v "$tool" >/dev/null || apt_install --no-install-recommends dpkg-dev lintian fakeroot
done

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml")
[ -n "$version" ] || die "no version in the workspace's Cargo.toml"

# The foreign binaries (and the toolchain, the first time).
set -a
eval "$("$repo/deploy/dev/cross.sh" build)"
set +a

start=$(now_ms)
log "building the amd64 release agent and manager (project toolchain)"
(cd "$repo" && cargo build --release -p fleetlet-agent -p fleetlet-manager) ||
    die "amd64 release build failed"
log "amd64 binaries built in $(elapsed_since "$start")"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# A man page from the program's --help (the one reference of its flags and settings), so the
# page says exactly what the binary does. `help` is the text of the amd64 build, the same for all.
man_page() {
    local name=$1 summary=$2 help=$3
    printf '.TH %s 8 "" "fleetlet %s" "System Administration"\n' "${name^^}" "$version"
    printf '.SH NAME\n%s \\- %s\n' "$name" "$summary"
    printf '.SH SYNOPSIS\n.B %s\n[\\fIOPTIONS\\fR]\n' "$name"
    printf '.SH DESCRIPTION\nThe text of\n.BR "%s \\-\\-help" :\n.PP\n.nf\n' "$name"
    # Backslashes first, then lines that roff would take as requests.
    printf '%s\n' "$help" | sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/" -e 's/-/\\-/g'
    printf '.fi\n.SH FILES\n'
    case "$name" in
    fleetlet-agent)
        printf '.TP\n.I /etc/fleetlet/agent.toml\nSettings (TOML, kebab-case keys).\n'
        printf '.TP\n.I /var/lib/fleetlet\nThe state directory: store and kept token.\n'
        ;;
    fleetlet-manager)
        printf '.TP\n.I /etc/fleetlet/manager.env\nSettings, as environment variables.\n'
        ;;
    esac
    printf '.SH SEE ALSO\n.BR systemctl (1)\n'
}

# build_package PKG DEB_ARCH BINARY
build_package() {
    local pkg=$1 arch=$2 binary=$3
    local name=${pkg#fleetlet-}
    local root="$work/debian/$pkg-$arch"
    rm -rf "$root"
    install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
        "$root/etc/fleetlet" "$root/usr/share/man/man8" "$root/usr/share/doc/$pkg"
    install -m 0755 "$binary" "$root/usr/bin/$pkg"

    case "$pkg" in
    fleetlet-agent)
        # The project's unit, pointed at the packaged binary and config file; its header (how
        # to install it by hand) is replaced by what the package does.
        {
            printf '# fleetlet agent: converges this device toward its manifest and reports a typed status.\n'
            printf '# Installed by the fleetlet-agent package; settings: /etc/fleetlet/agent.toml.\n'
            printf '# Change it with "systemctl edit fleetlet-agent", not here.\n'
            sed -e '1,/^$/d' \
                -e 's|^ExecStart=.*|ExecStart=/usr/bin/fleetlet-agent --config /etc/fleetlet/agent.toml|' \
                -e 's|^Documentation=.*|&\nDocumentation=man:fleetlet-agent(8)|' \
                "$repo/deploy/systemd/fleetlet-agent.service" | sed '1s/^/\n/'
        } >"$root/lib/systemd/system/fleetlet-agent.service"
        install -m 0644 "$debian/agent.toml" "$root/etc/fleetlet/agent.toml"
        printf '/etc/fleetlet/agent.toml\n' >"$root/DEBIAN/conffiles"
        ;;
    fleetlet-manager)
        install -m 0644 "$debian/manager/fleetlet-manager.service" "$root/lib/systemd/system/"
        install -m 0600 "$debian/manager/manager.env" "$root/etc/fleetlet/manager.env"
        printf '/etc/fleetlet/manager.env\n' >"$root/DEBIAN/conffiles"
        ;;
    esac
    chmod 0644 "$root/lib/systemd/system/$pkg.service"

    local help summary
    help=$("$repo/target/release/$pkg" --help)
    # The control file's summary, after "fleetlet device agent: ".
    summary=$(sed -n 's/^Description: [^:]*: //p' "$debian/$name/control")
    man_page "$pkg" "$summary" "$help" | gzip -9n >"$root/usr/share/man/man8/$pkg.8.gz"
    install -m 0644 "$debian/copyright" "$root/usr/share/doc/$pkg/copyright"
    sed "s/@VERSION@/$version/" "$debian/changelog" | gzip -9n >"$root/usr/share/doc/$pkg/changelog.gz"

    local script
    for script in postinst prerm postrm; do
        install -m 0755 "$debian/$name/$script" "$root/DEBIAN/$script"
    done

    # Library dependencies from the binary itself (dpkg-shlibdeps wants a debian/control).
    local depends
    depends=$(cd "$work" && printf 'Source: fleetlet\n\nPackage: %s\nArchitecture: any\n' "$pkg" \
        >debian/control && dpkg-shlibdeps -O "-e${root#"$work"/}/usr/bin/$pkg" 2>/dev/null |
        sed -n 's/^shlibs:Depends=//p')
    [ -n "$depends" ] || die "dpkg-shlibdeps found no dependency for $binary"

    local size
    size=$(du -k -s --exclude=DEBIAN "$root" | cut -f1)
    sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
        -e "s/@DEPENDS@/$depends/" "$debian/$name/control" >"$root/DEBIAN/control"
    (cd "$root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z |
        xargs -0 md5sum) >"$root/DEBIAN/md5sums"
    chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

    local deb="$out/${pkg}_${version}_${arch}.deb"
    # Files owned by root whoever builds (-Zxz: what Debian's archive uses).
    dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null ||
        die "dpkg-deb failed for $pkg $arch"
    log "built $deb"
}

build_package fleetlet-agent amd64 "$repo/target/release/fleetlet-agent"
build_package fleetlet-agent arm64 "$FLEETLET_AGENT_AARCH64"
build_package fleetlet-agent armhf "$FLEETLET_AGENT_ARMV7"
build_package fleetlet-manager amd64 "$repo/target/release/fleetlet-manager"
build_package fleetlet-manager arm64 "$FLEETLET_MANAGER_AARCH64"

# Errors fail the build; warnings are printed and explained in deploy/debian/README.md.
log "lintian on every package"
lintian --fail-on error --tag-display-limit 0 "$out"/fleetlet-*_"$version"_*.deb >&2 ||
    die "lintian reported errors"

printf 'FLEETLET_DEB_DIR=%s\n' "$out"
printf 'FLEETLET_DEB_VERSION=%s\n' "$version"
