"""Generate the small example ONNX models that `inferd serve` runs out of the box.

Nothing is downloaded: every model is built here with the onnx helper API (or torch) and
seeded or constructed weights, so the same files (and the same outputs) come out on every
machine. The tests and the benchmark build their models with these functions too.

With each tabular framework installed it writes that framework's example model
(make_tabular_models.py: scikit-learn, XGBoost, LightGBM, CatBoost, Keras, MLflow).
With torch installed it also writes the text pipeline: `tokenize` (Python, BYTES in),
`bag_classifier` (TorchScript), `label` (Python, BYTES out) and `text_classifier`, the pipeline
of the three (a config.toml alone).

    python examples/make_models.py DIR          # writes DIR/mlp.onnx, DIR/add_sub/..., ...
    python examples/make_models.py --keep DIR   # only what is missing (./dev.sh serve)
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import warnings

import numpy as np
import onnx
from make_tabular_models import make_tabular_examples
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime release of the last years

# V2 datatype name -> ONNX element type, for the identity model that covers every datatype.
V2_TO_ONNX = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(graph: onnx.GraphProto, path: pathlib.Path) -> pathlib.Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_mlp(path: pathlib.Path, sizes=(512, 1024, 1024, 10), seed: int = 0) -> pathlib.Path:
    """MLP with ReLU between layers: input FP32 [-1, sizes[0]] -> output FP32 [-1, sizes[-1]]."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal(n_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"h{i}"]))
        x = f"h{i}"
        if not last:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["output"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    return _save(graph, path)


def build_add_sub(path: pathlib.Path, width: int = 16, offset: int = 0) -> pathlib.Path:
    """Triton's classic 'simple' model: OUTPUT0 = INPUT0 + INPUT1 (+ offset), OUTPUT1 = INPUT0 - INPUT1.

    `offset` makes versions distinguishable by their outputs.
    """
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", width]) for n in ("INPUT0", "INPUT1")
    ]
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", width]) for n in ("OUTPUT0", "OUTPUT1")
    ]
    off = numpy_helper.from_array(np.array(offset, dtype=np.int32), "offset")
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["sum"]),
        helper.make_node("Add", ["sum", "offset"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    return _save(helper.make_graph(nodes, "add_sub", inputs, outputs, [off]), path)


def build_identity_all(path: pathlib.Path) -> pathlib.Path:
    """One Identity per V2 datatype: input IN_<TYPE> [-1, -1] -> output OUT_<TYPE> (same shape)."""
    inputs, outputs, nodes = [], [], []
    for v2, onnx_type in V2_TO_ONNX.items():
        inputs.append(helper.make_tensor_value_info(f"IN_{v2}", onnx_type, ["batch", "n"]))
        outputs.append(helper.make_tensor_value_info(f"OUT_{v2}", onnx_type, ["batch", "n"]))
        nodes.append(helper.make_node("Identity", [f"IN_{v2}"], [f"OUT_{v2}"]))
    return _save(helper.make_graph(nodes, "identity_all", inputs, outputs), path)


def build_fixed(path: pathlib.Path) -> pathlib.Path:
    """A model with no batch dimension (fixed shape [2, 3]): served with max_batch_size 0."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
    )
    return _save(graph, path)


def build_scores(path: pathlib.Path) -> pathlib.Path:
    """A classifier's head, for classification: input "scores" FP32 [-1, -1] -> the same values
    as "OUT_FP32" (Identity), "OUT_INT64", "OUT_BOOL" and "OUT_BYTES" (Casts)."""
    casts = {"OUT_INT64": TensorProto.INT64, "OUT_BOOL": TensorProto.BOOL, "OUT_BYTES": TensorProto.STRING}
    nodes = [helper.make_node("Identity", ["scores"], ["OUT_FP32"])]
    nodes += [helper.make_node("Cast", ["scores"], [name], to=to) for name, to in casts.items()]
    outputs = [helper.make_tensor_value_info("OUT_FP32", TensorProto.FLOAT, ["batch", "n"])]
    outputs += [helper.make_tensor_value_info(name, to, ["batch", "n"]) for name, to in casts.items()]
    inputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "n"])]
    return _save(helper.make_graph(nodes, "scores", inputs, outputs), path)


def build_image_classifier(path: pathlib.Path, chw=(3, 4, 4), classes: int = 5, nhwc: bool = False,
                           batching: bool = True) -> pathlib.Path:
    """What Triton's image_client expects: one image input FP32 ([batch,] C, H, W, or H, W, C
    with `nhwc`) -> one FP32 vector of `classes` scores ([batch,] classes): a linear layer over
    the flattened pixels."""
    c, h, w = chw
    image = [h, w, c] if nhwc else [c, h, w]
    weights = np.random.default_rng(3).standard_normal((c * h * w, classes)).astype(np.float32)
    inits = [numpy_helper.from_array(weights, "w"),
             numpy_helper.from_array(np.array([-1 if batching else 1, c * h * w], np.int64), "flat")]
    nodes = [helper.make_node("Reshape", ["image", "flat"], ["pixels"]),
             helper.make_node("MatMul", ["pixels", "w"], ["scores" if batching else "row"])]
    if not batching:
        inits.append(numpy_helper.from_array(np.array([classes], np.int64), "vector"))
        nodes.append(helper.make_node("Reshape", ["row", "vector"], ["scores"]))
    graph = helper.make_graph(
        nodes, "image_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, (["batch"] if batching else []) + image)],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, (["batch"] if batching else []) + [classes])],
        inits,
    )
    return _save(graph, path)


def build_slow(path: pathlib.Path, width: int = 1024, layers: int = 24) -> pathlib.Path:
    """A deliberately slow model (a chain of width x width MatMuls on every row): FP32 [-1, width]
    in and out. Tests use it to hold a worker busy long enough to kill it or fill a queue."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes = []
    x = "x"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [x, "w"], [f"h{i}"]))
        x = f"h{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(w, "w")],
    )
    return _save(graph, path)


