"""Starting worker processes without paying for interpreter start-up and runtime imports.

A multiprocessing *forkserver* is started once per daemon, in the background, and imports the
worker module and the runtimes (onnxruntime, ...) before it forks anything. Each worker is then
a fork of that warm process: a few milliseconds instead of the ~0.3 s an interpreter plus
`import onnxruntime` costs. The daemon itself still never imports a runtime.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable

# Imported by the forkserver before its first fork; a missing runtime is skipped (ImportError).
# This module first: in the forkserver it takes back the PYTHONSAFEPATH that started it (below).
PRELOAD = ["inferd.scheduler.spawner", "inferd.backends.worker", "inferd.backends.onnx"]

# Workers never import from the daemon's working directory (the checkout's own inferd/ folder
# shadowing the installed package, a stray numpy.py there): the forkserver is `python -c ...`,
# which puts '' (the working directory) first on its sys.path while it imports PRELOAD (3.11
# ignores the sys_path it is sent), and its workers inherit those modules. ensure_running()
# starts it with PYTHONSAFEPATH (python -P), set to a value of ours so that the forkserver drops
# it from its environment again, and so from its workers'. (The workers get the daemon's own
# sys.path, which never holds the working directory: see inferd.daemon.__main__.)
_SAFE_PATH = "inferd-forkserver"
if os.environ.get("PYTHONSAFEPATH") == _SAFE_PATH:  # in the forkserver (sys.flags.safe_path stays)
    del os.environ["PYTHONSAFEPATH"]

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)
_start_lock = threading.Lock()


def ensure_running() -> None:
    """Start the forkserver (and its imports) if it is not running; blocking, so run it in a
    thread while the daemon does other things."""
    with _start_lock:
        if sys.flags.safe_path:  # the daemon runs with -P: so will the forkserver
            multiprocessing.forkserver.ensure_running()
            return
        os.environ["PYTHONSAFEPATH"] = _SAFE_PATH
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            del os.environ["PYTHONSAFEPATH"]


async def warm_up() -> None:
    await asyncio.to_thread(ensure_running)


class Forked:
    """One worker process forked by the forkserver: its pid, exit code and end. The worker leads
    its own process group (inferd.backends.worker), so whatever it started (a model's
    subprocesses, a fork that holds the worker's socket) is killed with it: when it is killed,
    and as soon as it exits. `on_exit` gets the exit code at once (the forkserver reports it
    through the sentinel), whoever still holds the worker's end of its socket."""

    def __init__(self, child: socket.socket, on_exit: Callable[[int | None], None] = lambda code: None):
        from inferd.backends.worker import child_main  # the module only: no runtime here

        self._process = _context.Process(target=child_main, args=(child,), daemon=False)
        ensure_running()
        self._process.start()
        self.pid = self._process.pid  # kept: the process object is closed once it exits
        self._on_exit_callback = on_exit
        self._exited = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_reader(self._process.sentinel, self._on_exit)

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    def _on_exit(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._process.sentinel)
        self._process.join(0)
        self._kill_group()  # its children die with it (the group outlives its leader)
        if not self._exited.done():
            self._exited.set_result(self._process.exitcode)
        self._process.close()
        self._on_exit_callback(self.returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        """SIGKILL the worker and its process group, stopped (SIGSTOP) or not."""
        if not self._exited.done():
            self._kill_group()
            self._process.kill()  # (before it made its group, it is alone)

    def _kill_group(self) -> None:
        # The group's id is the worker's pid, which the kernel does not reuse while the group
        # has a member: this never reaches another process.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # no group left (or not made yet)
            pass
