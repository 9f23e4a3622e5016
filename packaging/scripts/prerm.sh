#!/bin/sh
# deb prerm ($1 = remove, upgrade, ...) and rpm %preun ($1 = 0 on erase, 1 on upgrade):
# on removal only, stop the service and its sockets and disable them. An upgrade restarts it
# from the new package's postinst instead.
case "$1" in
    remove|0)
        units="inferd.service inferd.socket inferd-http.socket inferd-grpc.socket"
        if [ -d /run/systemd/system ]; then
            systemctl stop $units || true
        fi
        systemctl disable $units >/dev/null 2>&1 || true
        ;;
esac
exit 0
