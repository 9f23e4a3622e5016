"""What every bare reference server does around its serving: announce itself the way the daemon
does (a "listening" log line, READY=1 on $NOTIFY_SOCKET) so bench.py starts them all alike,
then serve until bench.py's SIGTERM."""

import asyncio
import json
import os
import signal
import socket
import sys


async def serve_until_sigterm(frontend: str, address: str) -> None:
    print(json.dumps({"event": "listening", "frontend": frontend, "address": address}), file=sys.stderr, flush=True)
    if path := os.environ.get("NOTIFY_SOCKET"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1\n", path)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
