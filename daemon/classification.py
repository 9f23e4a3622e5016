"""Triton's classification extension: an output requested with parameter `classification: k`
comes back as a BYTES tensor of its top k classes per batch row, each "score:index" or
"score:index:label" (labels from the output's `label_filename`, daemon/models/labels.py).

As Triton's server does (src/classification.cc, and its front-ends): the score is C++'s
std::to_string of the value ("%f" for floats: "0.912345"; integers as they are), classes are
ordered by score, highest first (ties: lowest index first), k is clamped to the number of
classes in a row, and the result's shape is [rows, min(k, classes)] when the model batches,
else [min(k, classes)]. A class past the end of the label file has no label.

The request is checked once, before it is queued (`plan`): k a positive integer, the output
numeric. Requests without output parameters pay one truth test.
"""

from __future__ import annotations

import math

import numpy as np

from inferd.common.errors import InferdError, clip, invalid, unexpected
from inferd.common.tensors import TensorSpec, object_tensor

# Result strings one request may ask for (rows x k): each is formatted on the event loop.
MAX_RESULTS = 16384
_NUMERIC = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                      "FP16", "FP32", "FP64"})


def plan(output_parameters: dict[str, dict], outputs: tuple[TensorSpec, ...], rows: int,
         batching: bool) -> tuple[tuple[str, int], ...] | None:
    """(output, k) for each output the request wants classified; None when none does.
    `outputs`: the model's; `rows`: the request's batch rows. (Most output parameters are
    binary_data: nothing is built for them.)"""
    wanted = []
    for name, params in output_parameters.items():
        if "classification" not in params:
            continue
        k = params["classification"]
        specs = {t.name: t for t in outputs}
        if type(k) is not int or k < 1:
            raise invalid(f"output {clip(name)}: parameters.classification must be a positive integer, got {clip(repr(k))}")
        spec = specs.get(name)
        if spec is None or spec.datatype not in _NUMERIC:
            raise invalid(f"output {clip(name)}: classification needs a numeric output, "
                          f"not {spec.datatype if spec else 'an unknown output'}")
        dims = spec.shape[1:] if batching else spec.shape
        # (A dynamic class count is checked on the result, where k is clamped to it.)
        if all(d >= 0 for d in dims) and rows * min(k, math.prod(dims)) > MAX_RESULTS:
            raise invalid(f"output {clip(name)}: classification of {k} classes over {rows} rows asks for "
                          f"more than {MAX_RESULTS} results")
        wanted.append((name, k))
    return tuple(wanted) or None


def of_version(mv, outputs: dict, wanted: tuple[tuple[str, int], ...]) -> dict | InferdError:
    """`classify` for a request (or a streamed response) of model version `mv`: its error returned,
    not raised (a bug: INTERNAL, logged), so that the others of its batch get their answers."""
    try:
        return classify(outputs, wanted, mv.max_batch_size > 0, mv.serving.labels)
    except InferdError as e:
        return e
    except Exception as e:
        return unexpected(e, "classification failed", model=mv.name, version=mv.version)


def classify(outputs: dict, wanted: tuple[tuple[str, int], ...], batching: bool, labels: dict) -> dict:
    """`outputs` with each wanted output replaced by its top-k strings."""
    out = dict(outputs)
    for name, k in wanted:
        out[name] = top_k(outputs[name], k, batching, labels.get(name, ()))
    return out


def top_k(array: np.ndarray, k: int, batching: bool, labels: tuple[str, ...]) -> np.ndarray:
    rows = array.shape[0] if batching and array.ndim > 0 else 1
    scores = array.reshape(rows, -1)
    classes = scores.shape[1]
    k = min(k, classes)
    if rows * k > MAX_RESULTS:  # the rows' class count was dynamic: checked again here
        raise invalid(f"classification asks for {rows * k} results; at most {MAX_RESULTS}")
    # Descending, ties by lowest index, for every dtype (negating an unsigned one would wrap):
    # a stable ascending sort of each row reversed, read backwards.
    order = classes - 1 - np.argsort(scores[:, ::-1], axis=1, kind="stable")[:, ::-1][:, :k]
    as_text = _float_text if scores.dtype.kind == "f" else str
    values = np.take_along_axis(scores, order, axis=1).tolist()  # Python floats and ints
    strings = []
    for row_values, indices in zip(values, order.tolist()):
        for value, i in zip(row_values, indices):
            text = f"{as_text(value)}:{i}"
            label = labels[i] if i < len(labels) else ""
            strings.append((f"{text}:{label}" if label else text).encode())
    return object_tensor(strings, (rows, k) if batching and array.ndim > 0 else (k,))


def _float_text(value: float) -> str:
    return f"{value:f}"  # C++'s std::to_string(float/double)
