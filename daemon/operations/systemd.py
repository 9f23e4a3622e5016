"""The sd_notify protocol, spoken directly over the datagram socket systemd names in
$NOTIFY_SOCKET (no library needed; without the variable every call is a no-op)."""

from __future__ import annotations

import asyncio
import os
import socket

# Taken out of the environment as the daemon starts (only the daemon imports this module), so
# that no process it starts later (workers, a forkserver, whatever spawns them) inherits them and
# talks to systemd as if it were the service: kept here instead.
_ENV = {name: os.environ.pop(name) for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID") if name in os.environ}


def notify(*lines: str) -> bool:
    address = _ENV.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Half of WatchdogSec= when systemd asked this process for keep-alives, else None."""
    usec = _ENV.get("WATCHDOG_USEC")
    pid = _ENV.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


async def keep_watchdog_fed(interval: float) -> None:
    """WATCHDOG=1 from the event loop itself: a loop that stops turning stops the pings, and
    systemd restarts the daemon."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def listen_sockets() -> dict[str, socket.socket]:
    """Sockets handed over by systemd socket activation (the sd_listen_fds protocol): fds 3, 4, ...
    named by LISTEN_FDNAMES (the socket units' FileDescriptorName=). Empty unless LISTEN_PID is
    this process. The variables are removed so that nothing started later takes them too."""
    pid, count = os.environ.get("LISTEN_PID", ""), os.environ.get("LISTEN_FDS", "")
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for name in LISTEN_VARS:
        os.environ.pop(name, None)
    if not (pid.isdigit() and int(pid) == os.getpid() and count.isdigit()):
        return {}
    sockets = {}
    for i in range(int(count)):
        sock = socket.socket(fileno=3 + i)  # family and type are read from the fd
        sock.set_inheritable(False)  # worker processes must not hold the listeners open
        name = names[i] if i < len(names) and names[i] else f"fd{3 + i}"
        if name in sockets:
            sockets[name].close()  # two sockets under one name: the last one counts
        sockets[name] = sock
    return sockets
