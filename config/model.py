"""Per-model configuration: the settings every model has ([defaults] in the daemon's config,
overridden by the model's own config.toml), and what else a config.toml may say (tensors,
version policy, [parameters], pipeline steps)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from inferd.common.errors import ConfigError
from inferd.common.tensors import DATATYPES, TensorSpec
from inferd.config.loader import at_least, between, build, field, read_toml
from inferd.config.reshape import KEYS as SHAPING_KEYS
from inferd.config.reshape import option_value, tensor_shaping
from inferd.config.sequence import SequenceBatching, check_idle, sequence_batching

MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _device(value: str) -> str | None:
    if re.fullmatch(r"auto|cpu|cuda:\d+", value):
        return None
    return f"must be auto, cpu or cuda:N; got {value!r}"


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """Per-model settings: [defaults] in the daemon config, overridden by a model's config.toml."""

    max_batch_size: int = field(64, between(0, 1 << 20))
    max_queue_delay_ms: float = field(0.0, between(0, 60_000))
    max_queue_rows: int = field(0, at_least(0))  # 0 = derived from memory (inferd.scheduler.limits)
    max_queue_bytes: int = field(0, at_least(0))  # 0 = derived: a share of the queues' memory budget
    min_workers: int = field(0, between(0, 256))
    max_workers: int = field(2, between(1, 256))
    idle_timeout_s: float = field(300.0, at_least(0))  # idle workers stop (to min_workers); 0 = never
    cold_start_timeout_s: float = field(30.0, between(0.001, 3600))  # a request waits this long for a cold start
    load_timeout_s: float = field(120.0, between(0.001, 3600))  # a worker not loaded by then failed
    execution_timeout_s: float = field(120.0, between(0.001, 86400))  # a batch still running then fails; its worker is replaced
    device: str = field("auto", _device)
    intra_op_threads: int = field(0, between(0, 1024))  # 0 = the runtime's default
    intra_op_spinning: bool = False  # onnxruntime's idle threads spin for work (burns the event loop's CPU)
    busy_poll_us: int = field(500, between(0, 1_000_000))  # at light load, daemon and worker poll this long after a batch
    shared_memory: bool = True  # batch tensors to and from workers through shared memory
    idempotent: bool = True  # a batch whose worker died runs once more on another worker
    scale_up_wait_ms: float = field(20.0, between(0, 3_600_000))  # batches waiting this long...
    scale_up_window_s: float = field(1.0, between(0, 3600))  # ...for this long add a worker
    crash_loop_count: int = field(5, between(1, 1000))  # this many worker failures...
    crash_loop_window_s: float = field(60.0, between(0.001, 86400))  # ...within this window: FAILED
    typical_dim_size: int = field(16, between(1, 1 << 20))  # dynamic non-batch dimensions, when memory is measured

    def cross_check(self) -> tuple[str, str] | None:
        if self.min_workers > self.max_workers:
            return "min_workers", f"min_workers ({self.min_workers}) exceeds max_workers ({self.max_workers})"
        return None


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's versions are served (config.toml `version_policy`):
    { latest = N } (default N = 1), "all", or { specific = [1, 3] }."""

    latest: int = 1
    specific: tuple[int, ...] = ()
    all: bool = False

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.all:
            return ordered
        if self.specific:
            return [v for v in ordered if v in self.specific]
        return ordered[-self.latest:]


def _version_policy(value, file: str) -> VersionPolicy:
    key = "version_policy"
    if value == "all":
        return VersionPolicy(all=True)
    if isinstance(value, dict) and len(value) == 1:
        (kind, arg), = value.items()
        if kind == "latest" and isinstance(arg, int) and not isinstance(arg, bool) and arg >= 1:
            return VersionPolicy(latest=arg)
        if kind == "specific" and isinstance(arg, list) and arg and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in arg
        ):
            return VersionPolicy(specific=tuple(arg))
    raise ConfigError(file, key, 'expected { latest = N } (N >= 1), "all", or { specific = [versions] }')


@dataclasses.dataclass(frozen=True)
class PipelineStep:
    """One [[pipeline]] entry: a model, optionally a version, where its inputs come from
    (input name -> "<tensor>", "<earlier step's model>.<output>" or "<pipeline input>") and the
    names its outputs go by in the pipeline (output name -> "<tensor>")."""

    model: str
    version: str = ""
    inputs: tuple[tuple[str, str], ...] = ()
    outputs: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class PipelineTensor:
    """A pipeline's declared input or output (config.toml `inputs` / `outputs` beside its
    [[pipeline]] steps): a name, and the datatype and shape its step must have ("" / None: any)."""

    name: str
    datatype: str = ""
    shape: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class TritonModel:
    """What a config.pbtxt says beyond config.toml's keys (config/triton_config.py)."""

    platform: str  # onnxruntime_onnx | pytorch_libtorch | python | ensemble (from platform or backend)
    config: dict  # the file as JSON with Triton's field names: what a Triton Python model's initialize gets
    default_model_filename: str = ""  # the version directory's model file, when not model.<ext>
    notes: tuple[str, ...] = ()  # what it asks that inferd does its own way (shown with the model)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    settings: ModelSettings
    version_policy: VersionPolicy = VersionPolicy()
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    explicit: frozenset[str] = frozenset()  # keys the model's own file set
    parameters: dict = dataclasses.field(default_factory=dict)  # [parameters]: free-form, for the model's code
    pipeline: tuple[PipelineStep, ...] = ()  # a model made of other models, step by step
    pipeline_inputs: tuple[PipelineTensor, ...] = ()  # declared (checked at load); () = as its steps take them
    pipeline_outputs: tuple[PipelineTensor, ...] = ()  # drawn from any step; () = the last step's
    sequence_batching: SequenceBatching | None = None  # a stateful model (config/sequence.py)
    input_formats: dict[str, str] = dataclasses.field(default_factory=dict)  # [[inputs]] format (image layout)
    label_files: dict[str, str] = dataclasses.field(default_factory=dict)  # [[outputs]] label_filename
    decoupled: bool | None = None  # 0..N responses per request (None: unsaid, a Python model's class says)
    triton: TritonModel | None = None  # read from a config.pbtxt
    reshape: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)  # tensor -> the shape the model sees
    optional_inputs: frozenset[str] = frozenset()  # inputs a request may leave out
    backend: str = ""  # which backend runs the file ("": its extension, or its content, decides)


