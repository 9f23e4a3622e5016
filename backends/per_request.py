"""A per-request backend's batches in the worker (the contract: inferd.backends.base.BatchRequests).

Such a backend (a Triton Python model) answers each caller of a batch on its own, so the
EXECUTE of its worker carries `callers`: per caller, [rows, request parameters]. The RESULT
then carries the outputs of the callers that succeeded, caller after caller (each one's own
tensors, whatever their shapes), and `callers`: per caller, how many of those tensors are its
own, or [code, message] for a caller whose request failed (that caller alone). A batch the
model answers with anything but a list of one entry per caller fails as a whole.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from inferd.backends import ipc
from inferd.backends.base import BackendOutputError, BatchRequests

CallerError = Callable[[str, Exception], "tuple[str, str]"]  # (request id, its exception) -> (wire code, message)


def reply(backend, msg: dict, regions, caller_error: CallerError) -> dict:
    """The RESULT of one EXECUTE that carries `callers`; raises when the whole batch fails."""
    if regions is None:
        inputs = ipc.unpack_tensors(msg["inputs"])
    else:
        regions[0].follow(msg["size"])
        inputs = regions[0].read(msg["inputs"], copy=False)
    pairs, callers = [], []
    for request_id, answer in zip(msg["ids"], run(backend, inputs, msg)):
        if isinstance(answer, Exception):
            callers.append(list(caller_error(request_id, answer)))
        else:
            pairs.extend(answer.items())
            callers.append(len(answer))
    out = {"type": ipc.RESULT, "batch": msg["batch"], "callers": callers}
    if regions is None:
        out["outputs"] = [item for name, array in pairs for item in ipc.pack_tensors({name: array})]
    else:
        out["outputs"] = regions[1].write_pairs((name, [array]) for name, array in pairs)
        out["size"] = regions[1].size
    return out


def run(backend, inputs: dict[str, np.ndarray], msg: dict) -> list:
    """The model's answer to one batch: per caller, its outputs (those the batch asks for, in
    that order) or its exception. Raises (the whole batch fails) when the answer is malformed."""
    callers = msg["callers"]
    ids = tuple(msg["ids"]) if len(msg["ids"]) == len(callers) else ()
    requests = BatchRequests(tuple(rows for rows, _ in callers), tuple(parameters for _, parameters in callers), ids)
    answers = backend.execute(inputs, msg["outputs"], requests=requests)
    if not isinstance(answers, list) or len(answers) != len(callers):
        got = f"a list of {len(answers)}" if isinstance(answers, list) else f"a {type(answers).__name__}"
        raise BackendOutputError(f"the model answered a batch of {len(callers)} requests with {got}: a per-request "
                                 f"model returns a list with one entry per request (its outputs, or an exception)")
    wanted = msg["outputs"]
    out = []
    for answer in answers:
        if isinstance(answer, Exception):
            out.append(answer)
        elif isinstance(answer, dict):
            mine = {name: answer[name] for name in wanted if name in answer}
            strays = [name for name, array in mine.items() if not isinstance(array, np.ndarray)]
            out.append(BackendOutputError(f"the model's output {strays[0]!r} for this request is a "
                                          f"{type(mine[strays[0]]).__name__}, not a numpy array") if strays else mine)
        else:
            out.append(BackendOutputError(f"the model's answer to this request is a {type(answer).__name__}, "
                                          f"not its outputs (a dict) or an exception"))
    return out


def parameters(msg: dict) -> dict:
    """The request parameters of a decoupled request (one caller) for a per-request backend's
    `responses`; {} when the daemon sent none."""
    callers = msg.get("callers")
    return callers[0][1] if callers else {}
