"""A client that keeps a sequence going for ever cannot hold an old generation, or the daemon's
shutdown, beyond server.drain_timeout_s: when the budget is spent the sequence ends, its next
request is refused with the protocol's status, and the daemon serves (or stops) on time. A
request routed by a sequence id it does not hold still gets the usual errors."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
from daemon_process import DaemonProcess
from sequence_models import ints, write_python
from tritonclient.utils import InferenceServerException
from waiting import eventually

DRAIN_S = 2.0
ENV = {"INFERD_MODELS_SETTLE_MS": "100", "INFERD_DEFAULTS_MIN_WORKERS": "1", "INFERD_SERVER_DRAIN_TIMEOUT_S": str(DRAIN_S)}


def _client(d: DaemonProcess) -> grpcclient.InferenceServerClient:
    [event] = [e for e in d.events("listening") if e["frontend"] == "grpc"]
    return grpcclient.InferenceServerClient(event["address"])


def _infer(client, value, sid, start=False, parameters=None):
    x = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    x.set_data_from_numpy(ints(value))
    return int(client.infer("acc", [x], sequence_id=sid, sequence_start=start).as_numpy("OUTPUT")[0, 0])


BAD = [({"sequence_id": [9]}, "unsigned integer or a string"), ({"sequence_id": {"a": 1}}, "unsigned integer or a string"),
       ({"sequence_id": 1.5}, "unsigned integer or a string"), ({"sequence_id": True}, "unsigned integer or a string"),
       ({"sequence_id": "x" * 100_000}, "characters long"), ({"sequence_id": 9, "sequence_start": "true"}, "must be a boolean"),
       ({"sequence_id": 123457}, "must specify the START flag")]


def _post(d: DaemonProcess, parameters: dict) -> tuple[int, str]:
    body = {"inputs": [{"name": "INPUT", "datatype": "INT32", "shape": [1, 1], "data": [1]}], "parameters": parameters}
    request = urllib.request.Request(f"{d.url}/v2/models/acc/infer", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, ""
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["error"]


class KeepAlive(threading.Thread):
    """Sends a request of sequence `sid` every 0.2 s (well within its idle time) until refused."""

    def __init__(self, client, sid: int):
        super().__init__(daemon=True)
        self.client, self.sid, self.error, self.sent = client, sid, None, 0

    def run(self):
        try:
            while True:
                _infer(self.client, 1, self.sid)
                self.sent += 1
                time.sleep(0.2)
        except InferenceServerException as e:
            self.error = e


async def test_a_sequence_kept_alive_holds_the_old_generation_no_longer_than_the_drain_budget(tmp_path):
    write_python(tmp_path, "acc", "accumulate", corrid="TYPE_UINT64", extra="max_workers = 1", idle_us=30_000_000)
    with DaemonProcess(tmp_path, env=ENV) as d:
        client = _client(d)
        assert _infer(client, 1, 9, start=True) == 1
        keeper = KeepAlive(client, 9)
        keeper.start()
        model_py = tmp_path / "acc" / "1" / "model.py"
        model_py.write_text(model_py.read_text() + "\n# replaced\n")
        await eventually(lambda: len(d.events("model loaded")) == 2, 60, "the new generation")
        switched = time.monotonic()
        for parameters, words in BAD:  # while the old generation drains: its routing sees them first
            status, error = _post(d, parameters)
            assert status == 400 and words in error, (parameters, error)
        await eventually(lambda: keeper.error is not None, DRAIN_S + 10, "the kept sequence refused")
        assert time.monotonic() - switched < DRAIN_S + 5 and keeper.sent > 2
        assert keeper.error.status() == "StatusCode.INVALID_ARGUMENT"
        assert "must specify the START flag" in keeper.error.message()
        await eventually(lambda: [e for e in d.events("model state") if e["state"] == "UNLOADED"], 10, "unloaded")
        assert _infer(client, 4, 9, start=True) == 4  # the new generation serves it from a START
        with pytest.raises(InferenceServerException, match="must specify the START flag"):
            _infer(client, 1, 123456)
        client.close()


def test_a_sequence_kept_alive_does_not_hold_the_shutdown(tmp_path):
    write_python(tmp_path, "acc", "accumulate", corrid="TYPE_UINT64", extra="max_workers = 1", idle_us=30_000_000)
    with DaemonProcess(tmp_path, env=ENV) as d:
        client = _client(d)
        assert _infer(client, 1, 9, start=True) == 1
        keeper = KeepAlive(client, 9)
        keeper.start()
        time.sleep(0.5)
        began = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(DRAIN_S + 20) == 0
        assert time.monotonic() - began < DRAIN_S + 10
        keeper.join(10)
        assert keeper.error is not None and keeper.sent >= 2
        client.close()
