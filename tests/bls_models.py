"""Models for the BLS tests, written into a repository: `caller` calls other models of the same
daemon through inferd.backends.triton.bls (blocking, asyncio, streamed), and the models it calls."""

from __future__ import annotations

from pathlib import Path

# mode: "infer", "async" (three awaited calls at once, on x, x + 1 and x + 2), "stream",
# "async_stream", "stream_first", "bytes" (text to `model`), "params" (request parameters),
# "timeout" (timeout_s 0.2), "bad_inputs" (an input that is not an array); model: the model to
# call. Answers the callee's y (and rows: the rows of the callee's batch), text, or the
# BlsError's code and message.
CALLER = '''
import asyncio
import numpy as np
from inferd.backends.triton import bls

class Model:
    inputs = [{"name": "mode", "datatype": "BYTES", "shape": [1]},
              {"name": "model", "datatype": "BYTES", "shape": [1]},
              {"name": "x", "datatype": "FP32", "shape": [-1]},
              {"name": "text", "datatype": "BYTES", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1]},
               {"name": "rows", "datatype": "INT64", "shape": [-1]},
               {"name": "text", "datatype": "BYTES", "shape": [-1]},
               {"name": "code", "datatype": "BYTES", "shape": [1]},
               {"name": "message", "datatype": "BYTES", "shape": [1]}]

    def infer(self, inputs):
        mode, model = inputs["mode"][0].decode(), inputs["model"][0].decode()
        answer = {"y": np.zeros(0, np.float32), "rows": np.zeros(0, np.int64), "text": np.array([], object),
                  "code": np.array([b""], object), "message": np.array([b""], object)}
        if not mode:  # the warm-up run
            return answer
        try:
            answer.update(self.call(mode, model, inputs["x"], inputs["text"]))
        except bls.BlsError as e:
            answer["code"], answer["message"] = np.array([e.code], object), np.array([e.message], object)
        return answer

    def call(self, mode, model, x, text):
        if mode == "infer":
            out = bls.infer(model, "", {"x": x}, None, {}, None)
            return {"y": out["y"], "rows": out["rows"]}
        if mode == "async":
            return asyncio.run(self.three_at_once(model, x))
        if mode == "stream":
            return self.joined(list(bls.stream(model, "", {"x": x[:1]}, ["y"], {}, 30)))
        if mode == "async_stream":
            return self.joined(asyncio.run(self.collected(model, x)))
        if mode == "bytes":
            out = bls.infer(model, "", {"text": text}, ["text"], {}, 30)
            assert out["text"].dtype == object and all(isinstance(t, bytes) for t in out["text"])
            return {"text": out["text"]}
        if mode == "params":  # text[0] b"bad": a parameter the daemon refuses
            params = {"bad": [1]} if text[0] == b"bad" else {"note": "hi", "n": 3, "flag": True, "f": 0.5}
            return bls.infer(model, "", {"x": x}, None, params, 30)
        if mode == "stream_first":  # the first response, the rest abandoned; then double's answer
            first = next(iter(bls.stream(model, "", {"x": x[:1]}, None, {}, 30)))
            return self.joined([first, bls.infer("double", "", {"x": x}, ["y"], {}, 30)])
        if mode == "timeout":
            return bls.infer(model, "", {"x": x}, None, {}, 0.2)
        if mode == "bad_inputs":
            return bls.infer(model, "", {"x": object()}, None, {}, None)
        raise ValueError(f"unknown mode {mode}")

    async def three_at_once(self, model, x):
        outs = await asyncio.gather(*(bls.async_infer(model, "", {"x": x + i}, ["y"], {}, 30) for i in range(3)))
        return {"y": np.concatenate([o["y"] for o in outs])}

    async def collected(self, model, x):
        return [out async for out in bls.async_stream(model, "", {"x": x[:1]}, None, {}, 30)]

    @staticmethod
    def joined(responses):
        return {"y": np.concatenate([r["y"] for r in responses]).astype(np.float32)}
'''

# y = 2x, and per row the rows of the batch it ran in.
DOUBLE = '''
import numpy as np

class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1]}, {"name": "rows", "datatype": "INT64", "shape": [-1]}]

    def infer(self, inputs):
        x = inputs["x"]
        return {"y": x * 2, "rows": np.full(len(x), len(x), np.int64)}
'''

SHOUT = '''
import numpy as np

class Model:
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    outputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]

    def infer(self, inputs):
        return {"text": np.array([t.upper() + b"!" for t in inputs["text"]], object)}
'''

# Decoupled: int(x[0]) responses, y = [0], [1], ...
UPTO = '''
import numpy as np

class Model:
    decoupled = True
    inputs = [{"name": "x", "datatype": "FP32", "shape": [1]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [1]}]

    def infer(self, inputs):
        for i in range(int(inputs["x"][0])):
            yield {"y": np.array([i], np.float32)}
'''

BROKEN = '''
class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1]}, {"name": "rows", "datatype": "INT64", "shape": [-1]}]

    def infer(self, inputs):
        if len(inputs["x"]) and inputs["x"][0] == 13:
            raise ValueError("13 is unlucky")
        return {"y": inputs["x"], "rows": inputs["x"].astype("int64")}
'''

# Answers only once released: x[0] = 1 waits for the file its [parameters] `release` names.
SLOW = '''
import time
from pathlib import Path
import numpy as np

class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1]}, {"name": "rows", "datatype": "INT64", "shape": [-1]}]

    def load(self, model_dir, config):
        self.release = Path(config["parameters"]["release"])

    def infer(self, inputs):
        x = inputs["x"]
        while len(x) and x[0] == 1 and not self.release.exists():
            time.sleep(0.05)
        return {"y": x, "rows": np.full(len(x), len(x), np.int64)}
'''


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def bls_models(root: Path, release: Path, gathered_rows: int = 4) -> Path:
    """The repository: caller (three workers, so that three calls run at once), its callees,
    `gathered`, DOUBLE that runs only full batches of `gathered_rows` rows (its queue delay is a
    minute: a batch never goes out early in a test), and `slow`, held until `release` exists."""
    _write(root / "caller" / "1" / "model.py", CALLER)
    _write(root / "caller" / "config.toml", "max_batch_size = 0\nmin_workers = 3\nmax_workers = 3\n")
    _write(root / "double" / "1" / "model.py", DOUBLE)
    _write(root / "gathered" / "1" / "model.py", DOUBLE)
    _write(root / "gathered" / "config.toml", f"max_batch_size = {gathered_rows}\nmax_queue_delay_ms = 60000\n")
    _write(root / "shout" / "1" / "model.py", SHOUT)
    _write(root / "upto" / "1" / "model.py", UPTO)
    _write(root / "broken" / "1" / "model.py", BROKEN)
    _write(root / "slow" / "1" / "model.py", SLOW)
    _write(root / "slow" / "config.toml", f"execution_timeout_s = 30\n[parameters]\nrelease = {str(release)!r}\n")
    return root
