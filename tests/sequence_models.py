"""Stateful models for the sequence-batching tests, written into a model directory: Python
models that behave as Triton's simple_sequence examples expect, an accumulator that keeps its
state per sequence, and an ONNX model whose outputs show the control inputs it was given."""

from __future__ import annotations

import pathlib

import numpy as np

CONTROLS = """
[[sequence_batching.control_input]]
name = "START"
kind = "CONTROL_SEQUENCE_START"
int32_false_true = [0, 1]

[[sequence_batching.control_input]]
name = "END"
kind = "CONTROL_SEQUENCE_END"
int32_false_true = [0, 1]

[[sequence_batching.control_input]]
name = "READY"
kind = "CONTROL_SEQUENCE_READY"
int32_false_true = [0, 1]
"""

# mode "simple": START -> INPUT + 1, else INPUT (Triton's simple_sequence, as its examples check);
# "dyna": the same, plus the correlation id on the END request (simple_dyna_sequence);
# "accumulate": the running sum per sequence (keyed by CORRID), plus int(CORRID) on END
# (simple_string_dyna_sequence); "crash": accumulate, but os._exit on INPUT == 666.
MODEL = '''
import os
import numpy as np

TENSOR = {"datatype": "INT32", "shape": [-1, 1]}


class Model:
    def load(self, model_dir, config):
        self.mode = config["parameters"]["mode"]
        self.sums = {}

    def infer(self, inputs):
        x, start, end, ready = (inputs[k][:, 0] for k in ("INPUT", "START", "END", "READY"))
        ids = inputs["CORRID"][:, 0] if "CORRID" in inputs else [None] * len(x)
        out = np.zeros(len(x), np.int32)
        for i in range(len(x)):
            if not ready[i]:
                out[i] = -1
                continue
            if x[i] == 666 and self.mode == "crash":
                os._exit(3)
            key = ids[i]
            if self.mode in ("simple", "dyna"):
                out[i] = x[i] + 1 if start[i] else x[i]
            else:
                self.sums[key] = int(x[i]) + (0 if start[i] else self.sums.get(key, 0))
                out[i] = self.sums[key]
            if end[i] and self.mode != "simple":
                out[i] += int(key)
                self.sums.pop(key, None)
        return {"OUTPUT": out.reshape(-1, 1), "PID": np.full((len(x), 1), os.getpid(), np.int32),
                "ROWS": np.full((len(x), 1), len(x), np.int32)}
'''


def write_python(root: pathlib.Path, name: str, mode: str, corrid: str = "", extra: str = "",
                 max_batch_size: int = 8, idle_us: int = 1_000_000, strategy: str = "direct") -> None:
    """A Python sequence model: INPUT INT32 [-1, 1] -> OUTPUT, PID (the worker's pid), ROWS
    (the rows of the batch it ran in)."""
    version = root / name / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(MODEL)
    tensors = [("INPUT", "INT32"), ("START", "INT32"), ("END", "INT32"), ("READY", "INT32")]
    controls = CONTROLS
    if corrid:
        tensors.append(("CORRID", "UINT64" if corrid == "TYPE_UINT64" else "BYTES"))
        controls += f'\n[[sequence_batching.control_input]]\nname = "CORRID"\nkind = "CONTROL_SEQUENCE_CORRID"\ndata_type = "{corrid}"\n'
    inputs = "".join(f'[[inputs]]\nname = "{n}"\ndatatype = "{t}"\nshape = [-1, 1]\n' for n, t in tensors)
    outputs = "".join(f'[[outputs]]\nname = "{n}"\ndatatype = "INT32"\nshape = [-1, 1]\n' for n in ("OUTPUT", "PID", "ROWS"))
    (root / name / "config.toml").write_text(
        f"max_batch_size = {max_batch_size}\n{extra}\n[parameters]\nmode = \"{mode}\"\n\n{inputs}{outputs}\n"
        f"[sequence_batching]\nstrategy = \"{strategy}\"\nmax_sequence_idle_us = {idle_us}\n{controls}")


def write_onnx_controls(root: pathlib.Path, name: str, strategy: str = "direct", batching: bool = True) -> None:
    """ONNX: OUTPUT = INPUT + 1000 START + 100 END + 10 READY, CORRID_OUT = CORRID, so a test
    reads every control the daemon filled in (`batching` False: shapes [1], max_batch_size 0)."""
    import onnx
    from onnx import TensorProto, helper

    def tensor(n, t=TensorProto.INT32):
        return helper.make_tensor_value_info(n, t, ["batch", 1] if batching else [1])

    consts = [helper.make_tensor(f"k{v}", TensorProto.INT32, [], [v]) for v in (1000, 100, 10)]
    nodes = [helper.make_node("Mul", ["START", "k1000"], ["s"]), helper.make_node("Mul", ["END", "k100"], ["e"]),
             helper.make_node("Mul", ["READY", "k10"], ["r"]), helper.make_node("Add", ["INPUT", "s"], ["a"]),
             helper.make_node("Add", ["a", "e"], ["b"]), helper.make_node("Add", ["b", "r"], ["OUTPUT"]),
             helper.make_node("Identity", ["CORRID"], ["CORRID_OUT"])]
    graph = helper.make_graph(
        nodes, "controls", [tensor(n) for n in ("INPUT", "START", "END", "READY")] + [tensor("CORRID", TensorProto.UINT64)],
        [tensor("OUTPUT"), tensor("CORRID_OUT", TensorProto.UINT64)], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / name / "1").mkdir(parents=True)
    onnx.save(model, root / name / "1" / "model.onnx")
    corrid = '\n[[sequence_batching.control_input]]\nname = "CORRID"\nkind = "CONTROL_SEQUENCE_CORRID"\ndata_type = "TYPE_UINT64"\n'
    (root / name / "config.toml").write_text(
        f'max_batch_size = {4 if batching else 0}\nmax_workers = 1\n[sequence_batching]\nstrategy = "{strategy}"\n{CONTROLS}{corrid}')


def ints(value: int) -> np.ndarray:
    return np.full((1, 1), value, np.int32)
