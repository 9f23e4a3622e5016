"""The rows of a stateful model's batch (scheduler/sequences.py): which slot each row is, an
idle slot's row, the outputs the batch's requests asked for, each row's outcome."""

from __future__ import annotations

import numpy as np

from inferd.scheduler.results import own_answer, wire_parameters


def slot_rows(chosen: list) -> list:
    """direct: one row per slot up to the highest chosen (None: an idle slot)."""
    top = max(s.slot for s in chosen)
    by_slot = {s.slot: s for s in chosen}
    return [by_slot.get(i) for i in range(top + 1)]


def idle_row(like: np.ndarray) -> np.ndarray:
    """An idle slot's row: zeros (empty bytes) shaped like a real request's."""
    if like.dtype == object:
        return np.full(like.shape, b"", object)
    return np.zeros(like.shape, like.dtype)  # (like may be a common.deferred.FileSlice)


def wanted_outputs(requests: list, output_names: list[str]) -> list[str]:
    """The outputs any of the requests asked for (all, when one asked for none by name)."""
    wanted: set[str] = set()
    for request in requests:
        if request.outputs is None:
            return output_names
        wanted.update(request.outputs)
    return [name for name in output_names if name in wanted]


def sooner(due: float | None, other: float) -> float:
    return other if due is None else min(due, other)


def row_callers(rows: list) -> list:
    """A per-request backend's EXECUTE `callers` (scheduler.results.wire_callers) for a batch's
    rows: an idle slot is a caller of one row without parameters."""
    return [[s.running[0].rows, wire_parameters(s.running[0].request.parameters)] if s else [1, {}] for s in rows]


def row_outcome(result, i: int, names, batch_dim: bool):
    """Row i's outputs (those in `names`; None: all) of a batch's result: its row of the
    stacked outputs, or a per-request backend's own answer for it (a list, one per row)."""
    if isinstance(result, list):
        return own_answer(result[i], names)
    return {n: result[n][i : i + 1] if batch_dim else result[n] for n in names or result}
