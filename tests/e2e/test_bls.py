"""A model calling other models of its daemon (Triton's BLS, inferd.backends.triton.bls), end to
end: real daemons, real workers, calls through the daemon's Unix socket, queued and batched with
the callee's direct traffic; errors with Triton's codes and the daemon's messages."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from bls_models import bls_models
from daemon_process import DaemonProcess

from inferd.client import Client

GATHERED_ROWS = 4  # `gathered` runs only full batches of this many rows


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The file whose creation lets `slow` answer (outside the models directory, which is watched)."""
    return tmp_path_factory.mktemp("slow") / "release"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, release):
    with DaemonProcess(bls_models(tmp_path_factory.mktemp("models"), release, GATHERED_ROWS)) as d:
        yield d


def call(where: dict, mode: str, model: str, x=(1.0,), text=(b"",)) -> dict[str, np.ndarray]:
    """One request to `caller`, which calls `model` as `mode` says."""
    with Client(**where) as c:
        return c.infer("caller", {"mode": np.array([mode], object), "model": np.array([model], object),
                                  "x": np.asarray(x, np.float32), "text": np.array(list(text), object)})


def error_of(answer: dict) -> tuple[str, str]:
    return answer["code"][0].decode(), answer["message"][0].decode()


def test_a_model_calls_another_and_gets_its_outputs(daemon):
    answer = call({"socket": daemon.socket_path}, "infer", "double", x=[1.5, -2.0, 4.0])
    assert error_of(answer) == ("", "")
    np.testing.assert_array_equal(answer["y"], np.array([3.0, -4.0, 8.0], np.float32))
    assert answer["rows"].tolist() == [3, 3, 3]  # the caller's three rows, as one request of the callee


def test_bytes_tensors_round_trip(daemon):
    texts = [b"hello", b"", "ünïcode".encode(), b"\x00\xff binary"]
    answer = call({"socket": daemon.socket_path}, "bytes", "shout", text=texts)
    assert error_of(answer) == ("", "")
    assert answer["text"].tolist() == [t.upper() + b"!" for t in texts]


def test_async_calls_from_an_event_loop(daemon):
    answer = call({"socket": daemon.socket_path}, "async", "double", x=[1.0, 2.0])
    assert error_of(answer) == ("", "")
    np.testing.assert_array_equal(answer["y"], np.array([2, 4, 4, 6, 6, 8], np.float32))


@pytest.mark.parametrize("mode", ["stream", "async_stream"])
def test_a_decoupled_model_streams_its_responses(daemon, mode):
    answer = call({"socket": daemon.socket_path}, mode, "upto", x=[5.0])
    assert error_of(answer) == ("", "")
    assert answer["y"].tolist() == [0, 1, 2, 3, 4]


def test_a_stream_of_an_ordinary_model_is_its_one_response(daemon):
    answer = call({"socket": daemon.socket_path}, "stream", "double", x=[21.0])
    assert error_of(answer) == ("", "")
    assert answer["y"].tolist() == [42.0]


def test_a_stream_left_early_stops_and_the_next_call_is_served(daemon):
    """The caller takes upto's first response of 1,000 and leaves (its connection closes, which
    stops upto's run), then calls double: a new connection serves it."""
    answer = call({"socket": daemon.socket_path}, "stream_first", "upto", x=[1000.0])
    assert error_of(answer) == ("", "")
    assert answer["y"].tolist() == [0.0, 2000.0]


def test_request_parameters_are_sent(daemon):
    answer = call({"socket": daemon.socket_path}, "params", "double", x=[2.0])
    assert error_of(answer) == ("", "") and answer["y"].tolist() == [4.0]
    code, message = error_of(call({"socket": daemon.socket_path}, "params", "double", text=[b"bad"]))
    assert code == "INVALID_ARG" and "request parameter 'bad'" in message


