"""Example Python model: text pre-processing on BYTES input.

Each row of `text` (one UTF-8 string) becomes 16 token ids: words lower-cased, each hashed into
a 1024-bucket vocabulary (0 is padding). The same hashing is what bag_classifier.pt was built
for, so `text_classifier` (tokenize -> bag_classifier -> label) classifies text end to end.
"""

import re
import zlib

import numpy as np

VOCAB = 1024
MAX_TOKENS = 16
WORD = re.compile(r"[a-z0-9']+")


def token_ids(text: str) -> list[int]:
    """Shared with examples/make_models.py, which builds the classifier's embedding table."""
    ids = [zlib.crc32(w.encode()) % (VOCAB - 1) + 1 for w in WORD.findall(text.lower())]
    return (ids + [0] * MAX_TOKENS)[:MAX_TOKENS]


class Model:
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    outputs = [{"name": "tokens", "datatype": "INT64", "shape": [-1, MAX_TOKENS]}]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [token_ids(t.decode("utf-8", errors="replace")) for t in inputs["text"]]
        return {"tokens": np.array(rows, dtype=np.int64).reshape(-1, MAX_TOKENS)}
