"""Where the daemon's socket is when it runs with `socket = "auto"`."""

from __future__ import annotations

import os

from inferd.config.settings import fallback_socket_dir, private_dir_problem, socket_path

# The packaged systemd unit's socket. A client outside that unit has no $RUNTIME_DIRECTORY
# pointing at it, so it is looked for by name.
SYSTEM_SOCKET = "/run/inferd/inferd.sock"


def default_socket_path() -> str:
    """The socket a daemon started in this environment with `auto` would create if it exists,
    else the packaged unit's if that exists, else the former (for the error message). The /tmp
    fallback counts only while its directory is this user's own and private (connecting
    through it is refused otherwise, with the reason)."""
    own = socket_path("auto")
    if os.path.dirname(own) == fallback_socket_dir() and private_dir_problem(fallback_socket_dir()):
        return SYSTEM_SOCKET if os.path.exists(SYSTEM_SOCKET) else own
    return next((path for path in (own, SYSTEM_SOCKET) if os.path.exists(path)), own)
