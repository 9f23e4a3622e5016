"""A server subprocess for the benchmarks: started with $NOTIFY_SOCKET, its front-ends' addresses
read from its 'listening' log lines, its CPU time and log events read back, stopped with SIGTERM.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time


def parse_address(frontend: str, address: str):
    """(host, port) for TCP front-ends, the path for the Unix socket."""
    if frontend == "socket":
        return address
    host, port = address.rsplit(":", 1)
    return host.strip("[]"), int(port)


class Server:
    """A server subprocess that logs a JSON 'listening' line per front-end and sends READY=1 on
    $NOTIFY_SOCKET. `addresses` maps each front-end it announced to parse_address's form."""

    def __init__(self, cmd: list[str], tmp: pathlib.Path, name: str, frontends=("http",),
                 timeout: float = 60.0):
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=2000)
        self.addresses: dict = {}
        self._wanted = set(frontends)
        self._listening = threading.Event()
        sock_path = str(tmp / f"{name}.notify")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(sock_path)
        self.proc = subprocess.Popen(cmd, env={**os.environ, "NOTIFY_SOCKET": sock_path},
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        # Drain stderr continuously so that the server never blocks on a full pipe.
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        try:
            self._wait_ready(timeout)
            if not self._listening.wait(10):
                raise RuntimeError(f"READY=1 received but no 'listening' log line for "
                                   f"{sorted(self._wanted - set(self.addresses))}")
        except BaseException:
            self.stop()
            raise

    def _read_stderr(self):
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.stderr_tail.append(line)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if (isinstance(ev, dict) and ev.get("event") == "listening"
                    and ev.get("frontend") in self._wanted and ev["frontend"] not in self.addresses):
                self.addresses[ev["frontend"]] = parse_address(ev["frontend"], str(ev["address"]))
                if self._wanted <= set(self.addresses):
                    self._listening.set()

    def _wait_ready(self, timeout: float):
        deadline = time.monotonic() + timeout
        self._notify.settimeout(0.5)  # short, to notice an early exit of the server
        while time.monotonic() < deadline:
            try:
                msg = self._notify.recv(4096)
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n"
                                       + "\n".join(list(self.stderr_tail)[-40:])) from None
                continue
            if "READY=1" in msg.decode(errors="replace").splitlines():
                return
        raise RuntimeError(f"no READY=1 within {timeout} s:\n" + "\n".join(list(self.stderr_tail)[-40:]))

    def events(self, name: str) -> list[dict]:
        """The server's JSON log events named `name`, among its last 2,000 lines."""
        out = []
        for line in list(self.stderr_tail):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == name:
                out.append(event)
        return out

    def cpu_s(self) -> float:
        """utime+stime of the server and its descendants (e.g. backend worker processes)."""
        stats = {}
        for p in pathlib.Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    f = (p / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(p.name)] = (int(f[1]), int(f[11]) + int(f[12]))  # ppid, utime+stime
        tree, changed = {self.proc.pid}, True
        while changed:  # grow the tree until no process's parent is in it that isn't itself
            changed = False
            for pid, (ppid, _) in stats.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    changed = True
        return sum(stats[p][1] for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        self._notify.close()