def build_wide(path: pathlib.Path, width: int = 256, repeats: int = 1024) -> pathlib.Path:
    """x FP32 [-1, width] -> the sum of x tiled `repeats` times, [-1, 1]: every row costs a
    width x repeats x 4 byte intermediate (1 MiB by default). Memory-limit tests and the GPU
    memory script use it: its per-row cost is large and known."""
    graph = helper.make_graph(
        [helper.make_node("Tile", ["x", "repeats"], ["wide"]), helper.make_node("ReduceSum", ["wide", "axes"], ["y"])],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(np.array([1, repeats], np.int64), "repeats"),
         numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    return _save(graph, path)


ADD_SUB_CONFIG = """\
# Per-model settings; every key is optional (see README: model configuration).
max_batch_size = 32
max_queue_delay_ms = 0
"""


PYTHON_MODELS = pathlib.Path(__file__).resolve().parent / "python_models"

# The classifier's classes and the words that vote for each (its embedding table is built from
# them, not trained: the example shows the plumbing, and answers predictably).
TOPICS = {
    "sports": "match team goal score player league coach win won season football tennis",
    "weather": "rain sun snow wind storm forecast cloudy sunny temperature cold hot weather",
    "finance": "market stock stocks price bank shares profit inflation rates investors trading money",
    "tech": "software computer code server gpu chip model network data cloud linux python",
}

BAG_CLASSIFIER_CONFIG = """\
# TorchScript files do not carry their tensors' types: config.toml declares them, in the order
# forward() takes and returns them.
max_batch_size = 64
[[inputs]]
name = "tokens"
datatype = "INT64"
shape = [-1, 16]
[[outputs]]
name = "probabilities"
datatype = "FP32"
shape = [-1, 4]
"""

LABEL_CONFIG = f"""\
# Narrows the class's declared input to the classifier's 4 classes; [parameters] reach load().
[[inputs]]
name = "probabilities"
datatype = "FP32"
shape = [-1, 4]
[parameters]
labels = [{", ".join(f'"{t}"' for t in TOPICS)}]
min_score = 0.4
"""

TEXT_CLASSIFIER_CONFIG = """\
# A pipeline: one request in, each step run by its own model's queue (batched with that model's
# other traffic), tensors handed from step to step inside the daemon. An input a step does not
# map comes from the latest earlier step's output of that name, else from the request.
[[pipeline]]
model = "tokenize"            # text (BYTES) -> tokens
[[pipeline]]
model = "bag_classifier"      # tokens -> probabilities
inputs = { tokens = "tokenize.tokens" }
[[pipeline]]
model = "label"               # probabilities -> label (BYTES), score
"""


def _tokenizer():
    """The tokenize example's own token_ids(), so the classifier matches it exactly."""
    spec = importlib.util.spec_from_file_location("inferd_example_tokenize", PYTHON_MODELS / "tokenize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bag_classifier_module():
    """tokens INT64 [-1, 16] -> probabilities FP32 [-1, 4]: the mean embedding of the non-padding
    tokens (one score per topic), scaled, softmaxed."""
    import torch

    tokenize = _tokenizer()
    table = torch.zeros(tokenize.VOCAB, len(TOPICS))
    for topic, (_, words) in enumerate(TOPICS.items()):
        for word in words.split():
            table[tokenize.token_ids(word)[0], topic] = 1.0

    class BagClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding.from_pretrained(table)
            self.scale = 8.0

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            mask = (tokens != 0).unsqueeze(-1).to(torch.float32)
            summed = (self.embedding(tokens) * mask).sum(dim=1)
            mean = summed / mask.sum(dim=1).clamp(min=1.0)
            return torch.softmax(mean * self.scale, dim=1)

    return BagClassifier().eval()


def save_torchscript(module, path: pathlib.Path) -> pathlib.Path:
    """torch.jit.script + save, without their deprecation warnings: TorchScript files are what
    many users still have, so inferd serves them (and the example shows one)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def build_bag_classifier(path: pathlib.Path) -> pathlib.Path:
    """The classifier as TorchScript (needs torch)."""
    return save_torchscript(bag_classifier_module(), path)


class _Writer:
    """Writes the example files; with `keep`, a file that exists is left as it is (an edited
    config.toml survives `./dev.sh serve`, and nothing is rebuilt when nothing is missing)."""

    def __init__(self, keep: bool = False):
        self.keep = keep

    def build(self, path: pathlib.Path, builder) -> pathlib.Path:
        return path if self.keep and path.exists() else builder(path)

    def text(self, path: pathlib.Path, text: str) -> pathlib.Path:
        if not (self.keep and path.exists()):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return path

    def copy(self, source: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
        return self.text(path, source.read_text())


def make_text_examples(root: pathlib.Path, keep: bool = False) -> list[pathlib.Path]:
    """The text pipeline: two Python models around a TorchScript one, and the pipeline."""
    out = _Writer(keep)
    written = [out.copy(PYTHON_MODELS / f"{name}.py", root / name / "1" / "model.py") for name in ("tokenize", "label")]
    out.text(root / "label" / "config.toml", LABEL_CONFIG)
    written.append(out.build(root / "bag_classifier" / "1" / "model.pt", build_bag_classifier))
    out.text(root / "bag_classifier" / "config.toml", BAG_CLASSIFIER_CONFIG)
    written.append(out.text(root / "text_classifier" / "config.toml", TEXT_CLASSIFIER_CONFIG))
    return written


def make_examples(root: pathlib.Path, text: bool | None = None, keep: bool = False,
                  tabular: bool = False) -> list[pathlib.Path]:
    """The bundled example repository: both layouts of the model directory, (with torch, or
    when `text` is True) the text pipeline, and (`tabular`) one model per installed tabular
    framework. `keep`: files that exist are not written again."""
    root.mkdir(parents=True, exist_ok=True)
    out = _Writer(keep)
    written = [
        out.build(root / "mlp.onnx", build_mlp),  # bare file: version 1, metadata from the file
        out.build(root / "add_sub" / "1" / "model.onnx", build_add_sub),  # full layout with config.toml
        out.build(root / "identity_all.onnx", build_identity_all),
    ]
    out.text(root / "add_sub" / "config.toml", ADD_SUB_CONFIG)
    if text is None:
        text = importlib.util.find_spec("torch") is not None
        if not text:
            print("torch is not installed: the text pipeline examples are left out", file=sys.stderr)
    if text:
        written += make_text_examples(root, keep)
    if tabular:
        written += make_tabular_examples(root, keep)
    return written


def deny_group_and_other_writes(root: pathlib.Path) -> None:
    """inferd runs a Python or TorchScript model only if nobody but its owner (root or the
    daemon's user) can change it or a directory above it up to the models root: a checkout
    made under umask 002 would otherwise serve the text examples as FAILED."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~0o022)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=pathlib.Path, help="model repository to write into")
    parser.add_argument("--keep", action="store_true", help="leave files that exist as they are (edited configs too)")
    args = parser.parse_args()
    for path in make_examples(args.dir, keep=args.keep, tabular=True):
        print(path)
    deny_group_and_other_writes(args.dir)


if __name__ == "__main__":
    main()
