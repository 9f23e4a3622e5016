"""A batch's outputs back to its callers: the stacked outputs of an ordinary batch split into
each request's rows, or, for a per-request backend (inferd.backends.per_request), each caller's
own answer: its outputs or its own error, while the others of its batch get theirs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from inferd.common.errors import ErrorCode, InferdError
from inferd.scheduler.tickets import Ticket
from inferd.scheduler.worker_errors import worker_error

_INT64 = (-(1 << 63), (1 << 64) - 1)  # what msgpack carries of an int


def wire_callers(batch: list[Ticket]) -> list:
    """A per-request backend's EXECUTE `callers`: per request, its rows and its parameters."""
    return [[ticket.rows, wire_parameters(ticket.request.parameters)] for ticket in batch]


def wire_parameters(parameters: dict) -> dict:
    """The parameters a worker can be sent: string keys with str, bytes, bool, int (64 bits),
    float or None values. The data plane refuses requests with others (daemon/validation.py);
    this keeps a request built inside the daemon from breaking the message."""
    out = {}
    for key, value in parameters.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
            continue
        if value is None or isinstance(value, (str, bytes, bool, int, float)):
            out[key] = value
    return out


def per_caller(msg: dict, read: Callable[[list], dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | InferdError]:
    """A per-request backend's RESULT as one answer per caller (`read` turns wire items into arrays)."""
    items, start, answers = msg["outputs"], 0, []
    for entry in msg["callers"]:
        if isinstance(entry, int):
            answers.append(read(items[start:start + entry]))
            start += entry
        else:
            answers.append(worker_error(entry[0], entry[1]))
    return answers


def split(batch: list[Ticket], outputs: dict[str, np.ndarray] | list) -> None:
    """Settle each request of a batch that ran: its rows of the stacked outputs, or (a list, from
    `per_caller`) its own answer."""
    if isinstance(outputs, list):
        return _each(batch, outputs)
    if not outputs:  # a stream's end: its responses went to its caller as they came
        return batch[0].settle(outputs)
    offset = 0
    for item in batch:
        names = item.request.outputs or outputs.keys()
        if len(batch) == 1:
            mine = {name: outputs[name] for name in names}
        else:
            mine = {name: outputs[name][offset : offset + item.rows] for name in names}
        offset += item.rows
        item.settle(mine)  # (nothing, if its caller went away meanwhile)


def _each(batch: list[Ticket], answers: list) -> None:
    if len(answers) != len(batch):  # (the worker answers per caller it was sent)
        raise ValueError(f"{len(answers)} answers for a batch of {len(batch)} requests")
    for item, answer in zip(batch, answers):
        item.settle(own_answer(answer, item.request.outputs))


def own_answer(answer: dict[str, np.ndarray] | InferdError, names) -> dict[str, np.ndarray] | InferdError:
    """A caller's answer from `per_caller`: the outputs it asked for (`names`; None: all), its
    error, or an error when the model's response lacks one of them."""
    if isinstance(answer, InferdError):
        return answer
    names = names or answer.keys()
    missing = [name for name in names if name not in answer]
    if missing:
        return InferdError(ErrorCode.INTERNAL, f"the model's response to this request has no output {missing[0]!r}")
    return {name: answer[name] for name in names}