def test_calls_batch_with_the_callees_direct_traffic(daemon):
    """Three callers' BLS calls (each one row, from caller's three workers) and one client's
    direct request fill `gathered`'s one batch of four rows: it runs only full batches, so all
    four answers come from that batch, and its statistics count one execution of four."""
    stats = daemon.http_json("/v2/models/gathered/stats")["model_stats"][0]
    before = stats["inference_count"], stats["execution_count"]
    answers: dict[str, dict] = {}

    def run(key: str, fn) -> None:
        answers[key] = fn()

    threads = [threading.Thread(target=run, args=(f"bls{i}", lambda i=i: call(
        {"socket": daemon.socket_path}, "infer", "gathered", x=[float(i)]))) for i in range(GATHERED_ROWS - 1)]
    direct = Client(socket=daemon.socket_path)
    threads.append(threading.Thread(target=run, args=("direct", lambda: direct.infer("gathered", {"x": np.array([10.0], np.float32)}))))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    direct.close()
    assert sorted(answers) == ["bls0", "bls1", "bls2", "direct"]
    for i in range(GATHERED_ROWS - 1):
        assert error_of(answers[f"bls{i}"]) == ("", "")
        assert answers[f"bls{i}"]["y"].tolist() == [2.0 * i]
        assert answers[f"bls{i}"]["rows"].tolist() == [GATHERED_ROWS]
    assert answers["direct"]["y"].tolist() == [20.0] and answers["direct"]["rows"].tolist() == [GATHERED_ROWS]
    stats = daemon.http_json("/v2/models/gathered/stats")["model_stats"][0]
    assert (stats["inference_count"] - before[0], stats["execution_count"] - before[1]) == (GATHERED_ROWS, 1)


def test_an_unknown_model_is_not_found(daemon):
    code, message = error_of(call({"socket": daemon.socket_path}, "infer", "nonexistent"))
    assert code == "NOT_FOUND" and "nonexistent" in message


def test_the_callees_failure_reaches_the_caller(daemon):
    code, message = error_of(call({"socket": daemon.socket_path}, "infer", "broken", x=[13.0]))
    assert code == "INTERNAL"
    assert "ValueError: 13 is unlucky" in message


def test_a_request_the_callee_refuses_is_invalid_arg(daemon):
    code, message = error_of(call({"socket": daemon.socket_path}, "bytes", "double", text=[b"x"]))
    assert code == "INVALID_ARG" and "x" in message  # double's input x is missing
    code, message = error_of(call({"socket": daemon.socket_path}, "infer", "upto", x=[2.0]))
    assert code == "INVALID_ARG" and "decoupled" in message  # a decoupled model must be streamed
    code, message = error_of(call({"socket": daemon.socket_path}, "bad_inputs", "double"))
    assert code == "INVALID_ARG" and "'x'" in message  # never sent


def test_a_call_past_its_timeout_is_unavailable(daemon, release):
    """`slow` holds x = 1 until released: the call's 0.2 s timeout answers it, UNAVAILABLE (as
    Triton answers an expired request timeout); the daemon and the callee serve on."""
    try:
        code, message = error_of(call({"socket": daemon.socket_path}, "timeout", "slow", x=[1.0]))
        assert code == "UNAVAILABLE" and "deadline" in message
    finally:
        release.touch()
    answer = call({"socket": daemon.socket_path}, "infer", "slow", x=[1.0, 2.0])
    assert error_of(answer) == ("", "") and answer["y"].tolist() == [1.0, 2.0]


def test_the_daemon_serves_on_after_failed_calls(daemon):
    for model in ("nonexistent", "broken"):
        call({"socket": daemon.socket_path}, "infer", model, x=[13.0])
    answer = call({"socket": daemon.socket_path}, "infer", "double", x=[3.0])
    assert error_of(answer) == ("", "") and answer["y"].tolist() == [6.0]


def test_without_a_unix_socket_calls_are_unavailable(tmp_path):
    """A daemon that serves no Unix socket (server.socket = "") has no way for a worker to reach
    it: the call fails UNAVAILABLE and says why; the caller itself is served over HTTP."""
    with DaemonProcess(bls_models(tmp_path / "models", tmp_path / "release"), "--socket", "") as d:
        code, message = error_of(call({"url": d.url}, "infer", "double"))
        assert d.events("listening") and not [e for e in d.events("listening") if e["frontend"] == "socket"]
    assert code == "UNAVAILABLE"
    assert "no Unix socket" in message
