"""A per-request backend for the tests (the contract: inferd.backends.base.BatchRequests), run by
real workers as "per_request_backend:PerCaller" until a real one (the Triton Python shim) serves.

Input x (INT64 [-1, 2]). Per caller, its request parameters decide:
  (none)            y = x * 10 (its rows), tag = [[tag parameter]] per row, wide = zeros of
                    its rows by `width` columns (callers of one batch may differ there)
  fail = "input"    that caller fails with BackendInputError (the caller's fault)
  fail = "model"    that caller fails with a RuntimeError (the model's)
  answer = "short"  the whole answer is one entry short (the model author's bug)
  answer = "dict"   the whole answer is a dict, not a list
  answer = "none"   that caller's entry is None
  answer = "list"   that caller's y is a list, not an array
  answer = "y"      that caller's answer has only y
Without `requests` (warm-up, profiling) it answers as one caller with no parameters.

"per_request_backend:PerCallerStream" is decoupled: `count` responses (default 2) to a request,
response i: y = x * 10 + i, tag = [[tag parameter]].
"""

from __future__ import annotations

import numpy as np

from inferd.backends import decoupled
from inferd.backends.base import BackendInputError
from inferd.common.tensors import ModelMetadata, TensorSpec


class PerCaller:
    def __init__(self, path, settings) -> None:
        self.per_request = False  # true once loaded, as the contract says

    def load(self) -> ModelMetadata:
        self.per_request = True
        return ModelMetadata("python", (TensorSpec("x", "INT64", (-1, 2)),),
                             (TensorSpec("y", "INT64", (-1, 2)), TensorSpec("tag", "INT64", (-1, 1)),
                              TensorSpec("wide", "FP32", (-1, -1))))

    def execute(self, inputs, outputs, requests=None):
        x = inputs["x"]
        if requests is None:
            return self._one(x, {})
        answers, start = [], 0
        for rows, parameters in zip(requests.rows, requests.parameters):
            answers.append(self._answer(x[start:start + rows], parameters))
            start += rows
        if any(p.get("answer") == "short" for p in requests.parameters):
            return answers[:-1]
        if any(p.get("answer") == "dict" for p in requests.parameters):
            return {"y": x}
        return answers

    def _answer(self, x: np.ndarray, parameters: dict):
        fail = parameters.get("fail")
        if fail == "input":
            return BackendInputError(f"refused: {parameters.get('why', '')}")
        if fail == "model":
            return RuntimeError("the model broke on this request")
        if parameters.get("answer") == "none":
            return None
        if parameters.get("answer") == "list":
            return {"y": x.tolist()}
        if parameters.get("answer") == "y":
            return {"y": x * 10}
        return self._one(x, parameters)

    @staticmethod
    def _one(x: np.ndarray, parameters: dict) -> dict:
        rows = len(x)
        return {"y": x * 10, "tag": np.full((rows, 1), int(parameters.get("tag", 0)), np.int64),
                "wide": np.zeros((rows, int(parameters.get("width", 1))), np.float32)}

    def unload(self) -> None:
        pass


class PerCallerStream:
    def __init__(self, path, settings) -> None:
        self.per_request = False

    def load(self) -> ModelMetadata:
        self.per_request = True
        return ModelMetadata("python", (TensorSpec("x", "INT64", (-1, 2)),),
                             (TensorSpec("y", "INT64", (-1, 2)), TensorSpec("tag", "INT64", (-1, 1))), decoupled=True)

    def execute(self, inputs, outputs, requests=None):  # warm-up and profiling only
        return decoupled.first_responses(self, inputs, outputs)

    def responses(self, inputs, outputs, parameters=None):
        parameters = {} if parameters is None else parameters  # (none on warm-up)
        x = inputs["x"]
        for i in range(int(parameters.get("count", 2))):
            yield {"y": x * 10 + i, "tag": np.full((len(x), 1), int(parameters.get("tag", 0)), np.int64)}

    def unload(self) -> None:
        pass
