#!/bin/sh
# deb postinst ($1 = configure, $2 = the version replaced, empty on a first install) and
# rpm %post ($1 = 1 on install, 2 on upgrade): nfpm gives both formats this one script.
set -e
case "$1" in abort-*) exit 0 ;; esac

getent group inferd >/dev/null 2>&1 || groupadd --system inferd
getent passwd inferd >/dev/null 2>&1 || useradd --system --gid inferd --home-dir /var/lib/inferd \
    --no-create-home --shell /usr/sbin/nologin --comment "inferd daemon" inferd

first=no
if [ "$1" = 1 ] || { [ "$1" = configure ] && [ -z "${2:-}" ]; }; then first=yes; fi

# State is the daemon's (owned by inferd, so systemd's StateDirectory= never chowns it
# recursively). Models are published by root or members of group inferd (setgid: new files
# get the group) and only read by the daemon (its unit mounts them read-only); others get nothing.
install -d -o inferd -g inferd -m 0750 /var/lib/inferd
if [ ! -d /var/lib/inferd/models ]; then
    install -d -o root -g inferd -m 2775 /var/lib/inferd/models
    if [ "$first" = yes ]; then  # the examples, once: deleting them later is the operator's call
        cp -R /usr/share/inferd/examples/models/. /var/lib/inferd/models/
        chgrp -R inferd /var/lib/inferd/models
    fi
fi
chmod o-w /var/lib/inferd/models
# The mirror of an object store ([models] source, dir = this): the daemon writes it.
install -d -o inferd -g inferd -m 0750 /var/lib/inferd/mirror
# The config may name a token or TLS key: readable by the daemon's group, not by others.
chgrp inferd /etc/inferd/inferd.toml && chmod 0640 /etc/inferd/inferd.toml

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if [ "$first" = yes ]; then systemctl enable inferd.service || true; fi
    systemctl try-restart inferd.service || true  # an upgrade: serve with the new code
fi
exit 0
