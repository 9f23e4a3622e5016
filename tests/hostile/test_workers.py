"""Hostile and careless models against the real daemon: an infer that never returns, a stopped
worker, a model that forks and exits, subprocesses that would outlive their worker, a model
that prints without end, code that fails, a warm-up that cannot produce the declared outputs.
Real workers, real signals, real clients on every protocol."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from daemon_process import DaemonProcess
from tritonclient.utils import InferenceServerException
from waiting import eventually

from inferd.backends import output
from inferd.client import AsyncClient, Client, InferdClientError

TENSORS = '''
    inputs = [{"name": "x", "datatype": "INT64", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "INT64", "shape": [-1]}]
'''

# x == 1: infer never returns; x == 2: it takes 2 s; otherwise y = 2x (zeros too: the warm-up passes).
STUCK = '''
import time

class Model:
''' + TENSORS + '''
    def infer(self, inputs):
        x = inputs["x"]
        if (x == 1).any():
            print("stuck in infer")
        while (x == 1).any():
            time.sleep(0.05)
        if (x == 2).any():
            time.sleep(2)
        return {"y": x * 2}
'''

# x == 1: forks a child that lives on (holding the worker's socket), and the worker exits.
FORKS_AND_EXITS = '''
import os, time

class Model:
''' + TENSORS + '''
    def load(self, model_dir, config):
        self.children = model_dir / "children"

    def infer(self, inputs):
        x = inputs["x"]
        if (x == 1).any():
            pid = os.fork()
            if pid == 0:
                time.sleep(300)
                os._exit(0)
            with open(self.children, "a") as f:
                f.write(f"{pid}\\n")
            os._exit(7)
        return {"y": x * 2}
'''

# Starts a long-lived helper process when it loads, as a model with a server of its own would.
SPAWNS = '''
import subprocess

class Model:
''' + TENSORS + '''
    def load(self, model_dir, config):
        self.helper = subprocess.Popen(["sleep", "300"])
        with open(model_dir / "children", "a") as f:
            f.write(f"{self.helper.pid}\\n")

    def infer(self, inputs):
        return {"y": inputs["x"] * 2}
'''

# Prints far more than a log should take: long lines, many lines, on both streams and from C.
CHATTY = '''
import os, sys

class Model:
''' + TENSORS + '''
    def infer(self, inputs):
        if (inputs["x"] == 4).any():
            print("chatty-warning: one line", file=sys.stderr)
        if (inputs["x"] == 5).any():
            print("chatty-long " + "x" * 100_000)
            for i in range(3000):
                print("chatty-line", i)
                print("chatty-err", i, file=sys.stderr)
            os.write(1, b"chatty-raw from fd 1\\n")
        return {"y": inputs["x"] * 2}
'''

# Fails in a helper function of its own, with a server path in its message.
FAILS = '''
def check(x):
    if (x == 13).any():
        raise ValueError(f"13 is unlucky (see {__file__})")

class Model:
''' + TENSORS + '''
    def infer(self, inputs):
        check(inputs["x"])
        return {"y": inputs["x"] * 2}
'''

# Cannot load: a file it needs is missing (the error names it by its absolute path).
MISSING_FILE = '''
class Model:
''' + TENSORS + '''
    def load(self, model_dir, config):
        self.weights = (model_dir / "weights.bin").read_bytes()

    def infer(self, inputs):
        return {"y": inputs["x"]}
'''

# Runs, but never returns the output it declares.
WRONG_OUTPUTS = '''
class Model:
''' + TENSORS + '''
    def infer(self, inputs):
        return {"z": inputs["x"]}
'''


def place(root: Path, name: str, code: str, config: str = "") -> Path:
    """models/<name>/1/model.py and models/<name>/config.toml; returns the model's directory."""
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.py").write_text(code)
    (root / name / "config.toml").write_text(config)
    return root / name




