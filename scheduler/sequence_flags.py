"""A sequence request's correlation id and flags (the `sequence_id`, `sequence_start` and
`sequence_end` request parameters, as every front-end decodes them), and the control tensors
the daemon fills into each row of a stateful model's batch (config/sequence.py)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from inferd.common.errors import clip, invalid
from inferd.common.tensors import DATATYPES
from inferd.config.sequence import Control, SequenceBatching

MAX_ID_CHARS = 256  # a string sequence id: a key the daemon holds for as long as the sequence lives
PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")
_ID_RANGE = {"UINT64": (0, (1 << 64) - 1), "INT64": (-(1 << 63), (1 << 63) - 1),
             "UINT32": (0, (1 << 32) - 1), "INT32": (-(1 << 31), (1 << 31) - 1)}


@dataclasses.dataclass(frozen=True, slots=True)
class Flags:
    id: int | str
    start: bool = False
    end: bool = False


def _flag(parameters: dict, key: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise invalid(f"parameter {key} must be a boolean, got {type(value).__name__}")
    return value


def read_flags(parameters: dict, model: str, batching: SequenceBatching) -> Flags:
    """The request's sequence parameters, checked; raises InferdError (INVALID_ARGUMENT)."""
    sid = parameters.get("sequence_id", 0)
    if isinstance(sid, bool) or not isinstance(sid, (int, str)):
        raise invalid(f"parameter sequence_id must be an unsigned integer or a string, got {type(sid).__name__}")
    if sid in (0, ""):
        raise invalid(f"inference request to model {clip(model)} must specify a non-zero or non-empty "
                      "correlation ID (parameter sequence_id): the model batches sequences")
    if isinstance(sid, str) and len(sid) > MAX_ID_CHARS:
        raise invalid(f"sequence_id is {len(sid)} characters long; at most {MAX_ID_CHARS}")
    if isinstance(sid, int) and not 0 < sid < 1 << 64:
        raise invalid("sequence_id must be an unsigned 64-bit integer")
    corrid = batching.corrid
    if corrid is not None:
        if (corrid.datatype == "BYTES") != isinstance(sid, str):
            want = "a string" if corrid.datatype == "BYTES" else "an integer"
            raise invalid(f"model {clip(model)} takes {want} sequence_id (its CORRID control is {corrid.datatype})")
        low, high = _ID_RANGE.get(corrid.datatype, (None, None))
        if low is not None and not low <= sid <= high:
            raise invalid(f"sequence_id {sid} does not fit model {clip(model)}'s CORRID control ({corrid.datatype})")
    return Flags(sid, _flag(parameters, "sequence_start"), _flag(parameters, "sequence_end"))


def refuse_on_plain_model(parameters: dict, model: str) -> None:
    """A model without [sequence_batching] refuses a sequence id rather than ignoring it."""
    if parameters and parameters.get("sequence_id", 0) not in (0, "") or any(
            parameters.get(k) for k in PARAMETERS[1:]):
        raise invalid(f"model {clip(model)} does not batch sequences (no [sequence_batching] in its "
                      "config.toml): sequence_id, sequence_start and sequence_end are not accepted")


def control_parts(controls: tuple[Control, ...], rows: list[Flags | None], batch_dim: bool) -> dict[str, list[np.ndarray]]:
    """Per control input, one array per row of the batch (None: an idle slot, READY false)."""
    shape = (1, 1) if batch_dim else (1,)
    parts: dict[str, list[np.ndarray]] = {}
    for c in controls:
        if c.kind == "CORRID":
            dtype = object if c.datatype == "BYTES" else DATATYPES[c.datatype]
            values = [_corrid(f, c.datatype) for f in rows]
            parts[c.name] = [np.full(shape, v, dtype) for v in values]
        else:
            parts[c.name] = [_constant(c.values[_on(c.kind, f)], c.datatype, shape) for f in rows]
    return parts


@functools.lru_cache(maxsize=64)
def _constant(value, datatype: str, shape: tuple) -> np.ndarray:
    """A flag's row, made once (read-only: every batch shares it)."""
    array = np.full(shape, value, DATATYPES[datatype])
    array.flags.writeable = False
    return array


def _on(kind: str, flags: Flags | None) -> int:
    if flags is None:
        return 0
    return int(flags.start if kind == "START" else flags.end if kind == "END" else True)


def _corrid(flags: Flags | None, datatype: str):
    if flags is None:
        return b"" if datatype == "BYTES" else 0
    return flags.id.encode() if datatype == "BYTES" else flags.id


def client_inputs(inputs: tuple, batching: SequenceBatching) -> tuple:
    """The model's inputs less its control inputs (which the daemon fills in, so callers never
    send them). Raises ValueError when a control is not an input of the model, or has another
    datatype."""
    by_name = {t.name: t for t in inputs}
    for c in batching.controls:
        spec = by_name.get(c.name)
        if spec is None:
            raise ValueError(f"[sequence_batching] control input {c.name!r} is not an input of the model "
                             f"(inputs: {', '.join(by_name)})")
        if spec.datatype != c.datatype:
            raise ValueError(f"[sequence_batching] control input {c.name!r} is {c.datatype}, the model's input is {spec.datatype}")
    rest = tuple(t for t in inputs if t.name not in batching.control_names)
    if not rest:
        raise ValueError("the model has no inputs besides its [sequence_batching] control inputs")
    return rest
