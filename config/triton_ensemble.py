"""A Triton ensemble (config.pbtxt with `platform: "ensemble"`) as an inferd pipeline
(daemon/models/pipeline.py): the config.toml data a pipeline of the same steps has.

    max_batch_size                         max_batch_size (the pipeline's limit is at most its steps')
    input[] {name, data_type, dims}        inputs = [{name, datatype, shape}] (shape = [-1] + dims when
    output[] {name, data_type, dims}       outputs = [...]                     max_batch_size > 0)
    ensemble_scheduling.step[]             [[pipeline]] steps, ordered by what each consumes
      model_name, model_version            model, version (-1: the version that serves)
      input_map {model input: tensor}      inputs = { model input = "tensor" }
      output_map {model output: tensor}    outputs = { model output = "tensor" }
    parameters {key: {string_value}}       [parameters]

Triton lists steps in any order and names every tensor once: an ensemble input or one step's
output. The steps are ordered so that each comes after the steps whose outputs it consumes; a
tensor produced twice, one nothing produces, a cycle or an unused input is a ConfigError
naming it. What a step model itself lacks (no such model, input or output, a datatype that
does not match) fails the pipeline's load with the reason, as for any pipeline. Keys with no
meaning for a pipeline (batching, instances, reshape, optional inputs, label files...) are
refused, naming the key; nothing is ignored. An ensemble's max_batch_size above a step model's
is no error (in Triton it is): the pipeline's limit is the smallest.
"""

from __future__ import annotations

from inferd.common.errors import ConfigError
from inferd.common.tensors import DATATYPES

