#!/usr/bin/env bash
# System test under a real systemd (root): builds the .deb and the .rpm (two releases, to have
# a newer build to upgrade to), debootstraps Debian 12 once (cached as a tarball in
# $INFERD_CI_CACHE, default /var/cache/inferd-ci), and for each package format boots a fresh
# copy with systemd-nspawn (--private-network: the container's ports never meet the host's)
# and runs tests/system/inside.sh in it. Prints the timings; exits non-zero if any check fails.
#   SKIP_BUILD=1 tests/system/nspawn_test.sh     reuse the packages in dist/
# Never boot systemd as PID 1 in a plain chroot or unshare: it reconfigures the host; nspawn does not.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CACHE=${INFERD_CI_CACHE:-/var/cache/inferd-ci}
ROOTFS_TAR=$CACHE/bookworm-minbase.tar
[ "$(id -u)" = 0 ] || { echo "nspawn_test.sh: needs root (systemd-nspawn, debootstrap)" >&2; exit 2; }
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

missing=$(for p in debootstrap systemd-container procps; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"; done)
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $missing >/dev/null
fi
t=$(now)
if [ "${SKIP_BUILD:-}" != 1 ]; then
    INFERD_RELEASES="1 2" packaging/build.sh >/dev/null
fi
build_s=$(since "$t")
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)

t=$(now)
if [ ! -f "$ROOTFS_TAR" ]; then
    mkdir -p "$CACHE"
    rm -rf "$CACHE/rootfs.new"
    MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    debootstrap --variant=minbase --include=systemd-sysv,dbus,python3.11,procps,rpm \
        bookworm "$CACHE/rootfs.new" "${MIRROR:-http://deb.debian.org/debian}" >/dev/null
    tar -C "$CACHE/rootfs.new" -cf "$ROOTFS_TAR.part" . && mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
    rm -rf "$CACHE/rootfs.new"
fi
rootfs_s=$(since "$t")

rc=0
declare -A took
for pkg in deb rpm; do
    if [ $pkg = deb ]; then old=dist/inferd_${VERSION}-1_amd64.deb new=dist/inferd_${VERSION}-2_amd64.deb
    else old=dist/inferd-${VERSION}-1.x86_64.rpm new=dist/inferd-${VERSION}-2.x86_64.rpm; fi
    t=$(now)
    echo "== $pkg: $old, then upgrade to $new"
    tests/system/boot.sh "$ROOTFS_TAR" "$old" "$new" </dev/null || rc=1
    took[$pkg]=$(since "$t")
done

echo "== timings: package build (both formats, two releases) ${build_s}s, rootfs ${rootfs_s}s" \
     "(cached: $( [ "${rootfs_s%.*}" -lt 5 ] && echo yes || echo no)), nspawn test: deb ${took[deb]}s, rpm ${took[rpm]}s"
ls -l dist/
exit $rc
