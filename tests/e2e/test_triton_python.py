"""Triton's python_backend examples (tests/triton_python_examples/, unchanged) served by the
daemon and checked by their own clients, run as subprocesses against the daemon's addresses
(tests/triton_python_layout.py). Each passes when its client exits 0 and prints its PASS line.
auto_complete's models have no config.pbtxt: they say their configuration in
auto_complete_config. custom_metrics' client reads Triton's metrics port: inferd's /metrics is
on its HTTP port."""

from __future__ import annotations

import subprocess
import sys

import pytest
from daemon_process import DaemonProcess
from triton_python_layout import client, lay_out


def grpc_address(daemon: DaemonProcess) -> str:
    [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    return event["address"]


def run_client(daemon: DaemonProcess, tmp_path, script: str) -> subprocess.CompletedProcess:
    http = daemon.url.removeprefix("http://")  # (inferd's /metrics is on its HTTP port)
    copy = client(tmp_path, script, http, grpc_address(daemon), metrics=http)
    return subprocess.run([sys.executable, str(copy)], capture_output=True, text=True, timeout=120, cwd=tmp_path)


def check(done: subprocess.CompletedProcess, expect: str) -> None:
    output = f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, output
    assert expect in done.stdout, output


def served(tmp_path, example: str) -> DaemonProcess:
    root = lay_out([example], tmp_path / "models")
    subprocess.run(["chmod", "-R", "go-w", str(root)], check=True)
    return DaemonProcess(root)


def test_auto_complete(tmp_path):
    """Neither model has a config.pbtxt: auto_complete_config gives their tensors and
    max_batch_size (4 and 0), which the model configuration endpoint shows."""
    with served(tmp_path, "auto_complete") as daemon:
        check(run_client(daemon, tmp_path, "auto_complete/client.py"), "PASS: auto_complete")
        config = daemon.http_json("/v2/models/batch_auto_complete/config")
        assert config["max_batch_size"] == 4
        assert [t["dims"] for t in config["input"]] == [[4], [4]]


def infer_json(daemon: DaemonProcess, model: str, body: dict) -> tuple[int, dict]:
    return daemon.post_json(f"/v2/models/{model}/infer", body)


def fp32(name: str, values: list, shape: list) -> dict:
    return {"name": name, "datatype": "FP32", "shape": shape, "data": values}


def test_auto_complete_models_answer(tmp_path):
    """The auto-completed models run: the batching one on a batch of two rows, the other on one."""
    with served(tmp_path, "auto_complete") as daemon:
        a, b = [1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]
        status, body = infer_json(daemon, "batch_auto_complete",
                                  {"inputs": [fp32("INPUT0", a + a, [2, 4]), fp32("INPUT1", b + b, [2, 4])]})
        assert status == 200, body
        outputs = {o["name"]: o for o in body["outputs"]}
        assert outputs["OUTPUT0"]["shape"] == [2, 4]
        assert outputs["OUTPUT0"]["data"] == [x + y for x, y in zip(a + a, b + b)]
        status, body = infer_json(daemon, "nobatch_auto_complete", {"inputs": [fp32("INPUT0", a, [4]), fp32("INPUT1", b, [4])]})
        assert status == 200, body
        assert {o["name"]: o["data"] for o in body["outputs"]}["OUTPUT1"] == [x - y for x, y in zip(a, b)]
        assert daemon.terminate() == 0
    # finalize() ran as each worker stopped: what it printed is the worker's log event
    finalized = [e["model"] for e in daemon.events("model output") if e.get("line") == "Cleaning up..."]
    assert {"batch_auto_complete", "nobatch_auto_complete"} <= set(finalized)


@pytest.mark.parametrize(("example", "script", "expect"), [
    ("add_sub", "add_sub/client.py", "PASS: add_sub"),
    ("pytorch", "pytorch/client.py", "PASS: pytorch"),
    ("decoupled", "decoupled/repeat_client.py", "PASS: repeat_int32"),
    ("decoupled", "decoupled/square_client.py", "PASS: square_int32"),
    ("bls", "bls/sync_client.py", "PASS: BLS Sync"),
    ("bls", "bls/async_client.py", "PASS: BLS Async"),
    ("bls_decoupled", "bls_decoupled/sync_client.py", "PASS: BLS Decoupled Sync"),
    ("bls_decoupled", "bls_decoupled/async_client.py", "PASS: BLS Decoupled Async"),
    ("custom_metrics", "custom_metrics/client.py", "PASS: custom_metrics"),
])
def test_example(tmp_path, example, script, expect):
    with served(tmp_path, example) as daemon:
        check(run_client(daemon, tmp_path, script), expect)


def test_concurrent_callers_of_a_batching_model_each_get_their_own_rows(tmp_path):
    """batch_auto_complete (max_batch_size 4) under 12 concurrent callers of 1 or 2 rows: however
    the daemon batches them, each caller gets the sums of its own rows."""
    from concurrent.futures import ThreadPoolExecutor

    def call(i: int) -> tuple[int, list, dict]:
        rows = 1 + i % 2
        a = [float(i)] * 4 * rows
        status, body = infer_json(daemon, "batch_auto_complete",
                                  {"inputs": [fp32("INPUT0", a, [rows, 4]), fp32("INPUT1", a, [rows, 4])]})
        return status, [2.0 * x for x in a], body

    with served(tmp_path, "auto_complete") as daemon, ThreadPoolExecutor(12) as pool:
        for status, want, body in pool.map(call, range(12)):
            assert status == 200, body
            assert {o["name"]: o["data"] for o in body["outputs"]}["OUTPUT0"] == want
