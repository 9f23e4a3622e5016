"""Decoupled models in the worker: one request, 0..N responses, sent as the model yields them.

A decoupled Python model's `infer` is a generator (docs/python-models.md); its worker runs one
request at a time. The EXECUTE of such a request carries `stream`, the credit: how many
responses may travel before the daemon has written them to the caller. Each response goes out
at once as a PARTIAL message while credit lasts; at none left the worker stops pulling the
generator and waits for CREDIT, so a caller that does not read stops the model, not the daemon
(execution_timeout_s still ends a request that waits too long). CANCEL (the caller went away)
closes the generator: the model sees GeneratorExit at its `yield`. The request ends with a
RESULT without outputs, or with FAILED when the model raises midway (the responses already
sent stay sent).
"""

from __future__ import annotations

import itertools
import socket

import numpy as np

from inferd.backends import ipc, per_request

WARM_UP_RESPONSES = 2  # a warm-up or profile run takes at most this many responses (the model may never end)


def first_responses(backend, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """The warm-up and profile runs of a decoupled model: its first responses, checked; the last."""
    responses = backend.responses(inputs, outputs)
    try:
        taken = list(itertools.islice(responses, WARM_UP_RESPONSES))
    finally:
        responses.close()
    return taken[-1] if taken else {}


def _inputs(msg: dict, regions) -> dict[str, np.ndarray]:
    if regions is None:
        return ipc.unpack_tensors(msg["inputs"])
    region = regions[0]
    region.follow(msg["size"])
    return region.read(msg["inputs"], copy=False)


def run(backend, msg: dict, sock: socket.socket, receiver: ipc.Receiver, regions) -> dict:
    """One request's stream. Returns the final reply; the model's exception propagates (the
    caller answers FAILED)."""
    batch, credit = msg["batch"], int(msg["stream"])
    if "callers" in msg:  # a per-request backend: the request's parameters too
        responses = backend.responses(_inputs(msg, regions), msg["outputs"], parameters=per_request.parameters(msg))
    else:
        responses = backend.responses(_inputs(msg, regions), msg["outputs"])
    try:
        for outputs in responses:
            credit, going = _control(receiver, batch, credit, wait=False)
            while going and credit <= 0:
                credit, going = _control(receiver, batch, credit, wait=True)
            if not going:
                break
            ipc.send(sock, {"type": ipc.PARTIAL, "batch": batch, "outputs": ipc.pack_tensors(outputs)})
            credit -= 1
    finally:
        responses.close()
    reply = {"type": ipc.RESULT, "batch": batch, "outputs": []}  # (no outputs: the end of the stream)
    if regions is not None:
        reply["size"] = regions[1].size
    return reply


def _control(receiver: ipc.Receiver, batch: int, credit: int, wait: bool) -> tuple[int, bool]:
    """The daemon's messages about this stream: (credit, whether to go on). STOP and the end of
    the socket also end the stream; STOP is left for the worker's loop to act on."""
    while True:
        msg = receiver.recv() if wait else receiver.recv_nowait()
        if msg is None:
            return credit, not receiver.closed
        kind = msg["type"]
        if kind == ipc.STOP:
            receiver.ready.insert(0, msg)
            return credit, False
        if msg.get("batch") != batch:  # about a stream that has ended
            continue
        if kind == ipc.CANCEL:
            return credit, False
        if kind == ipc.CREDIT:
            credit += int(msg["n"])
            if wait:
                return credit, True