def _pipeline(items, file: str) -> tuple[PipelineStep, ...]:
    if not isinstance(items, list) or not items:
        raise ConfigError(file, "pipeline", "expected one or more [[pipeline]] tables (model, version, inputs, outputs)")
    steps = []
    for i, item in enumerate(items):
        where = f"pipeline[{i}]"
        if not isinstance(item, dict) or "model" not in item or set(item) - {"model", "version", "inputs", "outputs"}:
            raise ConfigError(file, where, "expected a table with model and optionally version, inputs and outputs")
        model, version = item["model"], item.get("version", "")
        if not isinstance(model, str) or not MODEL_NAME.fullmatch(model):
            raise ConfigError(file, f"{where}.model", f"expected a model name ([A-Za-z0-9_.-]+), got {model!r}")
        if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
            version = str(version)
        if not isinstance(version, str) or version and not version.isdigit():
            raise ConfigError(file, f"{where}.version", f"expected a version number, got {version!r}")
        inputs = _names(item.get("inputs", {}), file, f"{where}.inputs",
                        'expected a table: input name = "<tensor>", "<step model>.<output>" or "<pipeline input>"')
        outputs = _names(item.get("outputs", {}), file, f"{where}.outputs", 'expected a table: output name = "<tensor>"')
        steps.append(PipelineStep(model, version, inputs, outputs))
    return tuple(steps)


