"""A Triton model directory's config.pbtxt, read with Triton's own schema (config/triton_pb).

`read_pbtxt` gives the file as protobuf's JSON mapping with Triton's field names (the same
dict shape a repository load's `config` parameter has, see config/triton_override.py), so one
mapping turns either into inferd's config.toml keys.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format, text_format

from inferd.common.errors import ConfigError, clip
from inferd.config.model import TritonModel
from inferd.config.sequence import MAX_IDLE_US
from inferd.config.triton_mapping import OVERRIDE_KEYS, TYPES, Mapping, Refused, apply, batching, integer, restated
from inferd.config.triton_pb import model_config_pb2

MAX_PBTXT_BYTES = 1024 * 1024  # Triton's own configs are a few KiB; a bigger one is not a config


def read_pbtxt(path: Path) -> dict:
    """config.pbtxt as a dict (Triton's field names; enums as their names; 64-bit integers as
    strings, as protobuf's JSON writes them). Raises ConfigError with the parser's message."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PBTXT_BYTES + 1)
    except OSError as e:
        raise ConfigError(str(path), "config.pbtxt", f"cannot read it: {e.strerror or e}") from None
    if len(data) > MAX_PBTXT_BYTES:
        raise ConfigError(str(path), "config.pbtxt", f"larger than {MAX_PBTXT_BYTES} bytes")
    try:
        message = text_format.Parse(data.decode("utf-8"), model_config_pb2.ModelConfig())
    except UnicodeDecodeError:
        raise ConfigError(str(path), "config.pbtxt", "not UTF-8 text") from None
    except text_format.ParseError as e:
        raise ConfigError(str(path), "config.pbtxt", f"not a Triton model configuration: {e}") from None
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


# platform (or backend) -> what inferd runs it as; the model file each needs in a version directory.
PLATFORMS = {"onnxruntime_onnx": "onnxruntime_onnx", "onnxruntime": "onnxruntime_onnx",
             "pytorch_libtorch": "pytorch_libtorch", "pytorch": "pytorch_libtorch", "python": "python", "ensemble": "ensemble"}
MODEL_FILES = {"onnxruntime_onnx": "model.onnx", "pytorch_libtorch": "model.pt", "python": "model.py"}
# Model files of platforms inferd does not run, so a Triton version directory holding one says why.
OTHER_FILES = {"model.plan": "tensorrt_plan", "model.graphdef": "tensorflow_graphdef",
               "model.savedmodel": "tensorflow_savedmodel", "model.xml": "openvino", "model.bin": "openvino"}
SUPPORTED = "onnxruntime_onnx, pytorch_libtorch, python and ensemble"


def plain_file_name(value) -> bool:
    """A version directory's own file: no path, not hidden, nothing the filesystem refuses."""
    return isinstance(value, str) and 0 < len(value) <= 255 and not value.startswith(".") and not set(value) & {"/", "\\", "\0"}


def unsupported(platform: str) -> str:
    return f"platform {platform!r} is not supported by inferd (it runs {SUPPORTED} models)"


def platform_of(raw: dict, file: str) -> str:
    """What runs the model: onnxruntime_onnx, pytorch_libtorch, python or ensemble; "" when
    config.pbtxt names neither platform nor backend (the model file's extension decides)."""
    platform, backend = raw.get("platform", ""), raw.get("backend", "")
    named = [PLATFORMS.get(v) for v in (platform, backend) if v]
    for given, key in ((platform, "platform"), (backend, "backend")):
        if given and PLATFORMS.get(given) is None:
            raise ConfigError(file, key, unsupported(given))
    if len(set(named)) > 1:
        raise ConfigError(file, "backend", f"platform {platform!r} and backend {backend!r} disagree")
    return named[0] if named else ""


def to_toml(raw: dict, name: str, file: str) -> dict:
    """config.toml's keys for a config.pbtxt read by read_pbtxt (`name`: the model's directory),
    plus "triton": a TritonModel (the platform, the file as JSON, what inferd does its own way).
    Raises ConfigError naming the key and the reason for what inferd cannot honour."""
    platform = platform_of(raw, file)
    if raw.get("name", name) != name:
        raise ConfigError(file, "name", f"the config's name {clip(str(raw['name']))} is not the model's directory ({name})")
    notes: tuple[str, ...] = ()
    if platform == "ensemble":
        from inferd.config.triton_ensemble import ensemble_to_pipeline  # (config/triton_ensemble.py, issue 24's HD)

        data = dict(ensemble_to_pipeline(raw, name, file))
    else:
        m = Mapping(name, raw, strict=False)
        for key, value in raw.items():
            if key in ("platform", "backend", "default_model_filename"):
                continue
            try:
                apply(m, FILE_KEYS, key, value)
            except Refused as e:
                raise ConfigError(file, e.key, e.reason.removeprefix(f"{e.key}: ")) from None
        data, notes = m.out, tuple(m.notes)
        data.setdefault("max_batch_size", 0)  # Triton's default (protobuf's JSON leaves a 0 out): no batching
        if platform == "python" and "sequence_batching" in data:
            _declare_controls(data, batching(m))
    default_file = raw.get("default_model_filename", "")
    if default_file and not plain_file_name(default_file):
        raise ConfigError(file, "default_model_filename", "expected a plain file name (no '/', not hidden)")
    return data | {"triton": TritonModel(platform, raw, default_file, notes)}


def _declare_controls(data: dict, batched: bool) -> None:
    """A Python model's control inputs are inputs of the model (the daemon fills them in), as
    an ONNX file declares them; config.pbtxt lists them only under sequence_batching."""
    inputs = data.setdefault("inputs", [])
    named = {t["name"] for t in inputs}
    flags = {"int32_false_true": "INT32", "fp32_false_true": "FP32", "bool_false_true": "BOOL"}
    for control in data["sequence_batching"].get("control_input", []):
        if control["name"] in named:
            continue
        datatype = TYPES.get(control.get("data_type", ""), "")
        datatype = datatype or next((t for k, t in flags.items() if k in control), "INT32")
        inputs.append({"name": control["name"], "datatype": datatype, "shape": [-1, 1] if batched else [1]})


def _version_policy(m: Mapping, value: dict) -> None:
    if set(value) == {"all"}:
        m.out["version_policy"] = "all"
    elif set(value) == {"latest"}:
        restated(value["latest"], "version_policy.latest", {"num_versions"})
        try:
            m.out["version_policy"] = {"latest": integer(value["latest"].get("num_versions", 0), 1, 1 << 20)}
        except ValueError:
            raise Refused("version_policy.latest", "version_policy.latest: num_versions must be at least 1") from None
    elif set(value) == {"specific"}:
        restated(value["specific"], "version_policy.specific", {"versions"})
        versions = [integer(v, 0) for v in value["specific"].get("versions", [])]
        if not versions:
            raise Refused("version_policy.specific", "version_policy.specific: name at least one version")
        m.out["version_policy"] = {"specific": versions}
    elif value:
        raise ValueError(value)


def _sequence_batching(m: Mapping, value: dict) -> None:
    where = "sequence_batching"
    if value.get("state") or value.get("iterative_sequence"):
        raise Refused(where, f"{where}: implicit state and iterative sequences are not supported by inferd "
                      "(a model keeps its own state per sequence, see docs/sequences.md)")
    restated(value, where, {"direct", "oldest", "max_sequence_idle_microseconds", "control_input"})
    table: dict = {"strategy": "oldest" if "oldest" in value else "direct"}
    strategy = value.get(table["strategy"], {})
    restated(strategy, f"{where}.{table['strategy']}", {"max_candidate_sequences", "preferred_batch_size",
                                                        "max_queue_delay_microseconds", "minimum_slot_utilization"})
    if "max_candidate_sequences" in strategy:
        table["max_candidate_sequences"] = integer(strategy["max_candidate_sequences"], 0, 1 << 16)
    for key in ("max_queue_delay_microseconds", "preferred_batch_size", "minimum_slot_utilization"):
        if strategy.get(key):
            m.note(f"{where}.{key}", f"{where}.{table['strategy']}.{key}: inferd starts a sequence batch as soon as "
                   "its worker is free, with every ready sequence (no queue delay or preferred sizes)")
    if "max_sequence_idle_microseconds" in value:
        idle = integer(value["max_sequence_idle_microseconds"], 1, MAX_IDLE_US)
        table["max_sequence_idle_us"] = idle
        if idle > 300_000_000:  # an idle worker must outlive its sequences (config/sequence.py check_idle)
            m.out["idle_timeout_s"] = idle / 1e6
    controls = []
    for i, item in enumerate(value.get("control_input", [])):
        at = f"{where}.control_input[{i}]"
        restated(item, at, {"name", "control"})
        if len(item.get("control", [])) != 1:
            raise Refused(at, f"{at}: inferd takes exactly one control per control input")
        control = item["control"][0]
        restated(control, at, {"kind", "int32_false_true", "fp32_false_true", "bool_false_true", "data_type"})
        # (CONTROL_SEQUENCE_START is the enum's 0, which protobuf's JSON leaves out)
        controls.append({"name": item.get("name", ""), "kind": control.get("kind", "CONTROL_SEQUENCE_START")}
                        | {k: v for k, v in control.items() if k != "kind"})
    if controls:
        table["control_input"] = controls
    m.out["sequence_batching"] = table


def _noted(text: str):
    def handle(m: Mapping, value) -> None:
        if value:
            m.note(text.split(":")[0], text)
    return handle


def _refused(text: str):
    def handle(m: Mapping, value) -> None:
        if value:
            raise Refused(text.split(":")[0].split()[0], text)
    return handle


def _runtime(m: Mapping, value) -> None:
    if value not in ("", "model.py"):
        raise Refused("runtime", f"runtime {clip(str(value))}: inferd runs each platform with its own runtime")


FILE_KEYS = OVERRIDE_KEYS | {
    "version_policy": _version_policy,
    "sequence_batching": _sequence_batching,
    "runtime": _runtime,
    "model_warmup": _noted("model_warmup: inferd warms every model up at load with a batch of zeros (and measures its "
                           "memory on it); the samples named here are not run"),
    "optimization": _noted("optimization: a performance hint; inferd runs the model with its runtime's defaults"),
    "cc_model_filenames": _noted("cc_model_filenames: TensorRT's per-GPU files; inferd loads the version's one model file"),
    "metric_tags": _noted("metric_tags: inferd's metrics carry the model and version labels only"),
    "model_metrics": _noted("model_metrics: inferd's histograms have their own buckets"),
    "response_cache": _noted("response_cache: inferd does not cache responses; every request runs the model"),
    "model_operations": _refused("model_operations: custom operation libraries are not loaded by inferd"),
    "model_repository_agents": _refused("model_repository_agents: inferd runs no repository agents (checksums, "
                                        "decryption); the files would be served as they are"),
    "batch_input": _refused("batch_input: ragged batching is not supported by inferd"),
    "batch_output": _refused("batch_output: ragged batching is not supported by inferd"),
    "ensemble_scheduling": _refused("ensemble_scheduling needs platform \"ensemble\""),
}
