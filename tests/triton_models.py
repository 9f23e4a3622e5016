"""The models Triton's example clients (tests/triton_examples/) call, rebuilt for inferd: same
names, tensors and arithmetic as the ones the examples were written against, made here with the
onnx helper API or as inferd Python models (nothing is downloaded)."""

from __future__ import annotations

import shutil
from pathlib import Path

import make_models
import numpy as np
from onnx import TensorProto, helper, numpy_helper

# The image classifiers: the mean of each colour channel, a fixed linear layer, softmax. Class k
# < 3 is "mostly channel k", so a red picture is classified "red" whatever the preprocessing.
LABELS = ["red", "green", "blue", "cyan", "magenta", "yellow", "grey", "other"]

# simple_string: BYTES tensors holding decimal integers, Triton's sum and difference.
SIMPLE_STRING = '''
import numpy as np
from inferd.backends.python import InvalidInput

TENSOR = {"datatype": "BYTES", "shape": [-1, 16]}


class Model:
    inputs = [{"name": "INPUT0", **TENSOR}, {"name": "INPUT1", **TENSOR}]
    outputs = [{"name": "OUTPUT0", **TENSOR}, {"name": "OUTPUT1", **TENSOR}]

    def infer(self, inputs):
        try:
            a, b = (np.vectorize(int, otypes=[np.int64])(inputs[n]) for n in ("INPUT0", "INPUT1"))
        except ValueError:
            raise InvalidInput("simple_string takes decimal integers") from None
        text = np.vectorize(lambda v: str(v).encode(), otypes=[object])
        return {"OUTPUT0": text(a + b), "OUTPUT1": text(a - b)}
'''

SIMPLE_IDENTITY = '''
class Model:
    inputs = [{"name": "INPUT0", "datatype": "BYTES", "shape": [-1, -1]}]
    outputs = [{"name": "OUTPUT0", "datatype": "BYTES", "shape": [-1, -1]}]

    def infer(self, inputs):
        return {"OUTPUT0": inputs["INPUT0"]}
'''

# The sequence models of Triton's examples (src/custom/sequence, the dyna variant): each request
# answers its INPUT, plus 1 on a sequence's START, plus the correlation id on its END (dyna only).
# The controls arrive as the inputs the config's control_input names, as Triton gives them.
SEQUENCE = '''
class Model:
    def infer(self, inputs):
        out = inputs["INPUT"] + inputs["START"]
        if "END" in inputs:
            out = out + inputs["END"] * inputs["CORRID"].astype(out.dtype)
        return {"OUTPUT": out * inputs["READY"]}
'''

# simple_string_dyna_sequence: string correlation ids that hold a decimal number; the requests
# of a sequence are accumulated, and the end adds the id, as the example expects.
STRING_DYNA_SEQUENCE = '''
import numpy as np


class Model:
    def load(self, model_dir, config):
        self.sums = {}

    def infer(self, inputs):
        out = []
        rows = zip(inputs["INPUT"], inputs["START"], inputs["END"], inputs["READY"], inputs["CORRID"])
        for x, start, end, ready, corrid in rows:
            if not ready[0]:  # a slot without a request in this batch
                out.append([0])
                continue
            key = corrid[0]  # bytes (or str): int() reads either
            total = (0 if start[0] else self.sums.get(key, 0)) + int(x[0])
            self.sums[key] = total
            if end[0]:
                del self.sums[key]
                total += int(key)
            out.append([total])
        return {"OUTPUT": np.array(out, np.int32)}
'''

# repeat_int32 (Triton's backend examples/repeat.cc), decoupled (a generator `infer`): one
# response per element of IN, each after its DELAY (milliseconds, times [parameters]
# delay_scale), then WAIT before the end.
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

    def load(self, model_dir, config):
        self.scale = float(config["parameters"].get("delay_scale", 1.0))

    def infer(self, inputs):
        for i, (value, delay) in enumerate(zip(inputs["IN"], inputs["DELAY"])):
            time.sleep(min(int(delay), 10_000) / 1000 * self.scale)
            yield {"OUT": np.array([value], np.int32), "IDX": np.array([i], np.uint32)}
        time.sleep(min(int(inputs["WAIT"][0]), 10_000) / 1000 * self.scale)
