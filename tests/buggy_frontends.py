"""The daemon's listeners and front-ends, with a data plane whose every call hits a bug: run as
a subprocess (tests/e2e/test_frontend_errors.py, through DaemonProcess, which passes it the
daemon's own flags) to check the one fallback on every front-end. Test scaffolding, never shipped.
It announces itself as the daemon does: "listening" and "ready" log events, then READY=1. (It runs apart
from pytest's process also because the daemon's generated gRPC code and tritonclient's register
the same protobuf names.)"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import structlog
import uvloop
from prometheus_client import CollectorRegistry, Counter

from inferd.config.settings import AuthSection, ServerSection
from inferd.daemon.dataplane import DataPlane
from inferd.daemon.frontends.auth import Access
from inferd.daemon.listeners import Listeners
from inferd.daemon.operations import logs, systemd
from inferd.daemon.readiness import ServerState

SECRET = os.environ.get("BUGGY_SECRET", "secret")  # in every bug's message: no caller may see it


class BuggyDataPlane(DataPlane):
    """Every call the front-ends make hits a bug."""

    def __init__(self):
        state = ServerState()
        state.started = True
        super().__init__(repository=None, state=state)

    def _bug(self, *args, **kwargs):
        raise ZeroDivisionError(SECRET)

    model_metadata = model_config = model_statistics = submit = _bug

    async def infer(self, *args):
        self._bug()

    async def repository_index(self, ready_only: bool = False):
        self._bug()


async def serve(args) -> None:
    server = ServerSection(http=args.http, grpc=args.grpc, socket=args.socket, http_socket=args.http_socket)
    access = Access(None, True, Counter("refused", "", ["protocol"], registry=CollectorRegistry()))
    listeners = Listeners(server, AuthSection(), BuggyDataPlane(), CollectorRegistry(), access)
    await listeners.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    structlog.get_logger("inferd").info("ready")
    systemd.notify("READY=1")
    await stop.wait()
    await listeners.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    for flag in ("--models", "--http", "--grpc", "--socket", "--http-socket", "--log-format"):
        parser.add_argument(flag, default="")
    args = parser.parse_args()
    logs.configure("json")
    uvloop.run(serve(args))
