"""Where the daemon's socket is when it runs with `socket = "auto"`."""

from __future__ import annotations

import os

from inferd.config.settings import socket_path

# The packaged systemd unit's socket. A client outside that unit has no $RUNTIME_DIRECTORY
# pointing at it, so it is looked for by name.
SYSTEM_SOCKET = "/run/inferd/inferd.sock"


def default_socket_path() -> str:
    """The socket a daemon started in this environment with `auto` would create if it exists,
    else the packaged unit's if that exists, else the former (for the error message)."""
    own = socket_path("auto")
    return next((path for path in (own, SYSTEM_SOCKET) if os.path.exists(path)), own)
