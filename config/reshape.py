"""Triton's `reshape` and `optional` in config.toml's tensor tables.

    [[inputs]]
    name = "x"
    datatype = "FP32"
    shape = [-1, 4]       # what clients send (and the metadata shows)
    reshape = [2, 2]      # what the model itself sees
    optional = true       # a request may leave this input out

As in Triton, `reshape` leaves the batch dimension out when the tensor has one (max_batch_size
above 0 and a first dimension of -1): the model above sees [rows, 2, 2]. Shape and reshape hold
the same elements; a dynamic (-1) dimension may stay only where it maps, so the runs of fixed
dimensions between the -1s must hold the same elements on both sides ([2, 4, -1, 6] may become
[8, -1, 1, 6]): a -1 of the model then takes the size of the client's -1 it stands for
(backends/reshape.py applies it in the worker).
"""

from __future__ import annotations

import math

from inferd.common.errors import ConfigError
from inferd.common.tensors import TensorSpec

# What a tensor table may say for this, by table: (key, the check of its value).
KEYS = {"inputs": ("reshape", "optional"), "outputs": ("reshape",)}
_MAX_RANK = 32  # numpy's limit before 2.0
_MAX_DIM = 1 << 62  # a reshape numpy can index


def option_value(key: str, value, file: str, where: str):
    """One tensor table's `reshape` (a tuple) or `optional` (a bool), checked."""
    if key == "optional":
        if not isinstance(value, bool):
            raise ConfigError(file, where, f"expected true or false, got {value!r}"[:200])
        return value
    if not isinstance(value, list) or len(value) > _MAX_RANK or not all(
        isinstance(d, int) and not isinstance(d, bool) and (d == -1 or 1 <= d <= _MAX_DIM) for d in value
    ):
        raise ConfigError(file, where, f"expected an array of at most {_MAX_RANK} dimensions, each >= 1 or -1 "
                          "(dynamic): the shape the model sees")
    return tuple(value)


def _runs(shape) -> list[int]:
    """The element counts of the runs of fixed dimensions between a shape's -1s."""
    runs, count = [], 1
    for d in shape:
        if d == -1:
            runs.append(count)
            count = 1
        else:
            count *= d
    return [*runs, count]


def batched(spec: TensorSpec, max_batch_size: int) -> bool:
    """Whether the tensor's first dimension is the batch dimension, which reshape leaves out."""
    return max_batch_size > 0 and spec.shape[:1] == (-1,)


def tensor_shaping(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], said: dict[str, dict],
                   max_batch_size: int, file: str) -> tuple[dict[str, tuple[int, ...]], frozenset[str]]:
    """(ModelConfig.reshape, ModelConfig.optional_inputs) from what the tables said (`said`:
    "inputs[i]" -> {key: checked value}), each reshape checked against its tensor's shape."""
    reshape, optional = {}, set()
    names = {t.name for t in inputs} & {t.name for t in outputs}
    for kind, specs in (("inputs", inputs), ("outputs", outputs)):
        for i, spec in enumerate(specs):
            options = said.get(f"{kind}[{i}]", {})
            if options.get("optional"):
                optional.add(spec.name)
            if "reshape" not in options:
                continue
            where = f"{kind}[{i}].reshape"
            if spec.name in names:
                raise ConfigError(file, where, f"{spec.name!r} names both an input and an output: a reshape needs "
                                  "a name of its own")
            _check(spec, options["reshape"], max_batch_size, file, where)
            reshape[spec.name] = options["reshape"]
    return reshape, frozenset(optional)


def _check(spec: TensorSpec, shape: tuple[int, ...], max_batch_size: int, file: str, where: str) -> None:
    dims = spec.shape[1:] if batched(spec, max_batch_size) else spec.shape
    if _runs(dims) == _runs(shape):
        return
    left_out = " (without its batch dimension, which reshape leaves out when max_batch_size > 0)" \
        if len(dims) < len(spec.shape) else ""
    if -1 in dims or -1 in shape:
        reason = (f"{list(shape)} does not map shape {list(dims)}{left_out}: each -1 must stand for one of the "
                  "shape's, with the same number of elements between them")
    else:
        reason = (f"{list(shape)} holds {math.prod(shape)} elements, shape {list(dims)}{left_out} "
                  f"holds {math.prod(dims)}")
    raise ConfigError(file, where, reason)


def model_shapes(reshape: dict[str, tuple[int, ...]], specs: tuple[TensorSpec, ...],
                 max_batch_size: int) -> dict[str, list[int]]:
    """Each reshaped tensor's whole shape as the model sees it: the batch dimension (-1) first
    where the tensor has one. What the worker is told (BackendSettings.reshape)."""
    return {t.name: ([-1] if batched(t, max_batch_size) else []) + list(reshape[t.name])
            for t in specs if t.name in reshape}


def triton_reshape(reshape: dict[str, tuple[int, ...]], name: str) -> dict:
    """A tensor's `reshape` as Triton's model configuration shows it (nothing when it has none)."""
    return {"reshape": {"shape": list(reshape[name])}} if name in reshape else {}
