"""Sequence batching (stateful models, [sequence_batching]) through tritonclient's gRPC and
HTTP clients, with Triton's semantics: the simple_sequence examples' logic, state kept per
sequence on one worker, the control inputs the daemon fills in, the direct and oldest
strategies, idle sequences ending, and a worker's crash ending its sequences."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from sequence_models import ints, write_onnx_controls, write_python
from tritonclient.utils import InferenceServerException

from inferd.client import Client, InferdClientError

VALUES = [11, 7, 5, 3, 2, 0, 1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("sequences")
    write_python(root, "simple_sequence", "simple")
    write_python(root, "simple_dyna_sequence", "dyna", corrid="TYPE_UINT64")
    write_python(root, "simple_string_dyna_sequence", "accumulate", corrid="TYPE_STRING")
    write_python(root, "accumulate", "accumulate", corrid="TYPE_UINT64", extra="max_workers = 2")
    write_python(root, "crashing", "crash", corrid="TYPE_UINT64", extra="max_workers = 1")
    write_python(root, "short_idle", "accumulate", corrid="TYPE_UINT64", extra="max_workers = 1",
                 max_batch_size=1, idle_us=300_000)
    for strategy in ("direct", "oldest"):
        write_python(root, f"rows_{strategy}", "accumulate", corrid="TYPE_UINT64", extra="max_workers = 1",
                     strategy=strategy)
    write_onnx_controls(root, "controls_direct")
    write_onnx_controls(root, "controls_oldest", strategy="oldest")
    write_onnx_controls(root, "controls_unbatched", batching=False)
    make_plain(root)
    with DaemonProcess(root) as d:
        [event] = [e for e in d.events("listening") if e["frontend"] == "grpc"]
        yield d, event["address"], d.url.removeprefix("http://")


def make_plain(root):
    import make_models
    make_models.build_add_sub(root / "plain" / "1" / "model.onnx")


def clients(served):
    """A new gRPC and HTTP client (each thread its own: tritonclient.http's is not thread-safe)."""
    _, grpc_url, http_url = served
    return [grpcclient.InferenceServerClient(grpc_url), httpclient.InferenceServerClient(http_url, network_timeout=30)]


def infer(client, model, value, sid, start=False, end=False, output="OUTPUT"):
    mod = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    data = ints(value)[0] if model == "controls_unbatched" else ints(value)
    x = mod.InferInput("INPUT", list(data.shape), "INT32")
    x.set_data_from_numpy(data)
    timeout = {"client_timeout": 30} if mod is grpcclient else {}
    result = client.infer(model, [x], sequence_id=sid, sequence_start=start, sequence_end=end, **timeout)
    return int(result.as_numpy(output).ravel()[0])


def sync_send(client, model, values, sid):
    """The examples' sync_send: one request after another, START on the first, END on the last."""
    return [infer(client, model, v, sid, start=i == 0, end=i == len(values) - 1) for i, v in enumerate(values)]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_simple_sequence_examples_logic(served, protocol):
    client = clients(served)[0 if protocol == "grpc" else 1]
    offset = 10 if protocol == "http" else 0
    seq0 = sync_send(client, "simple_sequence", [0] + VALUES, 1000 + offset)
    seq1 = sync_send(client, "simple_sequence", [100] + [-v for v in VALUES], 1001 + offset)
    string0 = sync_send(client, "simple_sequence", [20] + [-v for v in VALUES], str(uuid.uuid4()))
    assert seq0 == [1] + VALUES
    assert seq1 == [101] + [-v for v in VALUES]
    assert string0 == [21] + [-v for v in VALUES]
    # --dyna: the correlation id is added on the END request; the string model accumulates.
    dyna0 = sync_send(client, "simple_dyna_sequence", [0] + VALUES, 1002 + offset)
    assert dyna0 == [1] + VALUES[:-1] + [VALUES[-1] + 1002 + offset]
    string = sync_send(client, "simple_string_dyna_sequence", [20] + [-v for v in VALUES], str(1003 + offset))
    assert string == list(np.cumsum([20] + [-v for v in VALUES])[:-1]) + [20 - sum(VALUES) + 1003 + offset]


def test_interleaved_sequences_keep_their_own_state_on_one_worker(served):
    results, errors = {}, []

    def run(sid, values):
        try:
            client = clients(served)[sid % 2]
            outs, pids = [], set()
            for i, v in enumerate(values):
                outs.append(infer(client, "accumulate", v, sid, start=i == 0))
                pids.add(infer(client, "accumulate", 0, sid, output="PID"))
            results[sid] = (outs, pids)
        except Exception as e:  # reported below
            errors.append(e)

    values = {sid: list(range(sid % 7, sid % 7 + 25)) for sid in range(5001, 5007)}
    threads = [threading.Thread(target=run, args=(sid, vals))
               for sid, vals in values.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for sid, vals in values.items():
        outs, pids = results[sid]
        assert outs == list(np.cumsum(vals)), sid
        assert len(pids) == 1, f"sequence {sid} ran on workers {pids}"


@pytest.mark.parametrize("model", ["controls_direct", "controls_oldest"])
def test_the_daemon_fills_the_control_inputs(served, model):
    client = clients(served)[0]
    assert infer(client, model, 5, 77, start=True) == 5 + 1000 + 10
    assert infer(client, model, 5, 78, start=True) == 5 + 1000 + 10
    assert infer(client, model, 6, 77) == 6 + 10
    assert infer(client, model, 7, 77, end=True) == 7 + 100 + 10
    assert infer(client, model, 1, 78, output="CORRID_OUT") == 78
    with pytest.raises(InferenceServerException, match="must specify the START flag"):
        infer(client, model, 1, 77)  # it ended
    infer(client, model, 1, 78, end=True)


@pytest.mark.parametrize("strategy", ["direct", "oldest"])
def test_direct_batches_carry_idle_slots_and_oldest_do_not(served, strategy):
    """Sequences 1 and 2 take slots 0 and 1; once 1 has ended, a request of sequence 2 runs
    alone under oldest, and beside an idle slot 0 (READY false) under direct."""
    client, model = clients(served)[0], f"rows_{strategy}"
    infer(client, model, 1, 61, start=True)
    infer(client, model, 2, 62, start=True)
    infer(client, model, 3, 61, end=True)
    assert infer(client, model, 4, 62, output="ROWS") == (2 if strategy == "direct" else 1)
    assert infer(client, model, 5, 62, end=True) == 2 + 4 + 5 + 62


def test_requests_of_one_sequence_sent_at_once_run_one_at_a_time(served):
    """Ten requests of one sequence in flight together: each runs alone (ROWS 1: never two of
    one sequence in a batch), each sees the state the previous left (distinct partial sums)."""
    client = httpclient.InferenceServerClient(served[2], concurrency=10, network_timeout=30)
    infer(client, "rows_direct", 100, 81, start=True)
    done = []
    for v in range(1, 11):
        x = httpclient.InferInput("INPUT", [1, 1], "INT32")
        x.set_data_from_numpy(ints(v))
        done.append(client.async_infer("rows_direct", [x], sequence_id=81))
    results = [d.get_result() for d in done]
    assert [int(r.as_numpy("ROWS")[0][0]) for r in results] == [1] * 10
    sums = sorted(int(r.as_numpy("OUTPUT")[0][0]) for r in results)
    assert len(set(sums)) == 10 and sums[-1] == 100 + 55
    infer(client, "rows_direct", 0, 81, end=True)


def test_a_model_without_a_batch_dimension_gets_controls_of_shape_1(served):
    """max_batch_size 0: one request a batch, controls shaped [1]; one worker, so one slot."""
    client = clients(served)[1]
    assert infer(client, "controls_unbatched", 5, 91, start=True) == 5 + 1000 + 10
    assert infer(client, "controls_unbatched", 6, 91) == 6 + 10
    assert infer(client, "controls_unbatched", 7, 91, end=True, output="CORRID_OUT") == 91


def test_start_on_a_running_sequence_restarts_it(served):
    client = clients(served)[1]
    assert infer(client, "accumulate", 5, 901, start=True) == 5
    assert infer(client, "accumulate", 5, 901) == 10
    assert infer(client, "accumulate", 3, 901, start=True) == 3
    assert infer(client, "accumulate", 1, 901, end=True) == 4 + 901


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_request_without_start_for_an_unknown_sequence_is_refused(served, protocol):
    client = clients(served)[0 if protocol == "grpc" else 1]
    with pytest.raises(InferenceServerException) as raised:
        infer(client, "accumulate", 1, 424242)
    assert "inference request for sequence 424242 to model 'accumulate' must specify the START flag" in raised.value.message()
    assert raised.value.status() in ("StatusCode.INVALID_ARGUMENT", "400")
    with pytest.raises(InferenceServerException, match="non-zero or non-empty correlation ID"):
        mod = grpcclient if protocol == "grpc" else httpclient
        x = mod.InferInput("INPUT", [1, 1], "INT32")
        x.set_data_from_numpy(ints(1))
        client.infer("accumulate", [x])


def test_an_idle_sequence_ends_and_frees_its_slot(served):
    """short_idle has one slot: a second sequence waits until the first is idle 0.3 s."""
    client = clients(served)[0]
    assert infer(client, "short_idle", 4, 1, start=True) == 4
    began = time.monotonic()
    assert infer(client, "short_idle", 6, 2, start=True) == 6  # waited for the slot
    assert time.monotonic() - began >= 0.25
    with pytest.raises(InferenceServerException, match="max_sequence_idle_us"):
        infer(client, "short_idle", 1, 1)
    time.sleep(0.4)


def test_a_request_waiting_for_a_slot_past_its_deadline_is_answered_then(served):
    client = clients(served)[0]
    assert infer(client, "short_idle", 4, 11, start=True) == 4  # holds the one slot for 0.3 s
    x = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    x.set_data_from_numpy(ints(1))
    began = time.monotonic()
    with pytest.raises(InferenceServerException) as raised:
        client.infer("short_idle", [x], sequence_id=12, sequence_start=True, client_timeout=0.1)
    assert raised.value.status() == "StatusCode.DEADLINE_EXCEEDED" and time.monotonic() - began < 0.25
    time.sleep(0.4)
    began = time.monotonic()  # sequence 12 never started, so it holds no slot: 13 runs at once
    assert infer(client, "short_idle", 5, 13, start=True, end=True) == 5 + 13
    assert time.monotonic() - began < 0.2
    with pytest.raises(InferenceServerException, match="left the queue before it got a slot"):
        infer(client, "short_idle", 1, 12)


def test_a_worker_crash_ends_its_sequences(served):
    client = clients(served)[0]
    assert infer(client, "crashing", 2, 31, start=True) == 2
    assert infer(client, "crashing", 3, 32, start=True) == 3
    with pytest.raises(InferenceServerException, match="sequence ended") as raised:
        infer(client, "crashing", 666, 31)
    assert raised.value.status() == "StatusCode.UNAVAILABLE"
    with pytest.raises(InferenceServerException, match="worker holding its state exited"):
        infer(client, "crashing", 1, 32)  # the other sequence on that worker ended too
    assert infer(client, "crashing", 7, 31, start=True) == 7  # a new worker serves it again
    assert infer(client, "crashing", 1, 31, end=True) == 8 + 31


def test_metadata_hides_the_controls_and_the_config_shows_sequence_batching(served):
    grpc_client, http_client = clients(served)
    meta = http_client.get_model_metadata("controls_oldest")
    assert [t["name"] for t in meta["inputs"]] == ["INPUT"]
    config = http_client.get_model_config("controls_oldest")
    assert "dynamic_batching" not in config
    sb = config["sequence_batching"]
    assert sb["max_sequence_idle_microseconds"] == 1_000_000
    assert sb["oldest"]["max_candidate_sequences"] == 0
    kinds = {c["name"]: c["control"][0] for c in sb["control_input"]}
    assert kinds["START"]["kind"] == "CONTROL_SEQUENCE_START" and kinds["START"]["int32_false_true"] == [0, 1]
    assert kinds["CORRID"]["data_type"] == "TYPE_UINT64"
    grpc_config = grpc_client.get_model_config("controls_direct").config
    assert grpc_config.sequence_batching.max_sequence_idle_microseconds == 1_000_000
    assert grpc_config.sequence_batching.HasField("direct")
    assert [c.name for c in grpc_config.sequence_batching.control_input] == ["START", "END", "READY", "CORRID"]


def test_a_plain_model_refuses_a_sequence_id(served):
    client = clients(served)[1]
    xs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for x in xs:
        x.set_data_from_numpy(np.zeros((1, 16), np.int32))
    with pytest.raises(InferenceServerException, match="does not batch sequences"):
        client.infer("plain", xs, sequence_id=5, sequence_start=True)
    assert client.infer("plain", xs).as_numpy("OUTPUT1").shape == (1, 16)


def test_inferds_client_sends_sequences_on_the_unix_socket_and_http(served):
    d = served[0]
    for sid, where in ((701, {"socket": d.socket_path}), (702, {"url": d.url})):
        with Client(**where) as client:
            _sequence_through(client, sid)


def _sequence_through(client, sid):
    assert client.infer("accumulate", {"INPUT": ints(3)}, sequence_id=sid, sequence_start=True)["OUTPUT"].tolist() == [[3]]
    assert client.infer("accumulate", {"INPUT": ints(4)}, sequence_id=sid)["OUTPUT"].tolist() == [[7]]
    end = client.infer("accumulate", {"INPUT": ints(1)}, sequence_id=sid, sequence_end=True)
    assert end["OUTPUT"].tolist() == [[8 + sid]]
    with pytest.raises(InferdClientError, match="must specify the START flag"):
        client.infer("accumulate", {"INPUT": ints(1)}, sequence_id=sid)
