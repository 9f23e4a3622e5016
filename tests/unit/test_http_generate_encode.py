"""/generate's JSON: outputs are written by orjson from their arrays (as /infer's), a big one in
slices, with the same values as the lists they were before."""

from __future__ import annotations

import numpy as np
import orjson

from inferd.daemon.frontends.http_codec import JSON_SLICE
from inferd.daemon.frontends.http_generate import encode
from inferd.daemon.requests import InferResponse


async def test_encode_writes_each_output_as_before():
    big = np.arange(JSON_SLICE + 3, dtype=np.int64)
    outputs = {"one": np.array([[7]], np.int32), "row": np.array([[1, 2], [3, 4]], np.uint8),
               "text": np.array([b"a", b"b"], object), "word": np.array([b"hi"], object),
               "flag": np.array([True]), "big": big, "half": np.array([0.5, 1.5], np.float32)}
    doc = orjson.loads(await encode(InferResponse("m", "1", outputs)))
    assert doc == {"model_name": "m", "model_version": "1", "one": 7, "row": [1, 2, 3, 4], "text": ["a", "b"],
                   "word": "hi", "flag": True, "big": big.tolist(), "half": [0.5, 1.5]}