'''


def _sequence_config(dyna: bool, corrid_type: str = "TYPE_UINT64") -> str:
    """Triton's simple_sequence / simple_dyna_sequence config.pbtxt, in inferd's TOML: the
    control inputs are inputs of the model, which the daemon fills in (callers send INPUT)."""
    controls = [("START", "CONTROL_SEQUENCE_START"), ("READY", "CONTROL_SEQUENCE_READY")]
    if dyna:
        controls.append(("END", "CONTROL_SEQUENCE_END"))
    tensors = [("INPUT", "INT32")] + [(name, "INT32") for name, _ in controls]
    text = "max_batch_size = 8\n"
    if dyna:
        tensors.append(("CORRID", "BYTES" if corrid_type == "TYPE_STRING" else "UINT64"))
    for name, datatype in tensors:
        text += f'[[inputs]]\nname = "{name}"\ndatatype = "{datatype}"\nshape = [-1, 1]\n'
    text += '[[outputs]]\nname = "OUTPUT"\ndatatype = "INT32"\nshape = [-1, 1]\n'
    text += f'[sequence_batching]\nstrategy = "{"oldest" if dyna else "direct"}"\nmax_sequence_idle_us = 5000000\n'
    for name, kind in controls:
        text += f'[[sequence_batching.control_input]]\nname = "{name}"\nkind = "{kind}"\nint32_false_true = [0, 1]\n'
    if dyna:
        text += f'[[sequence_batching.control_input]]\nname = "CORRID"\nkind = "CONTROL_SEQUENCE_CORRID"\ndata_type = "{corrid_type}"\n'
    return text


def build_add_sub_int8(path: Path) -> Path:
    """simple_int8: simple's sum and difference on INT8 [batch, 16]."""
    tensors = [helper.make_tensor_value_info(n, TensorProto.INT8, ["batch", 16]) for n in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")]
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]), helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])]
    return make_models._save(helper.make_graph(nodes, "simple_int8", tensors[:2], tensors[2:]), path)


def build_classifier(path: Path, input_name: str, output_name: str, shape: list, channel_axis: int) -> Path:
    """A tiny image classifier: channel means -> fixed linear layer -> softmax over LABELS.
    `shape` is the input's, with "batch" first for a batching model; no batch dimension otherwise."""
    batched = shape[0] == "batch"
    spatial = [a for a in range(len(shape)) if a != channel_axis and not (batched and a == 0)]
    weights = np.zeros((3, len(LABELS)), np.float32)
    weights[:, :3] = np.eye(3) * 4
    weights[:, 3:6] = (1 - np.eye(3)) * 1.5
    bias = np.zeros(len(LABELS), np.float32)
    bias[6:] = [0.5, -1.0]
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["means"], axes=spatial, keepdims=0),
        helper.make_node("MatMul", ["means", "w"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [output_name], axis=-1),
    ]
    out_shape = ["batch", len(LABELS)] if batched else [len(LABELS)]
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    return make_models._save(graph, path)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _python_model(root: Path, name: str, code: str, config: str) -> None:
    _write(root / name / "1" / "model.py", code)
    _write(root / name / "config.toml", config)


def _image_config(batching: int, tensors: tuple) -> str:
    """max_batch_size and the tensors, with Triton's `format` on the input and `label_filename` on
    the output: what image_client reads, and what classification labels with."""
    (name, shape, fmt), (out, out_shape, labels) = tensors
    text = f"max_batch_size = {batching}\n"
    text += f'[[inputs]]\nname = "{name}"\ndatatype = "FP32"\nshape = {shape}\nformat = "{fmt}"\n'
    return text + f'[[outputs]]\nname = "{out}"\ndatatype = "FP32"\nshape = {out_shape}\nlabel_filename = "{labels}"\n'


def make_image_models(root: Path) -> None:
    """densenet_onnx (no batching, NCHW 3x224x224, as Triton's quickstart model) and
    inception_graphdef (batching, NHWC 299x299x3): the models image_client and grpc_client call."""
    build_classifier(root / "densenet_onnx" / "1" / "model.onnx", "data_0", "fc6_1", [3, 224, 224], 0)
    build_classifier(root / "inception_graphdef" / "1" / "model.onnx", "input", "InceptionV3/Predictions/Softmax",
                     ["batch", 299, 299, 3], 3)
    n = len(LABELS)
    densenet = (("data_0", [3, 224, 224], "FORMAT_NCHW"), ("fc6_1", [n], "densenet_labels.txt"))
    inception = (("input", [-1, 299, 299, 3], "FORMAT_NHWC"), ("InceptionV3/Predictions/Softmax", [-1, n], "inception_labels.txt"))
    for name, batching, tensors in (("densenet_onnx", 0, densenet), ("inception_graphdef", 8, inception)):
        _write(root / name / tensors[1][2], "\n".join(LABELS) + "\n")
        _write(root / name / "config.toml", _image_config(batching, tensors))


def make_triton_models(root: Path) -> Path:
    """Every model the examples call, in `root`."""
    make_models.build_add_sub(root / "simple" / "1" / "model.onnx")
    _write(root / "simple" / "config.toml", "max_batch_size = 8\n")
    build_add_sub_int8(root / "simple_int8" / "1" / "model.onnx")
    _write(root / "simple_int8" / "config.toml", "max_batch_size = 8\n")
    _python_model(root, "simple_string", SIMPLE_STRING, "max_batch_size = 8\n")
    _python_model(root, "simple_identity", SIMPLE_IDENTITY, "max_batch_size = 8\n")
    _python_model(root, "simple_sequence", SEQUENCE, _sequence_config(dyna=False))
    _python_model(root, "simple_dyna_sequence", SEQUENCE, _sequence_config(dyna=True))
    _python_model(root, "simple_string_dyna_sequence", STRING_DYNA_SEQUENCE, _sequence_config(dyna=True, corrid_type="TYPE_STRING"))
    # The example sends 10 responses 1 s apart: a tenth of that keeps the stream's shape.
    _python_model(root, "repeat_int32", REPEAT,
                  "max_batch_size = 0\n[parameters]\ndelay_scale = 0.1\n")
    make_image_models(root)
    return root


def make_control_models(root: Path, count: int) -> Path:
    """A repository of exactly `count` models, one of them `simple`: the model-control examples
    count the repository's index (7 for HTTP, 8 for gRPC) and unload `simple`."""
    make_models.build_add_sub(root / "simple" / "1" / "model.onnx")
    _write(root / "simple" / "config.toml", "max_batch_size = 8\n")
    for i in range(1, count):
        make_models.build_add_sub(root / f"other{i}" / "1" / "model.onnx")
    return root


# Triton's quickstart repository (tests/triton_repository), served as it is. Its two image
# models come without their files (fetch_models.sh downloads them): a small ONNX classifier with
# the same tensors takes each one's place, the shapes the model sees being the configs' reshapes.
# A red picture is the labels' "RED WINE" (the red channel's mean picks that class).
TRITON_REPOSITORY = Path(__file__).resolve().parent / "triton_repository"
RED_WINE = {"densenet_onnx": 966, "inception_onnx": 967}  # the line of RED WINE in each label file, from 0


def build_imagenet_stand_in(path: Path, input_name: str, output_name: str, in_shape: list, out_shape: list,
                            channel_axis: int, classes: int, red_class: int) -> Path:
    """Channel means -> a linear layer that scores `red_class` by the red channel -> softmax,
    reshaped to `out_shape` (the shapes Triton's densenet/inception files have)."""
    spatial = [a for a in range(1, len(in_shape)) if a != channel_axis]
    weights = np.zeros((3, classes), np.float32)
    weights[0, red_class] = 8.0
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["means"], axes=spatial, keepdims=0),
        helper.make_node("MatMul", ["means", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("Reshape", ["probs", "out_shape"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes, "imagenet_stand_in",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array(out_shape, np.int64), "out_shape")],
    )
    return make_models._save(graph, path)


def make_triton_repository(root: Path) -> Path:
    """A copy of Triton's quickstart repository in `root`, with densenet_onnx's and
    inception_onnx's model files generated."""
    shutil.copytree(TRITON_REPOSITORY, root, ignore=shutil.ignore_patterns("README.md"))
    build_imagenet_stand_in(root / "densenet_onnx" / "1" / "model.onnx", "data_0", "fc6_1", [1, 3, 224, 224],
                            [1, 1000, 1, 1], 1, 1000, RED_WINE["densenet_onnx"])
    build_imagenet_stand_in(root / "inception_onnx" / "1" / "model.onnx", "input:0", "InceptionV3/Predictions/Softmax:0",
                            [1, 299, 299, 3], [1, 1001], 3, 1001, RED_WINE["inception_onnx"])
    return root