def alive(pid: int) -> bool:
    """Running (a reaped or zombie process is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def workers(d: DaemonProcess, model: str) -> set[int]:
    """The running workers of `model`, from the daemon's log."""
    pids = {e["pid"] for e in d.events("scaled up") if e["model"] == model}
    pids |= {p for e in d.events("model loaded") if e["model"] == model for p in e["pids"]}
    return {p for p in pids if alive(p)}


def children(directory: Path) -> list[int]:
    path = directory / "children"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


X = {"x": np.array([3], np.int64)}
HANGS = {"x": np.array([1], np.int64)}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    one_worker = "min_workers = 1\nmax_workers = 1\n"
    place(root, "stuck", STUCK, one_worker + "execution_timeout_s = 1.5\n")
    place(root, "stoppable", STUCK, one_worker + "execution_timeout_s = 1.5\n")
    # Two requests make a full batch; one alone waits a second for the other.
    place(root, "slow", STUCK, "min_workers = 1\nmax_workers = 1\nmax_queue_delay_ms = 1000\nmax_batch_size = 2\n")
    place(root, "chatty", CHATTY, one_worker)
    place(root, "fails", FAILS, one_worker)
    place(root, "wrong", WRONG_OUTPUTS, one_worker)
    place(root, "missing", MISSING_FILE, one_worker)
    with DaemonProcess(root) as d:
        d.root = root
        yield d


def replaced(d: DaemonProcess, model: str, old: set[int]) -> set[int] | None:
    now = workers(d, model)
    return now if now and not now & old else None


