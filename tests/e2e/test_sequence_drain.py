"""A stateful model's sequences while its generation drains, through tritonclient: a new file
for the model serves new sequences at once, while the sequences the old generation holds go on
there (their state is in its workers) until they end; during the daemon's shutdown, running
sequences go on and new ones are refused (Triton's words). Also: the idle time counts from a
request's arrival, and a request's deadline answers it while its sequence's batch runs."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from sequence_models import MODEL, ints, write_python
from tritonclient.utils import InferenceServerException
from waiting import eventually

FAST = {"INFERD_MODELS_SETTLE_MS": "100", "INFERD_DEFAULTS_MIN_WORKERS": "1"}
# The accumulate model, sleeping INPUT ms first when INPUT is negative (then adding nothing).
SLOW = MODEL.replace("    def infer(self, inputs):\n",
                     "    def infer(self, inputs):\n        import time\n"
                     "        time.sleep(max(0, -int(inputs['INPUT'].min())) / 1000)\n"
                     "        inputs = dict(inputs, INPUT=np.maximum(inputs['INPUT'], 0))\n")


def grpc_client(d: DaemonProcess) -> grpcclient.InferenceServerClient:
    [event] = [e for e in d.events("listening") if e["frontend"] == "grpc"]
    return grpcclient.InferenceServerClient(event["address"])


def infer(client, value: int, sid, start=False, end=False, model="acc", **kwargs) -> tuple[int, int]:
    """(OUTPUT, PID: the worker that ran it)."""
    mod = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    x = mod.InferInput("INPUT", [1, 1], "INT32")
    x.set_data_from_numpy(ints(value))
    result = client.infer(model, [x], sequence_id=sid, sequence_start=start, sequence_end=end, **kwargs)
    return int(result.as_numpy("OUTPUT")[0, 0]), int(result.as_numpy("PID")[0, 0])


def loads(d: DaemonProcess, model: str = "acc") -> int:
    return len([e for e in d.events("model loaded") if e["model"] == model])


def states(d: DaemonProcess, model: str = "acc") -> list[str]:
    return [e["state"] for e in d.events("model state") if e["model"] == model]


async def test_a_new_file_mid_sequence_leaves_running_sequences_on_the_old_generation(tmp_path):
    write_python(tmp_path, "acc", "accumulate", corrid="TYPE_UINT64", extra="max_workers = 1", idle_us=20_000_000)
    with DaemonProcess(tmp_path, env=FAST) as d:
        grpc, http = grpc_client(d), httpclient.InferenceServerClient(d.url.removeprefix("http://"))
        assert infer(grpc, 5, 1, start=True)[0] == 5
        old_pid = infer(http, 0, 2, start=True)[1]
        assert infer(grpc, 7, 3, start=True)[0] == 7
        model_py = tmp_path / "acc" / "1" / "model.py"
        model_py.write_text(model_py.read_text() + "\n# the second file\n")
        await eventually(lambda: loads(d) == 2, 60, "the new generation")
        # The running sequences keep their state, on the old generation's worker.
        assert infer(grpc, 3, 1) == (8, old_pid)
        assert infer(http, 4, 2) == (4, old_pid)
        # A new sequence starts on the new generation; so does one started again.
        out, new_pid = infer(grpc, 10, 4, start=True)
        assert out == 10 and new_pid != old_pid
        assert infer(http, 1, 3, start=True) == (1, new_pid)
        assert infer(http, 2, 3) == (3, new_pid)  # follows its restart, not the old state (7)
        assert "UNLOADING" in states(d)
        # The old generation stops once its sequences have ended, long before they would idle.
        ended = time.monotonic()
        assert infer(grpc, 1, 1, end=True) == (9 + 1, old_pid)
        assert infer(http, 1, 2, end=True) == (5 + 2, old_pid)
        await eventually(lambda: "UNLOADED" in states(d), 15, "the old generation unloaded")
        assert time.monotonic() - ended < 15
        with pytest.raises(InferenceServerException, match="must specify the START flag"):
            infer(grpc, 1, 1)  # it ended
        assert infer(grpc, 5, 4, end=True) == (15 + 4, new_pid)
        assert infer(grpc, 1, 3, end=True) == (4 + 3, new_pid)  # (an open sequence would hold the stop)
        grpc.close()
        http.close()


def test_sigterm_lets_running_sequences_finish_and_refuses_new_ones(tmp_path):
    write_python(tmp_path, "acc", "accumulate", corrid="TYPE_UINT64", extra="max_workers = 1", idle_us=20_000_000)
    with DaemonProcess(tmp_path, env=FAST) as d:
        grpc = grpc_client(d)
        assert infer(grpc, 5, 1, start=True)[0] == 5
        d.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not d.events("draining") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert d.events("draining")
        assert infer(grpc, 2, 1)[0] == 7  # a running sequence goes on
        # (its connection was told GOAWAY; gRPC keeps accepting while sequences run: it reconnected)
        assert d.events("gRPC connections told to go away")[0]["accepting"] is True
        with pytest.raises(InferenceServerException) as refused:
            infer(grpc, 1, 2, start=True)
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
        ended = time.monotonic()
        assert infer(grpc, 1, 1, end=True)[0] == 8 + 1
        assert d.proc.wait(15) == 0
        assert time.monotonic() - ended < 10  # not the 20 s its sequence could have idled
        grpc.close()


def test_idle_time_counts_from_the_last_request_arrival_and_deadlines_answer_running_requests(tmp_path):
    """Idle 1 s: a request that runs 1.5 s leaves its sequence idle past the limit when it is
    answered, so the next request is refused (Triton counts from arrival, not from answers). A
    request whose deadline passes while it runs is answered then; its sequence goes on."""
    write_python(tmp_path, "slow", "accumulate", corrid="TYPE_UINT64", extra="max_workers = 1", idle_us=1_000_000)
    (tmp_path / "slow" / "1" / "model.py").write_text(SLOW)
    with DaemonProcess(tmp_path) as d:
        grpc = grpc_client(d)
        assert infer(grpc, 5, 1, start=True, model="slow")[0] == 5
        assert infer(grpc, -1500, 1, model="slow")[0] == 5
        with pytest.raises(InferenceServerException, match="max_sequence_idle_us"):
            infer(grpc, 1, 1, model="slow")
        assert infer(grpc, 5, 2, start=True, model="slow")[0] == 5
        began = time.monotonic()
        http = httpclient.InferenceServerClient(d.url.removeprefix("http://"), network_timeout=30)
        with pytest.raises(InferenceServerException, match="while its batch was running") as late:
            infer(http, -800, 2, model="slow", timeout=300_000)  # the request's own timeout (us)
        assert late.value.status() == "504" and time.monotonic() - began < 0.7
        assert infer(grpc, 1, 2, end=True, model="slow")[0] == 6 + 2  # ran after the late one, in order
        grpc.close()
        http.close()


def test_an_unload_lets_running_sequences_finish_and_returns_when_they_have(tmp_path):
    write_python(tmp_path, "acc", "accumulate", corrid="TYPE_UINT64", extra="max_workers = 1", idle_us=20_000_000)
    with DaemonProcess(tmp_path, env=FAST) as d:
        grpc = grpc_client(d)
        assert infer(grpc, 5, 1, start=True)[0] == 5
        unloaded, other = [], grpc_client(d)
        unloading = threading.Thread(target=lambda: unloaded.append(other.unload_model("acc")))
        unloading.start()
        deadline = time.monotonic() + 30
        while "UNLOADING" not in states(d) and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(InferenceServerException, match="unknown model") as refused:
            infer(grpc, 1, 2, start=True)  # the model is gone for new sequences
        assert refused.value.status() == "StatusCode.NOT_FOUND"
        assert infer(grpc, 2, 1)[0] == 7  # the running one goes on
        assert not unloaded and unloading.is_alive()
        assert infer(grpc, 1, 1, end=True)[0] == 8 + 1
        unloading.join(15)
        assert unloaded == [None] and "UNLOADED" in states(d)
        grpc.close()
        other.close()


async def test_a_new_version_number_takes_new_sequences_while_the_old_version_finishes_its_own(tmp_path):
    write_python(tmp_path, "acc", "accumulate", corrid="TYPE_UINT64", extra="max_workers = 1", idle_us=20_000_000)
    with DaemonProcess(tmp_path, env=FAST) as d:
        grpc = grpc_client(d)
        out, old_pid = infer(grpc, 5, 1, start=True)
        (tmp_path / "acc" / "2").mkdir()
        (tmp_path / "acc" / "2" / "model.py").write_text((tmp_path / "acc" / "1" / "model.py").read_text())
        await eventually(lambda: loads(d) == 2, 60, "version 2")
        assert grpc.get_model_metadata("acc").versions == ["2"]
        assert infer(grpc, 3, 1) == (8, old_pid)  # unversioned, it goes where its state is: version 1
        result = grpc.infer("acc", [_input(1)], sequence_id=2, sequence_start=True)
        assert result.get_response().model_version == "2"
        grpc.infer("acc", [_input(1)], sequence_id=2, sequence_end=True)  # (an open sequence would hold the stop)
        assert infer(grpc, 1, 1, end=True) == (9 + 1, old_pid)
        await eventually(lambda: "UNLOADED" in states(d), 15, "version 1 unloaded")
        grpc.close()


def _input(value: int) -> grpcclient.InferInput:
    x = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    x.set_data_from_numpy(ints(value))
    return x
