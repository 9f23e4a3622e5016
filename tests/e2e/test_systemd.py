"""The systemd contract, end to end against the real daemon, without systemd and without root:
the test owns the NOTIFY_SOCKET datagram socket (as systemd would), sets WATCHDOG_USEC, sends
the signals systemctl sends, and hands over pre-bound sockets the way socket activation does.
tests/system/nspawn_test.sh checks the same against a real systemd."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp
import make_models
import numpy as np
import pytest
from daemon_process import DaemonProcess

from inferd.client import Client


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """add_sub, and `held`: add_sub whose queue waits 1.5 s for a fuller batch, so a request
    is still in flight when the test signals the daemon."""
    root = tmp_path_factory.mktemp("systemd-models")
    make_models.build_add_sub(root / "add_sub.onnx")
    make_models.build_add_sub(root / "held" / "1" / "model.onnx")
    (root / "held" / "config.toml").write_text("max_batch_size = 8\nmax_queue_delay_ms = 1500\n")
    return root


def next_message(d: DaemonProcess, timeout: float, skip_watchdog: bool = True) -> tuple[float, list[str]]:
    """The next notify datagram (its arrival time and lines), keep-alives skipped unless asked."""
    deadline = time.monotonic() + timeout
    while True:
        d.notify.settimeout(max(0.001, deadline - time.monotonic()))
        lines = d.notify.recv(4096).decode().splitlines()  # TimeoutError fails the test
        d.messages.extend(lines)
        if not (skip_watchdog and lines == ["WATCHDOG=1"]):
            return time.monotonic(), lines


def infer_held(url: str, result: dict) -> None:
    """One add_sub request to `held`, answered after the batcher's delay; fills `result`."""
    body = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
                       for n in ("INPUT0", "INPUT1")]}
    req = urllib.request.Request(url + "/v2/models/held/infer", json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            result["status"], result["body"] = r.status, json.loads(r.read())
    except Exception as e:  # noqa: BLE001 - reported by the test's assertions
        result["error"] = repr(e)


def test_ready_watchdog_reload_and_stop_with_requests_in_flight(repo):
    period = 0.3  # WatchdogSec=0.6s
    with DaemonProcess(repo, env={"WATCHDOG_USEC": str(int(2 * period * 1e6))}) as d:
        # READY=1 (start() waited for it) with the model counts as STATUS=
        ready = d.messages.index("READY=1")
        assert d.messages[ready + 1] == "STATUS=models: 2 ready", d.messages
        assert d.http_get("/v2/health/ready") == b'{"ready":true}'  # ready means ready

        # WATCHDOG=1 at half of WATCHDOG_USEC
        times = [next_message(d, 5, skip_watchdog=False)[0] for _ in range(6)]
        gaps = np.diff(times)
        assert 0.5 * period < np.median(gaps) < 1.5 * period, gaps
        assert gaps.max() < 3 * period, gaps

        # SIGHUP: RELOADING=1 with MONOTONIC_USEC (our clock: CLOCK_MONOTONIC), then READY=1
        d.proc.send_signal(signal.SIGHUP)
        sent = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        _, lines = next_message(d, 10)
        assert lines[0] == "RELOADING=1", lines
        usec = int(re.fullmatch(r"MONOTONIC_USEC=(\d+)", lines[1]).group(1))
        assert abs(usec - sent) < 5_000_000
        _, lines = next_message(d, 30)
        assert lines == ["READY=1", "STATUS=models: 2 ready"], lines
        deadline = time.monotonic() + 10  # the log line is read by another thread
        while not d.events("reloaded"):
            assert time.monotonic() < deadline, "no reloaded event in the log"
            time.sleep(0.01)

        # SIGTERM with a request in flight: STOPPING=1, the request is answered, exit 0
        result: dict = {}
        client = threading.Thread(target=infer_held, args=(d.url, result))
        client.start()
        metrics = 'inferd_queue_rows{model="held",version="1"} 1.0'
        deadline = time.monotonic() + 10
        while metrics not in d.http_get("/metrics").decode():
            assert time.monotonic() < deadline, "the request never reached the queue"
            time.sleep(0.01)
        d.proc.send_signal(signal.SIGTERM)
        _, lines = next_message(d, 10)
        assert lines == ["STOPPING=1"]
        assert d.proc.wait(60) == 0
        client.join(60)
        assert result.get("status") == 200, result
        outputs = {o["name"]: o["data"] for o in result["body"]["outputs"]}
        assert outputs["OUTPUT0"] == [2 * i for i in range(16)]
        d._collector.join(10)
        assert d.events("draining")[0]["inflight"] == 1  # it was in flight when STOPPING=1 went out
        assert d.events("stopped")[0]["drained"] is True
        # Nothing after STOPPING=1 but keep-alives
        assert [m for m in d.messages[d.messages.index("STOPPING=1"):] if m != "WATCHDOG=1"] == ["STOPPING=1"]


HANG_ON_SIGUSR2 = Path(__file__).resolve().parents[1] / "hang_on_sigusr2.py"  # blocks the loop on SIGUSR2


def test_keep_alives_come_from_the_event_loop(repo):
    """With the loop blocked, WATCHDOG=1 stops although the process lives on: that is what
    lets systemd restart a hung daemon."""
    with DaemonProcess(repo, env={"WATCHDOG_USEC": "200000"}, program=[sys.executable, str(HANG_ON_SIGUSR2)]) as d:
        try:
            next_message(d, 5, skip_watchdog=False)
            d.proc.send_signal(signal.SIGUSR2)
            time.sleep(0.3)  # a keep-alive may have been on its way
            while True:
                d.notify.settimeout(0)
                try:
                    d.notify.recv(4096)
                except BlockingIOError:
                    break
            d.notify.settimeout(1.5)  # 15 periods
            with pytest.raises(TimeoutError):
                d.notify.recv(4096)
            assert d.proc.poll() is None  # alive, only its loop is stuck
        finally:
            d.proc.kill()  # SIGTERM cannot be handled by a blocked loop
            d.proc.wait()


def test_no_keep_alives_for_another_process(repo):
    """WATCHDOG_PID names the process systemd watches; any other process stays quiet."""
    with DaemonProcess(repo, env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}) as d:
        d.notify.settimeout(1.0)
        with pytest.raises(TimeoutError):
            while True:
                assert d.notify.recv(4096) != b"WATCHDOG=1"


