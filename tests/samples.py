"""Sample tensors shared by the tests of every front-end."""

import numpy as np

# One [1, 3] tensor per V2 datatype, with each type's extreme values; BYTES as UTF-8 (the
# identity_all model holds ONNX string tensors, which are text).
EVERY_DATATYPE = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], np.uint8),
    "UINT16": np.array([[0, 7, 65535]], np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], np.uint32),
    "UINT64": np.array([[0, 7, 2**63]], np.uint64),
    "INT8": np.array([[-128, 0, 127]], np.int8),
    "INT16": np.array([[-32768, 0, 32767]], np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], np.int32),
    "INT64": np.array([[-(2**62), 0, 2**62]], np.int64),
    "FP16": np.array([[0.5, -1.25, 65504.0]], np.float16),
    "FP32": np.array([[0.1, -2.5, 3.0e30]], np.float32),
    "FP64": np.array([[0.1, -2.5, 1e300]], np.float64),
    "BYTES": np.array([[b"hello", "ünïcode ✓".encode(), b""]], dtype=object),
}
