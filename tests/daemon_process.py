"""Runs the real daemon as a subprocess, the way systemd would: readiness comes from READY=1 on
a NOTIFY_SOCKET datagram socket owned by the test (no sleeps, no polling), and the bound HTTP
address from the daemon's own "listening" log event."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path


class DaemonProcess:
    def __init__(self, models: Path, *args: str, env: dict | None = None, config: Path | None = None,
                 program: list[str] | None = None, cwd: Path | None = None):
        self.models = models
        self.args = list(args)
        self.env = env or {}
        self.config = config
        # The daemon's command before "serve" (default: this interpreter's `-m inferd.daemon`), and
        # its working directory (default: the tests' own).
        self.program = program or [sys.executable, "-m", "inferd.daemon"]
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.url = ""
        self._notify_dir = tempfile.TemporaryDirectory(prefix="inferd-")  # short: socket paths are limited
        self.notify_path = os.path.join(self._notify_dir.name, "notify")
        self.socket_path = os.path.join(self._notify_dir.name, "inferd.sock")
        self.http_socket_path = os.path.join(self._notify_dir.name, "http.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.messages: list[str] = []
        self._ready_logged = threading.Event()

    def command(self) -> list[str]:
        cmd = [*self.program, "serve", "--models", str(self.models),
               "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--socket", self.socket_path,
               "--http-socket", self.http_socket_path, "--log-format", "json"]
        if self.config:
            cmd += ["--config", str(self.config)]
        return cmd + self.args

    def start(self, timeout: float = 60) -> DaemonProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}
        env["INFERD_SERVER_DRAIN_DELAY_S"] = "0"  # no balancer to wait for (a test that wants one sets it)
        env.update(self.env, NOTIFY_SOCKET=self.notify_path)
        self.proc = subprocess.Popen(self.command(), env=env, cwd=self.cwd, stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True)
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()
        try:
            if not self.wait_for("READY=1", timeout):
                raise RuntimeError("daemon did not become ready:\n" + "\n".join(self.lines[-30:]))
            # The log up to the "ready" event was written before READY=1; wait until the reader
            # thread has it, so that events() sees every listener and initial load.
            if not self._ready_logged.wait(timeout):
                raise RuntimeError("no ready event in the daemon's log")
        except BaseException:
            self.stop()
            raise
        listening = [e for e in self.events("listening") if e.get("frontend") == "http"]
        self.url = f"http://{listening[0]['address']}"
        return self

    def _collect(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if '"event":"ready"' in line:  # logged after every listener and initial load
                self._ready_logged.set()

    def wait_for(self, message: str, timeout: float) -> bool:
        """Read notify datagrams until one carries `message`; False on timeout or daemon exit."""
        self.notify.settimeout(timeout)
        while True:
            try:
                data = self.notify.recv(4096).decode()
            except TimeoutError:
                return False
            self.messages.extend(data.splitlines())
            if message in data.splitlines():
                return True

    def log_events(self) -> list[dict]:
        """Every JSON event the daemon has logged so far (other lines are skipped)."""
        out = []
        for line in list(self.lines):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                out.append(event)
        return out

    def events(self, name: str) -> list[dict]:
        return [e for e in self.log_events() if e.get("event") == name]

    def http_get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return response.read()

    def http_json(self, path: str):
        return json.loads(self.http_get(path))

    def post_json(self, path: str, body: dict) -> tuple[int, dict]:
        """(HTTP status, JSON answer) of a POST, error statuses included."""
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the exit code (and the last log lines)."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 60) -> int:
        """The exit code, once the daemon has exited and its last log lines are read."""
        code = self.proc.wait(timeout)
        self._collector.join(timeout)
        return code

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._collector.join(10)
            self.proc.stderr.close()
        self.notify.close()
        self._notify_dir.cleanup()

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
