"""Decoupled (and ordinary) Python models for the streaming tests, written into a repository."""

from __future__ import annotations

from pathlib import Path

# Like Triton's repeat_int32 example model: one response per element of IN (OUT = that element,
# IDX = its index), DELAY[i] ms before response i, WAIT ms before the end.
REPEAT = '''
import time
import numpy as np

class Model:
    decoupled = True
    inputs = [{"name": "IN", "datatype": "INT32", "shape": [-1]},
              {"name": "DELAY", "datatype": "UINT32", "shape": [-1]},
              {"name": "WAIT", "datatype": "UINT32", "shape": [1]}]
    outputs = [{"name": "OUT", "datatype": "INT32", "shape": [1]},
               {"name": "IDX", "datatype": "UINT32", "shape": [1]}]

    def infer(self, inputs):
        values, delays = inputs["IN"], inputs["DELAY"]
        for i, value in enumerate(values):
            if i < len(delays):
                time.sleep(int(delays[i]) / 1000)
            yield {"OUT": np.array([value], np.int32), "IDX": np.array([i], np.uint32)}
        time.sleep(int(inputs["WAIT"][0]) / 1000)
'''

# Yields forever (counting in a file what it yielded), until the daemon closes the generator:
# then it writes "closed". x: the value to repeat.
ENDLESS = '''
import numpy as np

class Model:
    decoupled = True
    inputs = [{"name": "x", "datatype": "INT64", "shape": [1]}]
    outputs = [{"name": "y", "datatype": "INT64", "shape": [1]}, {"name": "pad", "datatype": "UINT8", "shape": [-1]}]

    def load(self, model_dir, config):
        self.log = model_dir / "endless.log"

    def infer(self, inputs):
        x = int(inputs["x"][0])
        n = 0
        try:
            while True:
                n += 1
                if x:
                    with open(self.log, "a") as f:
                        f.write(f"{x} {n}\\n")
                yield {"y": np.array([n], np.int64), "pad": np.zeros(1 << 16, np.uint8)}
        finally:
            if x:
                with open(self.log, "a") as f:
                    f.write(f"{x} closed\\n")
'''

# x == 1: raises after two responses; x == 2: the third response lacks an output;
# x == 3: returns instead of yielding; x == 4: the second response has the wrong shape.
CARELESS = '''
import numpy as np

class Model:
    decoupled = True
    inputs = [{"name": "x", "datatype": "INT64", "shape": [1]}]
    outputs = [{"name": "y", "datatype": "INT64", "shape": [1]}]

    def infer(self, inputs):
        x = int(inputs["x"][0])
        if x == 3:
            return {"y": np.array([1])}
        return self.responses(x)

    def responses(self, x):
        for n in range(1, 4):
            if x == 1 and n == 3:
                raise ValueError("midway")
            if x == 2 and n == 3:
                yield {"z": np.array([n])}
            if x == 4 and n == 2:
                yield {"y": np.array([n, n])}
            yield {"y": np.array([n])}
'''

# An ordinary model: y = 2x, one response per request.
DOUBLE = '''
class Model:
    inputs = [{"name": "x", "datatype": "INT64", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "INT64", "shape": [-1]}]

    def infer(self, inputs):
        return {"y": inputs["x"] * 2}
'''


def place(root: Path, name: str, code: str, config: str = "") -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.py").write_text(code)
    (root / name / "config.toml").write_text(config)


def stream_models(root: Path) -> Path:
    place(root, "repeat_int32", REPEAT)
    place(root, "endless", ENDLESS, "execution_timeout_s = 5\n")
    place(root, "careless", CARELESS)
    place(root, "double", DOUBLE)
    return root