def _names(value, file: str, where: str, expected: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise ConfigError(file, where, expected)
    return tuple(value.items())


def _pipeline_tensors(items, file: str, key: str) -> tuple[PipelineTensor, ...]:
    """A pipeline's `inputs` / `outputs`: tensor names, or tables {name, datatype, shape} whose
    datatype and shape (both optional) its steps must agree with."""
    if not isinstance(items, list):
        raise ConfigError(file, key, 'expected an array of names or tables {name, datatype, shape}')
    tensors = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        item = {"name": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or "name" not in item or set(item) - {"name", "datatype", "shape"}:
            raise ConfigError(file, where, "expected a name or a table with name and optionally datatype and shape")
        name, datatype, shape = item["name"], item.get("datatype", ""), item.get("shape")
        if not isinstance(name, str) or not name:
            raise ConfigError(file, f"{where}.name", "expected a non-empty string")
        if name in (t.name for t in tensors):
            raise ConfigError(file, f"{where}.name", f"{name!r} is listed twice")
        if datatype and datatype not in DATATYPES:
            raise ConfigError(file, f"{where}.datatype", f"unknown datatype {datatype!r}; one of {', '.join(DATATYPES)}")
        if shape is not None and not _is_shape(shape):
            raise ConfigError(file, f"{where}.shape", "expected an array of integers >= -1 (-1 = dynamic)")
        tensors.append(PipelineTensor(name, datatype, None if shape is None else tuple(shape)))
    return tuple(tensors)


def _is_shape(shape) -> bool:
    return isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape)


# What a tensor table may say beside name, datatype and shape: an input's image layout
# (Triton's config `format`, read by image clients) and an output's label file (classification).
FORMATS = ("FORMAT_NONE", "FORMAT_NCHW", "FORMAT_NHWC")
_EXTRA = {"inputs": "format", "outputs": "label_filename"}


def _tensor_specs(items, file: str, key: str, extras: dict | None = None, shaping: dict | None = None) -> tuple[TensorSpec, ...]:
    """The tensors of `key`; each one's optional extra key (format / label_filename) into `extras`,
    its reshape / optional (config/reshape.py) into `shaping` by "key[i]"."""
    if not isinstance(items, list):
        raise ConfigError(file, key, "expected an array of tables {name, datatype, shape}")
    specs = []
    extra = _EXTRA.get(key)
    allowed = {"name", "datatype", "shape", extra, *SHAPING_KEYS.get(key, ())}
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(item, dict) or not {"name", "datatype", "shape"} <= set(item) <= allowed:
            optional = sorted(k for k in allowed - {"name", "datatype", "shape"} if k)
            also = f" and optionally {', '.join(optional)}" if optional else ""
            raise ConfigError(file, where, f"expected a table with exactly name, datatype, shape{also}")
        name, datatype, shape = item["name"], item["datatype"], item["shape"]
        if not isinstance(name, str) or not name:
            raise ConfigError(file, f"{where}.name", "expected a non-empty string")
        if datatype not in DATATYPES:
            raise ConfigError(file, f"{where}.datatype", f"unknown datatype {datatype!r}; one of {', '.join(DATATYPES)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape):
            raise ConfigError(file, f"{where}.shape", "expected an array of integers >= -1 (-1 = dynamic)")
        specs.append(TensorSpec(name, datatype, tuple(shape)))
        if extra in item and extras is not None:
            extras[name] = _extra_value(extra, item[extra], file, f"{where}.{extra}")
        if shaping is not None:
            shaping[where] = {k: option_value(k, item[k], file, f"{where}.{k}") for k in SHAPING_KEYS.get(key, ()) if k in item}
    return tuple(specs)


def _extra_value(key: str, value, file: str, where: str) -> str:
    if key == "format":
        if value not in FORMATS:
            raise ConfigError(file, where, f"expected one of {', '.join(FORMATS)}, got {value!r}")
        return value
    # A label file: a plain relative path inside the model's directory (read at load, see
    # daemon/models/labels.py, which also refuses a symlink that leads out of it).
    if not isinstance(value, str) or not value or len(value) > 255 or value.startswith("/") or "\\" in value or "\0" in value or any(
        part in ("", ".", "..") or part.startswith(".") for part in value.split("/")
    ):
        raise ConfigError(file, where, "expected a file name relative to the model's directory "
                          "(no absolute path, no '..', no hidden parts)")
    return value


def load_model_config(path: Path | None, defaults: ModelSettings, override: dict | None = None) -> ModelConfig:
    """A model's config.toml on top of the daemon's [defaults]; no file means the defaults.
    `override`: keys that replace the file's (a load request's configuration, see
    config/triton_override.py)."""
    exists = path is not None and path.exists()
    if not exists and not override:
        return ModelConfig(defaults)
    data = _read_config(path) if exists else {}
    return model_config_from(data | (override or {}), str(path) if exists else "the load request's config", defaults)


CHOOSE_ONE = "config.pbtxt (Triton's) and config.toml (inferd's) both configure this model: choose one"


def _read_config(path: Path) -> dict:
    """config.toml's data, or a Triton config.pbtxt's as config.toml keys (with "triton")."""
    other = path.with_name("config.toml" if path.name == "config.pbtxt" else "config.pbtxt")
    if other.exists():
        raise ConfigError(str(path.parent), "config.pbtxt", CHOOSE_ONE)
    if path.name != "config.pbtxt":
        return read_toml(path)
    from inferd.config.triton_config import read_pbtxt, to_toml  # (it imports this module)

    return to_toml(read_pbtxt(path), path.parent.name, str(path))


def model_config_from(data: dict, file: str, defaults: ModelSettings) -> ModelConfig:
    """config.toml's data (`file` names it in errors) on top of `defaults`; key "triton": the
    TritonModel of a config.pbtxt (config/triton_config.py)."""
    data = dict(data)
    triton = data.pop("triton", None)
    if "pipeline" in data:
        extra = sorted(set(data) - {"pipeline", "parameters", "inputs", "outputs", "max_batch_size"})
        if extra:
            raise ConfigError(file, extra[0], "a pipeline's config.toml holds only [[pipeline]] steps, its inputs, outputs "
                              "and max_batch_size, and [parameters]: batching and workers are its steps' own")
        cap = {"max_batch_size": data["max_batch_size"]} if "max_batch_size" in data else {}  # (below its steps')
        return ModelConfig(build(ModelSettings, dataclasses.asdict(defaults) | cap, file), explicit=frozenset(cap),
                           parameters=data.get("parameters", {}), pipeline=_pipeline(data["pipeline"], file),
                           pipeline_inputs=_pipeline_tensors(data.get("inputs", []), file, "inputs"),
                           pipeline_outputs=_pipeline_tensors(data.get("outputs", []), file, "outputs"), triton=triton)
    formats, labels, shaping = {}, {}, {}
    inputs = _tensor_specs(data.pop("inputs"), file, "inputs", formats, shaping) if "inputs" in data else ()
    outputs = _tensor_specs(data.pop("outputs"), file, "outputs", labels, shaping) if "outputs" in data else ()
    policy = _version_policy(data.pop("version_policy"), file) if "version_policy" in data else VersionPolicy()
    parameters = data.pop("parameters", {})
    if not isinstance(parameters, dict):
        raise ConfigError(file, "parameters", "expected a table of values for the model's code")
    sequences = sequence_batching(data.pop("sequence_batching"), file) if "sequence_batching" in data else None
    decoupled = data.pop("decoupled", None)
    backend = data.pop("backend", "")
    if not isinstance(backend, str) or not re.fullmatch(r"[a-z0-9_]*", backend):
        raise ConfigError(file, "backend", f"expected a backend's name (e.g. \"xgboost\"), got {backend!r}")
    if decoupled is not None and not isinstance(decoupled, bool):
        raise ConfigError(file, "decoupled", f"expected true or false, got {decoupled!r}")
    settings = build(ModelSettings, dataclasses.asdict(defaults) | data, file)
    if sequences is not None:
        check_idle(sequences, settings.idle_timeout_s, file)
    reshape, optional = tensor_shaping(inputs, outputs, shaping, settings.max_batch_size, file)
    return ModelConfig(settings, policy, inputs, outputs, frozenset(data), parameters,
                       input_formats=formats, label_files=labels, sequence_batching=sequences, decoupled=decoupled,
                       reshape=reshape, optional_inputs=optional, triton=triton, backend=backend)