# A stand-in for systemd's socket units: binds the listeners, moves them to fds 3, 4, ...,
# names them in LISTEN_FDNAMES and execs the daemon (so LISTEN_PID is the daemon's pid).
LAUNCHER = r"""
import json, os, socket, sys
spec, cmd = json.loads(sys.argv[1]), sys.argv[2:]
socks, names = [], []
for name, where in spec["sockets"]:
    if isinstance(where, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(where)
        os.chmod(where, 0o660)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
    s.listen(64)
    socks.append(s)
    names.append(name)
with open(spec["out"], "w") as f:  # what was bound, for the test
    json.dump([s.getsockname() for s in socks], f)
high = [os.dup(s.fileno()) for s in socks]  # out of the way of 3, 4, ... before moving them there
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)  # inheritable
pid = os.getpid() + (1 if spec.get("wrong_pid") else 0)
os.environ.update(LISTEN_PID=str(pid), LISTEN_FDS=str(len(socks)), LISTEN_FDNAMES=":".join(names))
os.execv(cmd[0], cmd)
"""


class ActivatedDaemon(DaemonProcess):
    """The daemon started through LAUNCHER; `bound` is what the launcher bound, in order."""

    def __init__(self, models: Path, sockets: list, *args: str, wrong_pid: bool = False):
        super().__init__(models, *args)
        self.spec = {"sockets": [[n, w.format(dir=self._notify_dir.name) if isinstance(w, str) else w]
                                 for n, w in sockets], "wrong_pid": wrong_pid,
                     "out": os.path.join(self._notify_dir.name, "bound.json")}
        self.bound: list = []

    def command(self) -> list[str]:
        return [sys.executable, "-c", LAUNCHER, json.dumps(self.spec)] + super().command()

    def start(self, timeout: float = 60) -> ActivatedDaemon:
        try:
            super().start(timeout)
            self.bound = json.loads(Path(self.spec["out"]).read_text())
        except BaseException:  # e.g. no HTTP listener: never leave the daemon running
            self.stop()
            raise
        return self


