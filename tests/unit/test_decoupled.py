"""A decoupled model's stream in the worker (backends/decoupled.py) over a real socketpair, and
its daemon side (scheduler/streams.py): credit bounds what is sent, CANCEL closes the model's
generator, a stream that sent responses is never run again."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from inferd.backends import decoupled, ipc
from inferd.common.errors import ErrorCode, InferdError
from inferd.scheduler.streams import ResponseStream
from inferd.scheduler.worker import WorkerLost


class Counting:
    """A backend whose model yields y = 1, 2, ... `n` (forever with None), noting its close."""

    def __init__(self, n: int | None):
        self.n, self.closed, self.pulled = n, threading.Event(), 0

    def responses(self, inputs, outputs):
        try:
            i = 0
            while self.n is None or i < self.n:
                i += 1
                self.pulled = i
                yield {"y": np.array([i], np.int64)}
        finally:
            self.closed.set()


def frames(sock: socket.socket, wait: float = 0.3) -> list[dict]:
    """What the worker sent until it stays quiet for `wait` seconds."""
    buf, out = bytearray(), []
    sock.settimeout(wait)
    try:
        while chunk := sock.recv(1 << 16):
            buf += chunk
            out += ipc.split_frames(buf)
    except TimeoutError:
        pass
    return out


@pytest.fixture
def pair():
    daemon, worker = socket.socketpair()
    yield daemon, worker
    daemon.close()
    worker.close()


def start(backend, worker: socket.socket, credit: int) -> tuple[threading.Thread, list]:
    msg = {"type": ipc.EXECUTE, "batch": 7, "stream": credit, "outputs": ["y"],
           "inputs": ipc.pack_tensors({"x": np.zeros(1, np.int64)})}
    result: list = []
    thread = threading.Thread(target=lambda: result.append(decoupled.run(backend, msg, worker, ipc.Receiver(worker), None)))
    thread.start()
    return thread, result


def test_the_worker_sends_only_what_its_credit_allows_and_stops_on_cancel(pair):
    daemon, worker = pair
    backend = Counting(None)
    thread, result = start(backend, worker, credit=2)
    sent = frames(daemon)
    assert [(m["type"], m["batch"], ipc.unpack_tensors(m["outputs"])["y"].tolist()) for m in sent] == \
        [(ipc.PARTIAL, 7, [1]), (ipc.PARTIAL, 7, [2])]
    assert backend.pulled == 3  # one response waits in the worker for credit, no more
    ipc.send(daemon, {"type": ipc.CREDIT, "batch": 6, "n": 5})  # about another batch: ignored
    assert frames(daemon) == []
    ipc.send(daemon, {"type": ipc.CREDIT, "batch": 7, "n": 1})
    assert [ipc.unpack_tensors(m["outputs"])["y"].tolist() for m in frames(daemon)] == [[3]]
    ipc.send(daemon, {"type": ipc.CANCEL, "batch": 7})
    thread.join(10)
    assert backend.closed.is_set() and result == [{"type": ipc.RESULT, "batch": 7, "outputs": []}]


def test_a_finite_model_ends_with_a_result_without_outputs(pair):
    daemon, worker = pair
    backend = Counting(3)
    thread, result = start(backend, worker, credit=8)
    thread.join(10)
    assert len(frames(daemon)) == 3 and backend.closed.is_set()
    assert result == [{"type": ipc.RESULT, "batch": 7, "outputs": []}]


def test_stop_ends_the_stream_and_stays_for_the_workers_loop(pair):
    daemon, worker = pair
    backend = Counting(None)
    receiver = ipc.Receiver(worker)
    msg = {"type": ipc.EXECUTE, "batch": 1, "stream": 1, "outputs": ["y"], "inputs": ipc.pack_tensors({"x": np.zeros(1)})}
    ipc.send(daemon, {"type": ipc.STOP})
    assert decoupled.run(backend, msg, worker, receiver, None)["type"] == ipc.RESULT
    assert backend.closed.is_set() and receiver.recv()["type"] == ipc.STOP


def test_the_daemon_side_counts_credit_and_never_reruns_a_stream_that_sent():
    sent, got, ended = [], [], []
    stream = ResponseStream(got.append, window=2)
    done = stream.running(sent.append, 3, ended.append)
    stream.response({"y": 1})
    stream.ack()
    assert got == [{"y": 1}] and sent == [{"type": ipc.CREDIT, "batch": 3, "n": 1}]
    done(WorkerLost("signal SIGKILL"))
    [error] = ended
    assert type(error) is InferdError and error.code is ErrorCode.UNAVAILABLE  # not WorkerLost: the queue would rerun it
    stream.ack()  # after its end: nothing goes to the worker
    assert len(sent) == 1
    # One that sent nothing may run again elsewhere; a cancelled one tells its worker and drops responses.
    fresh, ended = ResponseStream(got.append), []
    fresh.running(sent.append, 4, ended.append)(WorkerLost())
    assert isinstance(ended[0], WorkerLost)
    cancelled = ResponseStream(got.append)
    cancelled.running(sent.append, 5, ended.append)
    cancelled.cancel()
    cancelled.response({"y": 2})
    assert sent[-1] == {"type": ipc.CANCEL, "batch": 5} and got == [{"y": 1}]
