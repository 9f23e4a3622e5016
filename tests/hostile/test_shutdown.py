"""SIGTERM while a batch is stuck in a model: the daemon exits within server.drain_timeout_s plus a
few seconds, and every caller, on every front-end, gets its protocol's "shutting down" answer
(HTTP 503, gRPC UNAVAILABLE, the socket's `unavailable`) on its connection: never a reset."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from daemon_process import DaemonProcess
from tritonclient.utils import InferenceServerException

from inferd.client import Client, InferdClientError

DRAIN_S = 2.0
STUCK = 7.0  # the input value that makes the model hang (warm-ups and probes send other values)

# Hangs far longer than any test, in the worker, on the sentinel input; notes each such batch.
STUCK_MODEL = '''
import time
import numpy as np

class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]

    def load(self, model_dir, config):
        self.marker = config["parameters"]["marker"]

    def infer(self, inputs):
        x = inputs["x"]
        if (x == STUCK).any():
            with open(self.marker, "a") as f:
                f.write(f"{len(x)}\\n")
            time.sleep(3600)
        return {"y": x}
'''.replace("STUCK", repr(STUCK))


def stuck_repo(root: Path) -> Path:
    (root / "stuck" / "1").mkdir(parents=True)
    (root / "stuck" / "1" / "model.py").write_text(STUCK_MODEL)
    # One worker; a batch waits up to 3 s for more rows, so that the three callers share it.
    (root / "stuck" / "config.toml").write_text(
        f'max_batch_size = 8\nmax_queue_delay_ms = 3000\n[parameters]\nmarker = "{root / "started"}"\n')
    return root


def grpc_address(d: DaemonProcess) -> str:
    [event] = [e for e in d.events("listening") if e["frontend"] == "grpc"]
    return event["address"]


def call_http(d: DaemonProcess, out: dict) -> None:
    host, port = d.address
    conn = http.client.HTTPConnection(host, port, timeout=120)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [STUCK]}]}
    try:
        conn.request("POST", "/v2/models/stuck/infer", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        out["http"] = (response.status, json.loads(response.read()).get("error", ""))
    except Exception as e:  # a reset or a dropped connection: what must not happen
        out["http"] = ("no answer", repr(e))
    finally:
        conn.close()


def call_grpc(d: DaemonProcess, out: dict) -> None:
    client = grpcclient.InferenceServerClient(grpc_address(d))
    tensor = grpcclient.InferInput("x", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.full((1, 1), STUCK, np.float32))
    try:
        client.infer("stuck", [tensor], client_timeout=120)
        out["grpc"] = ("answered", "")
    except InferenceServerException as e:
        out["grpc"] = (e.status(), e.message())
    finally:
        client.close()


def call_unix(d: DaemonProcess, out: dict) -> None:
    try:
        with Client(socket=d.socket_path, timeout=120) as c:
            c.infer("stuck", {"x": np.full((1, 1), STUCK, np.float32)})
        out["socket"] = ("answered", "")
    except InferdClientError as e:
        out["socket"] = (e.code, e.message)


def wait_for_stuck_batch(root: Path, rows: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    marker = root / "started"
    while sum(int(n) for n in (marker.read_text().split() if marker.exists() else [])) < rows:
        assert time.monotonic() < deadline, "the requests never reached the model"
        time.sleep(0.05)


def test_sigterm_with_a_stuck_batch_answers_every_front_end_and_exits_in_time(tmp_path):
    root = stuck_repo(tmp_path / "models")
    out: dict = {}
    with DaemonProcess(root, env={"INFERD_SERVER_DRAIN_TIMEOUT_S": str(DRAIN_S)}) as d:
        callers = [threading.Thread(target=call, args=(d, out)) for call in (call_http, call_grpc, call_unix)]
        for t in callers:
            t.start()
        wait_for_stuck_batch(root, 3)
        sent = time.monotonic()
        try:
            code = d.terminate(timeout=DRAIN_S + 30)
        except Exception:
            d.proc.kill()
            raise AssertionError("the daemon did not exit after SIGTERM") from None
        took = time.monotonic() - sent
        for t in callers:
            t.join(30)
        assert code == 0
        assert took < DRAIN_S + 10, f"exit took {took:.1f} s"
        assert out["http"][0] == 503 and "shutting down" in out["http"][1], out
        assert out["grpc"][0] == "StatusCode.UNAVAILABLE" and "shutting down" in out["grpc"][1], out
        assert out["socket"] == ("unavailable", "the server is shutting down"), out
        assert d.events("stopped")[0]["drained"] is False
        # The stuck worker is killed after every caller was answered: nothing is run again.
        assert not d.events("a worker died running a batch; running it again")


def test_sigterm_answers_an_awaited_load_on_the_socket(tmp_path):
    """A repository call still running at shutdown is answered too (here: a load of a model
    whose load hangs in its worker)."""
    root = stuck_repo(tmp_path / "models")
    out: dict = {}
    with DaemonProcess(root, env={"INFERD_SERVER_DRAIN_TIMEOUT_S": str(DRAIN_S), "INFERD_MODELS_CONTROL": "explicit"}) as d:
        hanging = root / "hanging" / "1"  # added after the start: only the load below loads it
        hanging.mkdir(parents=True)
        hanging.joinpath("model.py").write_text(
            "import time\n\nclass Model:\n    inputs = [{'name': 'x', 'datatype': 'FP32', 'shape': [-1]}]\n"
            "    outputs = [{'name': 'y', 'datatype': 'FP32', 'shape': [-1]}]\n\n"
            "    def load(self, model_dir, config):\n        time.sleep(3600)\n\n"
            "    def infer(self, inputs):\n        return {'y': inputs['x']}\n")

        def load() -> None:
            try:
                with Client(socket=d.socket_path, timeout=120) as c:
                    c.load("hanging")
                out["load"] = ("answered", "")
            except InferdClientError as e:
                out["load"] = (e.code, e.message)

        caller = threading.Thread(target=load)
        caller.start()
        deadline = time.monotonic() + 30
        while not [e for e in d.events("model state") if e.get("model") == "hanging"]:
            assert time.monotonic() < deadline, "the load never started"
            time.sleep(0.05)
        sent = time.monotonic()
        code = d.terminate(timeout=DRAIN_S + 30)
        took = time.monotonic() - sent
        caller.join(30)
        assert code == 0 and took < DRAIN_S + 10, (code, took)
        assert out["load"] == ("unavailable", "the server is shutting down"), out