def listening(d: DaemonProcess) -> dict[str, dict]:
    return {e["frontend"]: e for e in d.events("listening")}


async def test_socket_activation_serves_on_the_sockets_handed_over(repo):
    sockets = [("http", 0), ("grpc", 0), ("socket", "{dir}/activated.sock"),
               ("http_socket", "{dir}/activated-http.sock"), ("bogus", 0)]
    # Every listener disabled in the config: whatever serves was handed over.
    d = ActivatedDaemon(repo, sockets, "--http", "", "--grpc", "", "--socket", "", "--http-socket", "")
    with d:
        http, grpc, unix, http_unix, _ = d.bound
        seen = listening(d)
        assert seen["http"]["address"] == f"127.0.0.1:{http[1]}" and seen["http"]["activated"] is True
        assert seen["grpc"]["address"] == f"127.0.0.1:{grpc[1]}" and seen["grpc"]["activated"] is True
        assert seen["socket"]["address"] == unix and seen["http_socket"]["address"] == http_unix
        assert [e["name"] for e in d.events("ignoring a socket passed by systemd with an unknown name")] == ["bogus"]

        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        with Client(url=d.url) as c:
            assert (c.infer("add_sub", {"INPUT0": a, "INPUT1": a})["OUTPUT0"] == 2 * a).all()
        with Client(socket=unix) as c:
            assert (c.infer("add_sub", {"INPUT0": a, "INPUT1": a})["OUTPUT1"] == 0).all()
        import tritonclient.grpc as grpcclient

        assert grpcclient.InferenceServerClient(f"127.0.0.1:{grpc[1]}").is_server_ready()
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=http_unix)) as s:
            async with s.get("http://inferd/v2/health/ready") as r:
                assert r.status == 200
        assert d.terminate() == 0


async def test_activated_socket_files_are_left_in_place(repo):
    d = ActivatedDaemon(repo, [("socket", "{dir}/activated.sock")], "--socket", "")
    with d:
        (unix,) = d.bound
        assert d.terminate() == 0
        assert listening(d)["socket"]["activated"] is True
        assert Path(unix).is_socket()  # not unlinked: systemd still listens on it


def test_sockets_for_another_process_are_not_taken(repo):
    """LISTEN_PID names the process the sockets are for; the daemon binds its own otherwise."""
    with ActivatedDaemon(repo, [("http", 0)], wrong_pid=True) as d:
        (http,) = d.bound
        seen = listening(d)
        assert seen["http"]["activated"] is False
        assert seen["http"]["address"] != f"127.0.0.1:{http[1]}"
        assert d.http_get("/v2/health/ready") == b'{"ready":true}'


@pytest.mark.skipif(__import__("importlib").util.find_spec("systemd") is not None,
                    reason="systemd-python is installed: the journal format is in use, not the fallback")
def test_journal_format_without_systemd_python_logs_json_lines(repo):
    with DaemonProcess(repo, "--log-format", "journal") as d:
        assert d.events("ready") and d.terminate() == 0


def descendants(pid: int) -> list[int]:
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    return children + [g for c in children for g in descendants(c)]


def test_no_process_the_daemon_starts_inherits_the_systemd_variables(repo):
    env = {"WATCHDOG_USEC": "10000000", "JOURNAL_STREAM": "0:0"}
    with DaemonProcess(repo, env=env) as d:
        with Client(url=d.url) as c:  # a worker is running
            c.infer("add_sub", {n: np.zeros((1, 16), np.int32) for n in ("INPUT0", "INPUT1")})
        started = descendants(d.proc.pid)
        assert started  # at least the workers
        for pid in started:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not [v for v in environ if v.split(b"=")[0] in (b"NOTIFY_SOCKET", b"WATCHDOG_USEC", b"WATCHDOG_PID")]
