"""The shipped packaging/fleet/haproxy.cfg, run for real in front of a Fleet.

Only what a test must change is changed: the server addresses (each daemon's loopback ports),
the binds (free loopback ports), the check intervals (a test cannot wait seconds per check),
and the global lines that assume an installed system (chroot, user, the admin socket's and the
log's paths). Everything else — balancing, checks, retries, timeouts — is the file as shipped."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

SHIPPED = Path(__file__).resolve().parents[2] / "packaging" / "fleet" / "haproxy.cfg"


def balancer(name: str) -> str | None:
    """Debian's haproxy or nginx binary (in /usr/sbin, off a normal user's PATH), or None."""
    return shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)


def require_balancer(path: str | None, name: str) -> str:
    """The binary's path; a test without it is skipped, or fails when REQUIRE_BALANCERS=1."""
    if path is None:
        if os.environ.get("REQUIRE_BALANCERS") == "1":
            pytest.fail(f"{name} is not installed (REQUIRE_BALANCERS=1)")
        pytest.skip(f"{name} is not installed (Debian: apt-get install {name})")
    return path


HAPROXY = balancer("haproxy")
# Test check timings: a host is out about 2 x 200 ms after it stops being ready.
TEST_CHECKS = {"inter": "200ms", "fastinter": "100ms", "downinter": "200ms"}


def require_haproxy() -> str:
    return require_balancer(HAPROXY, "haproxy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replace(text: str, pattern: str, new: str, count: int) -> str:
    """re.sub that insists on exactly `count` matches (the shipped file changed otherwise)."""
    out, n = re.subn(pattern, new, text, flags=re.MULTILINE)
    assert n == count, f"{SHIPPED}: expected {count} lines matching {pattern!r}, found {n}"
    return out


def render(hosts: list[tuple[int, int]], ports: dict[str, int], run_dir: Path) -> str:
    """The shipped config for daemons on 127.0.0.1 at `hosts` [(http port, grpc port)] and
    frontends on `ports` {"http", "grpc", "stats"}; its admin socket in `run_dir`."""
    text = SHIPPED.read_text()
    text = _replace(text, r"^\s*(chroot|user|group) .*\n", "", 3)
    text = _replace(text, r"^(\s*log) /dev/log (.*)$", r"\1 stderr format raw \2", 1)
    text = _replace(text, r"^(\s*stats socket) \S+", rf"\1 {run_dir}/admin.sock", 1)
    text = _replace(text, r"^(\s*bind) :8000$", rf"\1 127.0.0.1:{ports['http']}", 1)
    text = _replace(text, r"^(\s*bind) :8001 proto h2$", rf"\1 127.0.0.1:{ports['grpc']} proto h2", 1)
    text = _replace(text, r"^(\s*bind) 127\.0\.0\.1:8404$", rf"\1 127.0.0.1:{ports['stats']}", 1)
    servers = len(re.findall(r"^\s*server inferd\d+ 10\.0\.0\.\d+:8001 ", text, flags=re.MULTILINE)) // 2
    assert servers == len(hosts), f"the shipped file has {servers} hosts, the fleet {len(hosts)}"
    for index, (http, grpc) in enumerate(hosts, 1):
        # (each host in two HTTP backends, inferd_http and inferd_sequences, and two gRPC ones)
        text = _replace(text, rf"^(\s*server inferd{index}) 10\.0\.0\.{index}:8000$", rf"\1 127.0.0.1:{http}", 2)
        text = _replace(text, rf"^(\s*server inferd{index}) 10\.0\.0\.{index}:8001 proto h2 check-proto h1 port 8000$",
                        rf"\1 127.0.0.1:{grpc} proto h2 check-proto h1 port {http}", 2)
    for key, value in TEST_CHECKS.items():
        text = _replace(text, rf"^(\s*default-server .*\b{key}) \S+", rf"\1 {value}", 4)
    return text


class HAProxy:
    """haproxy in the foreground (-db) on loopback; stopped by its PID."""

    def __init__(self, run_dir: Path, hosts: list[tuple[int, int]]):
        self.run_dir = run_dir
        self.ports = {"http": free_port(), "grpc": free_port(), "stats": free_port()}
        self.config = run_dir / "haproxy.cfg"
        self.config.write_text(render(hosts, self.ports, run_dir))
        self.log_path = run_dir / "haproxy.log"
        self.proc: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    def start(self, down: tuple[str, ...] = (), timeout: float = 30) -> HAProxy:
        """Run haproxy; return once every server is UP, but those named in `down`: DOWN."""
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._settled(down):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("haproxy did not come up:\n" + self.log_path.read_text()[-3000:])
            time.sleep(0.05)
        return self

    def _settled(self, down: tuple[str, ...]) -> bool:
        try:
            states = self.server_states()
        except OSError:  # not listening yet
            return False
        return bool(states) and all(state == ("DOWN" if name in down else "UP") for (_, name), state in states.items())

    def admin(self, command: str) -> str:
        """One command on the admin socket (`show stat`, ...)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.run_dir / "admin.sock"))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_states(self) -> dict[tuple[str, str], str]:
        """{(backend, server): status} for every server, e.g. "UP", "DOWN", "UP 1/2", "DOWN 1/2"."""
        rows = csv.DictReader(io.StringIO(self.admin("show stat").lstrip("# ")))
        return {(r["pxname"], r["svname"]): r["status"] for r in rows
                if r["svname"] not in ("FRONTEND", "BACKEND")}

    def stats(self) -> list[dict]:
        """`show stat` as rows (retries `wretr`, redispatches `wredis`, errors, per server)."""
        return list(csv.DictReader(io.StringIO(self.admin("show stat").lstrip("# "))))

    def wait_state(self, server: str, want: str, timeout: float = 30) -> float | None:
        """Seconds until `server` is `want` ("UP", "DOWN") in every backend (None: not within `timeout`)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            states = self.server_states()
            if all(state == want for (_, name), state in states.items() if name == server):
                return time.monotonic() - start
            time.sleep(0.02)
        return None

    def sessions(self, server: str) -> int:
        """Requests HAProxy has sent to `server` so far, over every backend."""
        return sum(int(row["stot"] or 0) for row in self.stats() if row["svname"] == server)

    def retries(self) -> dict:
        """HAProxy's own count of retries and redispatches, per backend."""
        return {row["pxname"]: {"retries": int(row["wretr"] or 0), "redispatches": int(row["wredis"] or 0)}
                for row in self.stats() if row["svname"] == "BACKEND"}

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGUSR1)  # soft stop: finish what runs, then exit
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
