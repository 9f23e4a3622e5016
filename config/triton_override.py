"""A load request's configuration override (Triton's repository extension: the `config`
parameter, a JSON model_config.proto) as config.toml keys.

Each Triton key either maps onto an inferd key or is refused with the reason: nothing is
ignored. Keys that only restate what inferd does anyway (`"optional": false`,
`"preserve_ordering": false`...) are accepted when they say so.

    max_batch_size                         max_batch_size
    input[] {name, data_type, dims, format, reshape, optional}   [[inputs]] (shape = [-1] + dims when batching)
    output[] {name, data_type, dims, label_filename, reshape}   [[outputs]]
    dynamic_batching.max_queue_delay_microseconds      max_queue_delay_ms
    instance_group[] {count, kind, gpus}   max_workers (the counts' sum), device
    parameters {key: {string_value}}       [parameters]
    model_transaction_policy.decoupled     decoupled
"""

from __future__ import annotations

import json

from inferd.common.errors import InferdError, clip, invalid

MAX_CONFIG_BYTES = 1024 * 1024
_TYPES = {"TYPE_BOOL": "BOOL", "TYPE_UINT8": "UINT8", "TYPE_UINT16": "UINT16", "TYPE_UINT32": "UINT32",
          "TYPE_UINT64": "UINT64", "TYPE_INT8": "INT8", "TYPE_INT16": "INT16", "TYPE_INT32": "INT32",
          "TYPE_INT64": "INT64", "TYPE_FP16": "FP16", "TYPE_FP32": "FP32", "TYPE_FP64": "FP64",
          "TYPE_STRING": "BYTES", "TYPE_BF16": "BF16"}
# Keys accepted only with the value inferd has anyway.
_RESTATED = {"is_shape_tensor": False, "allow_ragged_batch": False, "optional": False, "preserve_ordering": False}


def from_triton(name: str, text) -> dict:
    """config.toml-shaped data from the JSON text of a Triton model configuration."""
    if not isinstance(text, str) or len(text) > MAX_CONFIG_BYTES:
        raise _bad(name, f"the config parameter must be a JSON string of at most {MAX_CONFIG_BYTES} bytes")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise _bad(name, f"the config parameter is not valid JSON: {clip(str(e))}") from None
    if not isinstance(doc, dict):
        raise _bad(name, "the config parameter must be a JSON object")
    out: dict = {}
    for key, value in doc.items():
        handler = _KEYS.get(key)
        if handler is None:
            raise _bad(name, f"config key {clip(key)} is not supported by inferd (supported: {', '.join(_KEYS)})")
        try:
            handler(name, value, out, doc)
        except (TypeError, ValueError, KeyError, AttributeError):
            raise _bad(name, f"config key {clip(key)} has a value of the wrong shape") from None
    return out


def _bad(name: str, why: str) -> InferdError:
    return invalid(f"failed to load {clip(name)}: {why}")


def _int(value, lo: int = 0) -> int:
    """protobuf's JSON: an integer, or one in a string ("16")."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if type(value) is not int or value < lo:
        raise ValueError(value)
    return value


def _name(name: str, value, out: dict, doc: dict) -> None:
    if value != name:
        raise _bad(name, f"the config's name {clip(str(value))} is not the model's")


def _max_batch_size(name: str, value, out: dict, doc: dict) -> None:
    out["max_batch_size"] = _int(value)


def _restated(name: str, item: dict, where: str, allowed: set[str]) -> None:
    for key, value in item.items():
        if key in allowed:
            continue
        if key not in _RESTATED or value != _RESTATED[key]:
            raise _bad(name, f"{where}: {clip(key)} = {json.dumps(value)[:80]} is not supported by inferd")


def _tensors(kind: str, extra: str):
    def handle(name: str, value, out: dict, doc: dict) -> None:
        if "max_batch_size" not in doc:
            raise _bad(name, f"config key {kind!r}: give max_batch_size too (dims exclude the batch dimension when it is above 0)")
        batching = _int(doc["max_batch_size"]) > 0
        tensors = []
        for i, item in enumerate(value):
            where = f"{kind}[{i}]"
            _restated(name, item, where, {"name", "data_type", "dims", extra, "reshape", "optional" if kind == "input" else "reshape"})
            datatype = _TYPES.get(item["data_type"])
            if datatype is None:
                raise _bad(name, f"{where}: unknown data_type {clip(str(item['data_type']))}")
            dims = [_int(d, -1) for d in item["dims"]]
            tensor = {"name": str(item["name"]), "datatype": datatype, "shape": [-1] * batching + dims}
            if item.get(extra, "") != "":  # ("" is Triton's none)
                tensor[extra] = item[extra]
            if "reshape" in item:  # (config/reshape.py checks it against the dims)
                tensor["reshape"] = [_int(d, -1) for d in item["reshape"].get("shape", [])]
            if item.get("optional", False) is not False:
                tensor["optional"] = item["optional"]
            tensors.append(tensor)
        out[{"input": "inputs", "output": "outputs"}[kind]] = tensors
    return handle


def _dynamic_batching(name: str, value, out: dict, doc: dict) -> None:
    _restated(name, value, "dynamic_batching", {"max_queue_delay_microseconds", "preferred_batch_size"})
    if value.get("preferred_batch_size"):
        raise _bad(name, "dynamic_batching.preferred_batch_size: inferd batches up to max_batch_size, it has no preferred sizes")
    if "max_queue_delay_microseconds" in value:
        out["max_queue_delay_ms"] = _int(value["max_queue_delay_microseconds"]) / 1000


def _instance_group(name: str, value, out: dict, doc: dict) -> None:
    devices = set()
    count = 0
    for i, group in enumerate(value):
        _restated(name, group, f"instance_group[{i}]", {"name", "count", "kind", "gpus"})
        count += _int(group.get("count", 1), 1)
        kind, gpus = group.get("kind", "KIND_AUTO"), [_int(g) for g in group.get("gpus", [])]
        if kind == "KIND_CPU" and not gpus:
            devices.add("cpu")
        elif kind in ("KIND_GPU", "KIND_AUTO") and len(gpus) <= 1:
            devices.add(f"cuda:{gpus[0]}" if gpus else "auto")
        else:
            raise _bad(name, f"instance_group[{i}]: kind {clip(str(kind))} with gpus {gpus} is not supported by inferd")
    if len(devices) > 1:
        raise _bad(name, "instance_group: inferd runs a model version's workers on one device")
    out["max_workers"] = count
    if devices:
        out["device"] = devices.pop()


def _parameters(name: str, value, out: dict, doc: dict) -> None:
    out["parameters"] = {str(k): v["string_value"] for k, v in value.items() if isinstance(v["string_value"], str)}
    if len(out["parameters"]) != len(value):
        raise ValueError("parameters")


def _transaction_policy(name: str, value, out: dict, doc: dict) -> None:
    _restated(name, value, "model_transaction_policy", {"decoupled"})
    if "decoupled" in value:
        if not isinstance(value["decoupled"], bool):
            raise ValueError("decoupled")
        out["decoupled"] = value["decoupled"]


_KEYS = {"name": _name, "max_batch_size": _max_batch_size, "input": _tensors("input", "format"),
         "output": _tensors("output", "label_filename"), "dynamic_batching": _dynamic_batching,
         "instance_group": _instance_group, "parameters": _parameters, "model_transaction_policy": _transaction_policy}
