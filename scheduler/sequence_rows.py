"""The rows of a stateful model's batch (scheduler/sequences.py): which slot each row is, an
idle slot's row, the outputs the batch's requests asked for."""

from __future__ import annotations

import numpy as np


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