_ACCEPTED = {"name", "platform", "backend", "max_batch_size", "input", "output", "ensemble_scheduling", "parameters"}
_TENSOR_KEYS = {"name", "data_type", "dims", "format"}
# Keys a tensor may carry only with the value a pipeline has anyway (protobuf's JSON leaves out defaults).
_RESTATED = {"format": "FORMAT_NONE", "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False}


def ensemble_to_pipeline(raw: dict, name: str, file: str) -> dict:
    """config.toml-shaped pipeline data (steps, inputs, outputs, parameters) from a config.pbtxt
    read by config/triton_config.py read_pbtxt (`raw`); `file` names it in errors."""
    for key in raw:
        if key not in _ACCEPTED:
            raise ConfigError(file, key, f"an ensemble runs as an inferd pipeline, which has no {key}: "
                              "each step model's own config says how it batches and runs")
    if raw.get("name", name) != name:
        raise ConfigError(file, "name", f"the config's name {raw['name']!r} is not the model directory's {name!r}")
    if raw.get("backend", "ensemble") != "ensemble":
        raise ConfigError(file, "backend", f"an ensemble has no backend, got {raw['backend']!r}")
    max_batch_size = _int(raw.get("max_batch_size", 0), file, "max_batch_size")
    batching = max_batch_size > 0
    inputs = [_tensor(t, batching, file, f"input[{i}]") for i, t in enumerate(raw.get("input", []))]
    outputs = [_tensor(t, batching, file, f"output[{i}]") for i, t in enumerate(raw.get("output", []))]
    if not outputs:
        raise ConfigError(file, "output", "an ensemble needs at least one output")
    steps = [_step(s, file, f"ensemble_scheduling.step[{i}]")
             for i, s in enumerate(raw.get("ensemble_scheduling", {}).get("step", []))]
    if not steps:
        raise ConfigError(file, "ensemble_scheduling", "an ensemble needs at least one step")
    _check_input_names(inputs, steps, file)
    data = {"max_batch_size": max_batch_size, "inputs": inputs, "outputs": outputs,
            "pipeline": _ordered(steps, inputs, outputs, file)}
    if "parameters" in raw:
        data["parameters"] = _parameters(raw["parameters"], file)
    return data


def _int(value, file: str, key: str) -> int:
    """protobuf's JSON writes 64-bit integers as strings."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(file, key, f"expected an integer, got {value!r}") from None


def _tensor(item: dict, batching: bool, file: str, where: str) -> dict:
    for key, value in item.items():
        if key not in _TENSOR_KEYS and _RESTATED.get(key, object()) != value:
            raise ConfigError(file, f"{where}.{key}", "an ensemble's tensors are handed between steps as they are: "
                              f"{key} is the step models' own to declare")
    if item.get("format", "FORMAT_NONE") != "FORMAT_NONE":
        raise ConfigError(file, f"{where}.format", "an ensemble's inputs have no image format: its first step's have")
    if not item.get("name"):
        raise ConfigError(file, f"{where}.name", "expected a tensor name")
    data_type = item.get("data_type", "TYPE_INVALID")
    datatype = "BYTES" if data_type == "TYPE_STRING" else data_type.removeprefix("TYPE_")
    if datatype not in DATATYPES:
        raise ConfigError(file, f"{where}.data_type", f"{data_type} is not a datatype inferd serves")
    dims = [_int(d, file, f"{where}.dims") for d in item.get("dims", [])]
    if any(d < -1 for d in dims):
        raise ConfigError(file, f"{where}.dims", f"expected integers >= -1 (-1 = dynamic), got {dims}")
    return {"name": item["name"], "datatype": datatype, "shape": [-1] * batching + dims}


def _step(item: dict, file: str, where: str) -> dict:
    if unknown := sorted(set(item) - {"model_name", "model_version", "input_map", "output_map", "model_namespace"}):
        raise ConfigError(file, where, f"unknown key {unknown[0]!r}")
    if item.get("model_namespace"):
        raise ConfigError(file, f"{where}.model_namespace", "inferd has one namespace of models")
    if not item.get("model_name"):
        raise ConfigError(file, f"{where}.model_name", "expected the step's model")
    version = _int(item.get("model_version", 0), file, f"{where}.model_version")  # (Triton's default is 0 too)
    if version < -1:
        raise ConfigError(file, f"{where}.model_version", f"expected -1 (the serving version) or a version, got {version}")
    step = {"model": item["model_name"], "version": "" if version == -1 else str(version),
            "inputs": dict(item.get("input_map", {})), "outputs": dict(item.get("output_map", {}))}
    if not step["inputs"]:
        raise ConfigError(file, f"{where}.input_map", f"step model {step['model']!r} takes no tensor of the ensemble")
    return step


def _check_input_names(inputs: list[dict], steps: list[dict], file: str) -> None:
    """An ensemble input named "<step model>.<x>" would read as that step's output in a pipeline."""
    models = {s["model"] for s in steps}
    for i, tensor in enumerate(inputs):
        model, dot, _ = tensor["name"].partition(".")
        if dot and model in models:
            raise ConfigError(file, f"input[{i}].name", f"{tensor['name']!r} would read as step model {model!r}'s "
                              "output in an inferd pipeline: rename the ensemble input")


def _ordered(steps: list[dict], inputs: list[dict], outputs: list[dict], file: str) -> list[dict]:
    """The steps, each after those whose outputs it consumes (Triton's listed order otherwise)."""
    producer: dict[str, int] = {}  # ensemble tensor -> the step that produces it
    for i, step in enumerate(steps):
        for tensor in step["outputs"].values():
            if tensor in producer or tensor in (t["name"] for t in inputs):
                first = "an ensemble input" if tensor not in producer else f"step {producer[tensor] + 1}"
                raise ConfigError(file, f"ensemble_scheduling.step[{i}].output_map",
                                  f"tensor {tensor!r} is produced twice: by {first} and by step {i + 1}")
            producer[tensor] = i
    known = producer.keys() | {t["name"] for t in inputs}
    for i, step in enumerate(steps):
        if unknown := sorted(set(step["inputs"].values()) - known):
            raise ConfigError(file, f"ensemble_scheduling.step[{i}].input_map",
                              f"tensor {unknown[0]!r} is neither an ensemble input nor any step's output")
    order = _topological(steps, producer, file)
    consumed = {t for s in steps for t in s["inputs"].values()}
    for i, tensor in enumerate(inputs):
        if tensor["name"] not in consumed:
            raise ConfigError(file, f"input[{i}]", f"ensemble input {tensor['name']!r} is used by no step")
    for i, tensor in enumerate(outputs):
        if tensor["name"] not in producer:
            raise ConfigError(file, f"output[{i}]", f"ensemble output {tensor['name']!r} is no step's output")
    return [steps[i] for i in order]


def _topological(steps: list[dict], producer: dict[str, int], file: str) -> list[int]:
    needs = [{producer[t] for t in s["inputs"].values() if t in producer} for s in steps]
    order: list[int] = []
    while len(order) < len(steps):
        ready = [i for i in range(len(steps)) if i not in order and needs[i] <= set(order)]
        if not ready:
            stuck = [i for i in range(len(steps)) if i not in order]
            tensor = next(t for t in steps[stuck[0]]["inputs"].values() if producer.get(t) in stuck)
            names = ", ".join(f"{i + 1} ({steps[i]['model']!r})" for i in stuck)
            raise ConfigError(file, "ensemble_scheduling", f"steps {names} wait for one another's outputs "
                              f"(a cycle through tensor {tensor!r})")
        order.append(ready[0])
    return order


def _parameters(value, file: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(v, dict) and set(v) <= {"string_value"} for v in value.values()):
        raise ConfigError(file, "parameters", "expected {key: {string_value}} entries")
    return {key: v.get("string_value", "") for key, v in value.items()}
