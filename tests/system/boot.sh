#!/usr/bin/env bash
# boot.sh ROOTFS_TAR PACKAGE NEWER_PACKAGE: boots a fresh copy of the rootfs with systemd-nspawn
# and runs inside.sh in it (driven with nsenter: there is no machined to talk to).
set -euo pipefail
# A private mount namespace: nspawn's state (/run/systemd/nspawn) and the container's root
# stay off the host, and vanish with the namespace.
if [ -z "${_INFERD_NSPAWN_NS:-}" ]; then
    mkdir -p /run/systemd  # the mount point (empty on hosts not run by systemd)
    exec env _INFERD_NSPAWN_NS=1 unshare --mount --propagation private "$0" "$@"
fi
TAR=$1 PKG_FILE=$2 NEW_FILE=$3
HERE=$(cd "$(dirname "$0")" && pwd)
FORMAT=${PKG_FILE##*.}
W=$(mktemp -d /var/tmp/inferd-nspawn.XXXXXX)
NS= P=
cleanup() {  # the container's init lives in its own session: end it too, by its pid
    if [ -n "$P" ] && kill -0 "$P" 2>/dev/null; then kill -KILL "$P" 2>/dev/null || true; fi
    if [ -n "$NS" ] && kill -0 "$NS" 2>/dev/null; then kill -KILL "$NS" 2>/dev/null || true; fi
    [ -z "$NS" ] || wait "$NS" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
mount -t tmpfs tmpfs /run/systemd
R=$W/root && mkdir "$R"
tar -C "$R" -xf "$TAR"
# Test files go to /var/tmp: nspawn mounts a fresh tmpfs on the container's /tmp.
mkdir -p "$R/var/tmp/e2e"
cp "$PKG_FILE" "$R/var/tmp/e2e/inferd-old.$FORMAT"
cp "$NEW_FILE" "$R/var/tmp/e2e/inferd-new.$FORMAT"
cp "${INSIDE:-$HERE/inside.sh}" "$R/var/tmp/e2e/inside.sh"  # $INSIDE: another script (debugging)
cp "$HERE/../hang_on_sigusr2.py" "$R/var/tmp/e2e/"  # the watchdog check's launcher

systemd-nspawn -D "$R" --register=no --keep-unit --private-network --console=pipe -b >"$W/console.log" 2>&1 &
NS=$!
for _ in $(seq 100); do  # the container's init: nspawn's first child is transient, so match -x systemd
    P=$(pgrep -P "$NS" -x systemd || true); [ -n "$P" ] && break; sleep 0.1
done
[ -n "$P" ] || { echo "the container did not boot:"; cat "$W/console.log"; exit 1; }
for _ in $(seq 600); do nsenter -t "$P" -a test -S /run/dbus/system_bus_socket 2>/dev/null && break; sleep 0.1; done
booted=$(timeout 60 nsenter -t "$P" -a systemctl is-system-running --wait 2>&1 || true)
echo "container booted: $booted"
rc=0
nsenter -t "$P" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin FORMAT="$FORMAT" /bin/bash /var/tmp/e2e/inside.sh || rc=$?
nsenter -t "$P" -a systemctl poweroff >/dev/null 2>&1 || true  # SIGTERM to nspawn may not stop it
for _ in $(seq 30); do kill -0 "$NS" 2>/dev/null || break; sleep 1; done
exit $rc
