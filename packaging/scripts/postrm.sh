#!/bin/sh
# deb postrm ($1 = remove, purge, upgrade, ...) and rpm %postun ($1 = 0 on erase, 1 on upgrade).
# Removal keeps the config, the models and the user; purge (deb only) removes config and state.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
if [ "$1" = purge ]; then
    rm -rf /var/lib/inferd /etc/inferd /run/inferd
fi
exit 0