async def test_a_never_returning_infer_is_deadline_exceeded_on_every_protocol(daemon):
    d = daemon
    [grpc_address] = [e["address"] for e in d.events("listening") if e["frontend"] == "grpc"]
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]}

    async def over_http():
        async with aiohttp.ClientSession(d.url, timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.post("/v2/models/stuck/infer", json=body) as response:
                return response.status, (await response.json())["error"]

    def over_grpc():
        client = grpcclient.InferenceServerClient(grpc_address)
        tensor = grpcclient.InferInput("x", [1], "INT64")
        tensor.set_data_from_numpy(HANGS["x"])
        try:
            client.infer("stuck", [tensor], client_timeout=30)
        except InferenceServerException as e:
            return e.status(), e.message()
        finally:
            client.close()
        return "OK", ""

    def over_the_socket():
        with Client(socket=d.socket_path, timeout=30) as client:
            try:
                client.infer("stuck", HANGS)
            except InferdClientError as e:
                return e.code, e.message
        return "ok", ""

    calls = [("http", over_http, 504), ("grpc", lambda: asyncio.to_thread(over_grpc), "StatusCode.DEADLINE_EXCEEDED"),
             ("unix", lambda: asyncio.to_thread(over_the_socket), "deadline_exceeded")]
    for protocol, call, expected in calls:
        before = workers(d, "stuck")
        status, message = await call()
        assert status == expected, (protocol, status, message)
        assert "execution_timeout_s (1.5 s)" in message, (protocol, message)
        assert "Traceback" not in message and str(d.root) not in message
        await eventually(lambda old=before: not any(alive(p) for p in old), 10, f"the stuck worker killed ({protocol})")
        await eventually(lambda old=before: replaced(d, "stuck", old), 30, f"a replacement worker ({protocol})")
        with Client(socket=d.socket_path, timeout=30) as client:
            assert client.infer("stuck", X)["y"].tolist() == [6]  # serving again
    assert len([e for e in d.events("batch timed out; killing its worker") if e["model"] == "stuck"]) == 3
    exits = [line for line in d.http_get("/metrics").decode().splitlines()
             if line.startswith("inferd_worker_exits_total{") and 'model="stuck"' in line]
    assert [line.rsplit(" ", 1)[1] for line in exits if 'cause="timeout"' in line] == ["3.0"], exits


async def test_a_stopped_worker_is_killed_and_replaced(daemon):
    d = daemon
    [pid] = workers(d, "stoppable")
    assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "1000"  # the OOM killer's first choice
    assert Path(f"/proc/{d.proc.pid}/oom_score_adj").read_text().strip() != "1000"
    os.kill(pid, signal.SIGSTOP)
    with Client(socket=d.socket_path, timeout=30) as client:
        with pytest.raises(InferdClientError) as e:
            client.infer("stoppable", X)
        assert e.value.code == "deadline_exceeded"
        await eventually(lambda: not alive(pid), 30, "the stopped worker to be killed")
        await eventually(lambda: replaced(d, "stoppable", {pid}), 30, "a replacement worker")
        assert client.infer("stoppable", X)["y"].tolist() == [6]


async def test_a_request_deadline_bounds_its_wait_while_its_batch_runs(daemon):
    """Two requests in one 2 s batch: the one with a 0.5 s deadline is answered at its deadline;
    the other still gets its outputs."""
    d = daemon
    finished: list[str] = []
    async with AsyncClient(socket=d.socket_path, timeout=30) as client:
        async def ask(name, **kwargs):
            try:
                return await client.infer("slow", {"x": np.array([2], np.int64)}, **kwargs)
            except InferdClientError as e:
                return e
            finally:
                finished.append(name)

        hasty, patient = await asyncio.gather(ask("hasty", timeout_ms=500), ask("patient"))
    assert isinstance(hasty, InferdClientError) and hasty.code == "deadline_exceeded"
    assert "while its batch was running" in hasty.message
    assert patient["y"].tolist() == [4]
    assert finished == ["hasty", "patient"]
    assert not [e for e in d.events("batch timed out; killing its worker") if e["model"] == "slow"]


async def test_model_output_becomes_bounded_log_events(daemon):
    d = daemon
    [pid] = workers(d, "chatty")
    with Client(socket=d.socket_path, timeout=30) as client:
        assert client.infer("chatty", {"x": np.array([4], np.int64)})["y"].tolist() == [8]
        [warning] = await eventually(lambda: [e for e in d.events("model output") if e["line"].startswith("chatty-w")],
                                     30, "the model's line on stderr")
        assert (warning["model"], warning["version"], warning["pid"], warning["stream"]) == ("chatty", "1", pid, "stderr")
        assert client.infer("chatty", {"x": np.array([5], np.int64)})["y"].tolist() == [10]
    printed = 1 + 2 * 3000 + 2  # and each is either logged or counted as dropped

    def accounted():
        lines = [e for e in d.events("model output") if e["pid"] == pid and e["line"].startswith("chatty")]
        dropped = sum(e["lines"] for e in d.events("model output dropped") if e["pid"] == pid)
        return lines if len(lines) + dropped >= printed else None

    lines = await eventually(accounted, 30, "every printed line logged or counted")
    assert {e["model"] for e in lines} == {"chatty"} and {e["version"] for e in lines} == {"1"}
    assert len(lines) < 1000  # bounded: a burst, then a rate (far below the 6,002 printed)
    [long] = [e for e in lines if e["line"].startswith("chatty-long")]
    assert long["truncated"] and len(long["line"]) == output.MAX_LINE_BYTES
    assert not [line for line in d.lines if "chatty-" in line and not line.startswith("{")]  # no raw writes


async def test_a_model_failure_logs_its_traceback_and_the_caller_gets_no_internals(daemon):
    d = daemon
    with Client(socket=d.socket_path, timeout=30) as client:
        with pytest.raises(InferdClientError) as e:
            client.infer("fails", {"x": np.array([13], np.int64)})
    assert e.value.code == "internal" and "ValueError: 13 is unlucky (see model.py)" in e.value.message
    assert str(d.root) not in e.value.message and "Traceback" not in e.value.message
    [event] = await eventually(lambda: [e for e in d.events("batch failed") if e.get("model") == "fails"], 30, "the log")
    assert 'model.py", line 4, in check' in event["exception"]  # the author's own line


async def test_a_failed_load_names_the_file_without_its_path_and_logs_the_authors_line(daemon):
    d = daemon
    with Client(socket=d.socket_path, timeout=30) as client:
        [row] = [r for r in client.models() if r["name"] == "missing"]
    assert row["state"] == "FAILED" and "No such file or directory: 'weights.bin'" in row["reason"]
    assert str(d.root) not in row["reason"]
    [event] = await eventually(lambda: [e for e in d.events("model load failed") if e.get("model") == "missing"], 30,
                               "the log")
    assert str(d.root / "missing" / "weights.bin") in event["reason"]  # the operator's log has the path
    assert 'model.py", line 8, in load' in event["exception"]


def test_a_warm_up_without_the_declared_outputs_is_failed_with_the_reason(daemon):
    with Client(socket=daemon.socket_path, timeout=30) as client:
        [row] = [r for r in client.models() if r["name"] == "wrong"]
    assert row["state"] == "FAILED"
    assert "warm-up" in row["reason"] and "did not return output 'y'" in row["reason"]


async def test_a_model_that_forks_and_exits_is_answered_at_once_and_its_child_killed(tmp_path):
    directory = place(tmp_path, "forks", FORKS_AND_EXITS, "min_workers = 1\nmax_workers = 1\n")
    with DaemonProcess(tmp_path) as d, Client(socket=d.socket_path, timeout=30) as client:
        with pytest.raises(InferdClientError) as e:
            client.infer("forks", HANGS)  # the forked child holds the worker's socket open
        assert e.value.code == "unavailable"
        assert "worker process exited (exit code 7)" in e.value.message and "cold start" not in e.value.message
        [first, *_] = children(directory)
        await eventually(lambda: not any(alive(p) for p in children(directory)), 30, "the forked children to die")
        await eventually(lambda: workers(d, "forks"), 30, "a replacement worker")
        assert client.infer("forks", X)["y"].tolist() == [6]
        assert first > 0


async def test_a_models_subprocesses_die_on_unload_and_on_daemon_stop(tmp_path):
    directory = place(tmp_path, "spawns", SPAWNS, "min_workers = 1\n")
    with DaemonProcess(tmp_path) as d, Client(socket=d.socket_path, timeout=30) as client:
        [helper] = children(directory)
        assert alive(helper)
        client.unload("spawns")
        await eventually(lambda: not alive(helper), 10, "the model's subprocess to die on unload")
        client.load("spawns")
        [_, second] = await eventually(lambda: len(children(directory)) == 2 and children(directory), 30, "a reload")
        assert alive(second)
        assert d.terminate() == 0
    assert not alive(second)


def test_log_lines_of_a_worker_are_json(daemon):
    """The worker's own events still reach the daemon's log as JSON lines (through a copy of
    its stderr, now that fd 2 is the model's pipe)."""
    settled = [json.loads(line) for line in daemon.lines if '"gc settled"' in line]
    assert {e["model"] for e in settled} >= {"stuck", "chatty", "fails"}


async def test_a_stuck_worker_dies_with_a_daemon_killed_by_sigkill(tmp_path):
    place(tmp_path, "stuck", STUCK, "min_workers = 1\nmax_workers = 1\n")
    with DaemonProcess(tmp_path) as d:
        [pid] = workers(d, "stuck")
        async with AsyncClient(socket=d.socket_path, timeout=30) as client:
            call = asyncio.create_task(client.infer("stuck", HANGS))
            await eventually(lambda: [e for e in d.events("model output") if e["line"] == "stuck in infer"], 30,
                             "the worker to be stuck in infer")
            d.proc.kill()  # no drain, no STOP: the worker never reads its socket again
            with pytest.raises(InferdClientError):
                await call
        await eventually(lambda: not alive(pid), 10, "the stuck worker to die with the daemon")
