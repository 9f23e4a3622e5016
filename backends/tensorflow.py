"""TensorFlow backend: a SavedModel directory (`model.savedmodel/` in a version directory, as
Triton names it) and Keras 3 `.keras` files. Imported only inside a worker process, and
TensorFlow only when such a model loads (`pip install 'inferd[tensorflow]'`, the CPU build).

Tensors come from the model itself. A SavedModel serves its `serving_default` signature (or
the one config.toml's `[parameters] signature` names): the signature's input names, types and
shapes (None -> -1, so a leading None is the batch dimension), and its structured outputs.
A signature is one graph that computes all its outputs: asking for some of them selects from
the answer, it saves no work. A Keras model's tensors are model.inputs (named after their Input
layers) and its outputs (named after the layers that produce them); asking for some outputs
runs only the layers those need (a sub-model over the same weights).

Trust: .keras files load with Keras's safe_mode, so a file carrying Python bytecode (a Lambda
layer) is refused with Keras's reason, and custom classes are not found (their code is not in
the worker). Such a model can be exported as a SavedModel (model.export("model.savedmodel")),
a graph that runs no Python; a graph's ops can still read and write files as the worker's user.

Threads: intra_op_threads sets TensorFlow's intra-op pool (0: TensorFlow's default, one per
core, as for the other runtimes). The inter-op pool has one thread: a worker runs one batch at a
time, its ops in turn, each spread over the intra-op threads; a second pool of one thread per
core would only contend with them and with the daemon. Device: "cpu" hides the GPUs from
TensorFlow; "cuda:N" (or "auto" with a GPU) shows it that one GPU alone, its memory taken as needed.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from inferd.backends.base import BackendInputError
from inferd.backends.settings import BackendSettings
from inferd.common.tensors import ModelMetadata, TensorSpec, bytes_elements, object_tensor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines would flood the worker's log
try:
    import keras
    import tensorflow as tf
except ImportError:  # reported as the load's reason, with what to install
    tf = keras = None

_V2_TYPES = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "bfloat16": "BF16", "string": "BYTES",
}
_SIGNATURE = "serving_default"
_MAX_REASON = 300  # characters of TensorFlow's message kept in a caller's error
_MAX_SUBMODELS = 8  # traced graphs for subsets of a Keras model's outputs; then the whole model runs


def _spec(name: str, dtype, shape) -> TensorSpec:
    dtype = tf.as_dtype(dtype)
    datatype = _V2_TYPES.get(dtype.name)
    if datatype is None:
        raise RuntimeError(f"tensor {name!r} has type {dtype.name}, which the V2 protocol cannot carry")
    if tf.TensorShape(shape).rank is None:
        raise RuntimeError(f"tensor {name!r} has no known rank: give the signature a shape, e.g. [None, 4]")
    return TensorSpec(name, datatype, tuple(-1 if d is None else int(d) for d in tf.TensorShape(shape).as_list()))


def _set_threads(intra: int) -> None:
    # Only before TensorFlow's runtime starts, which nothing in the worker did before load().
    if tf.config.threading.get_intra_op_parallelism_threads() != intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if tf.config.threading.get_inter_op_parallelism_threads() != 1:
        tf.config.threading.set_inter_op_parallelism_threads(1)


def _place(setting: str, gpu: int | None) -> tuple[str, str]:
    """(TensorFlow's device, where it runs: "cpu" or "cuda:N") for `setting`; with "auto",
    `gpu` is the GPU the daemon placed the model on."""
    gpus = tf.config.list_physical_devices("GPU")
    if setting == "cpu" or setting == "auto" and not gpus:
        if gpus:
            tf.config.set_visible_devices([], "GPU")  # or TensorFlow takes every GPU's memory
        return "/CPU:0", "cpu"
    index = (gpu or 0) if setting == "auto" else int(setting[5:])
    if index >= len(gpus):
        raise RuntimeError(f"device {setting} requested but TensorFlow sees {len(gpus)} GPU(s) "
                           "(tensorflow-cpu has none: install tensorflow[and-cuda] instead)")
    tf.config.set_visible_devices([gpus[index]], "GPU")
    tf.config.experimental.set_memory_growth(gpus[index], True)
    return "/GPU:0", f"cuda:{index}"


class TensorFlowBackend:
    def __init__(self, path: Path, settings: BackendSettings) -> None:
        self.path = path
        self.settings = settings
        self.device_name = "cpu"  # where it runs, once loaded: "cpu" or "cuda:N"
        self._device = "/CPU:0"
        self._model: _SavedModel | _KerasModel | None = None

    def load(self) -> ModelMetadata:
        if tf is None:
            raise RuntimeError("TensorFlow models need tensorflow in the daemon's environment: "
                               "pip install 'inferd[tensorflow]'")
        _set_threads(self.settings.intra_op_threads)
        self._device, self.device_name = _place(self.settings.device, self.settings.gpu)
        with tf.device(self._device):
            if self.path.is_dir():
                self._model = _SavedModel(self.path, self.settings.parameters.get("signature", _SIGNATURE))
            else:
                self._model = _KerasModel(self.path)
        return self._model.metadata

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        feeds = {name: _to_tf(array) for name, array in inputs.items()}
        try:
            with tf.device(self._device):
                results = self._model.run(feeds, outputs)
        except tf.errors.InvalidArgumentError as e:  # values the graph refuses (an index out of range...)
            raise BackendInputError(f"the model refused the inputs: {e.message.strip()[:_MAX_REASON]}") from None
        return {name: _from_tf(results[name]) for name in outputs}

    def unload(self) -> None:
        self._model = None


def _to_tf(array: np.ndarray):
    if array.dtype == object:  # BYTES: TensorFlow strings are bytes
        return tf.constant(object_tensor(bytes_elements(array), array.shape), tf.string)
    return tf.convert_to_tensor(array)


def _from_tf(tensor) -> np.ndarray:
    array = tensor.numpy()
    return object_tensor(bytes_elements(array), array.shape) if array.dtype == object else array


class _SavedModel:
    platform = "tensorflow_savedmodel"

    def __init__(self, path: Path, signature: str) -> None:
        self.loaded = tf.saved_model.load(str(path))  # kept: the signature's variables live in it
        signatures = dict(self.loaded.signatures)
        if signature not in signatures:
            raise RuntimeError(f"the SavedModel has no {signature!r} signature (it has {sorted(signatures) or 'none'}); "
                               "name one with [parameters] signature = \"...\" in config.toml")
        self.function = signatures[signature]
        args, kwargs = self.function.structured_input_signature
        if args:  # signatures are called by keyword; a positional one is not a serving signature
            raise RuntimeError(f"signature {signature!r} takes positional inputs: export it with named inputs")
        inputs = tuple(_spec(name, s.dtype, s.shape) for name, s in sorted(kwargs.items()))
        outputs = tuple(_spec(name, s.dtype, s.shape) for name, s in sorted(self.function.structured_outputs.items()))
        self.metadata = ModelMetadata(self.platform, inputs, outputs)

    def run(self, feeds: dict, outputs: list[str]) -> dict:
        return self.function(**feeds)  # every output: the signature's graph computes them all


def _load_keras(path: Path):
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except ValueError as e:
        if "safe_mode" not in str(e):
            raise
        first = str(e).split(". ")[0]  # what it holds; the rest tells a Python caller how to load it anyway
        raise RuntimeError(f"{path.name} carries Python code, which inferd does not load from a .keras file "
                           f"(Keras safe_mode): {first}. Replace it with built-in layers, or export the model "
                           "as a SavedModel (model.export) and serve that") from None


class _KerasModel:
    platform = "keras"

    def __init__(self, path: Path) -> None:
        if not zipfile.is_zipfile(path):  # Keras would say "file not found"
            raise RuntimeError(f"{path.name} is not a .keras file (a zip archive written by model.save)")
        model = _load_keras(path)
        if not getattr(model, "inputs", None):
            raise RuntimeError("the Keras model has no inputs of its own (a subclassed model): "
                               "build it with keras.Input, or export it as a SavedModel")
        self.model = keras.Model(model.inputs, model.outputs)  # a functional view: its outputs have names
        names = list(self.model.output_names)
        if len(set(names)) != len(names):
            names = [f"output_{i}" for i in range(len(names))]
        self.input_names = [t.name for t in model.inputs]
        self.output_names = names
        self._signature = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in model.inputs]
        self._functions: dict[tuple[str, ...], object] = {}
        self.metadata = ModelMetadata(
            self.platform,
            tuple(_spec(t.name, t.dtype, t.shape) for t in model.inputs),
            tuple(_spec(name, t.dtype, t.shape) for name, t in zip(names, model.outputs)),
        )

    def run(self, feeds: dict, outputs: list[str]) -> dict:
        wanted = tuple(outputs)
        if wanted not in self._functions and len(self._functions) >= _MAX_SUBMODELS:
            wanted = tuple(self.output_names)  # every output, selected from (callers choose the subsets)
        function = self._functions.get(wanted) or self._function(wanted)
        results = function(*(feeds[name] for name in self.input_names))
        return dict(zip(wanted, results))

    def _function(self, wanted: tuple[str, ...]):
        """A graph over the layers `wanted` needs, traced once for any batch size."""
        chosen = [self.model.outputs[self.output_names.index(name)] for name in wanted]
        model = keras.Model(self.model.inputs, chosen)  # in `wanted`'s order
        single = len(self.input_names) == 1

        @tf.function(input_signature=self._signature)
        def run(*tensors):
            out = model(tensors[0] if single else list(tensors), training=False)
            return list(out) if isinstance(out, (list, tuple)) else [out]

        self._functions[wanted] = run
        return run
