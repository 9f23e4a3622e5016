"""Triton's model configuration (model_config.proto as protobuf's JSON mapping, Triton's field
names) as config.toml keys: the one mapping behind a config.pbtxt (config/triton_config.py) and
a load request's `config` parameter (config/triton_override.py).

Each key is mapped, noted (a performance hint, or something inferd does its own way: the note
says what it does instead, and is shown with the model), or refused with the reason (it would
change results). A load request's override is strict: what a config.pbtxt may only note is
refused there, and only the keys of OVERRIDE_KEYS are accepted.

    max_batch_size                              max_batch_size (dims exclude the batch dimension when > 0)
    input[] / output[]                          [[inputs]] / [[outputs]]: shape = [-1] + dims when batching,
        reshape, format, label_filename, optional   reshape (Triton's: no batch dimension), format, label_filename, optional
    dynamic_batching.max_queue_delay_microseconds   max_queue_delay_ms
    dynamic_batching.default_queue_policy.max_queue_size  max_queue_rows
    instance_group[] {count, kind, gpus}        max_workers (the counts' sum), device
    version_policy                              version_policy
    parameters {key: {string_value}}            [parameters]
    sequence_batching                           [sequence_batching] (config/sequence.py)
    model_transaction_policy.decoupled          decoupled
"""

from __future__ import annotations

import dataclasses
import json

from inferd.common.errors import clip

TYPES = {"TYPE_BOOL": "BOOL", "TYPE_UINT8": "UINT8", "TYPE_UINT16": "UINT16", "TYPE_UINT32": "UINT32",
         "TYPE_UINT64": "UINT64", "TYPE_INT8": "INT8", "TYPE_INT16": "INT16", "TYPE_INT32": "INT32",
         "TYPE_INT64": "INT64", "TYPE_FP16": "FP16", "TYPE_FP32": "FP32", "TYPE_FP64": "FP64",
         "TYPE_STRING": "BYTES", "TYPE_BF16": "BF16"}
# Keys accepted only with the value inferd has anyway (protobuf's defaults, which a JSON
# override may restate; a config.pbtxt read by read_pbtxt never carries them).
_RESTATED = {"is_shape_tensor": False, "allow_ragged_batch": False, "optional": False, "preserve_ordering": False,
             "is_non_linear_format_io": False}
MAX_DIM = 1 << 31  # a dimension beyond this is no tensor a request could carry
MAX_DIMS = 32
MAX_TENSORS = 1024


class Refused(Exception):
    """A key inferd cannot honour: `key` where, `reason` why."""

    def __init__(self, key: str, reason: str):
        super().__init__(reason)
        self.key, self.reason = key, reason


@dataclasses.dataclass
class Mapping:
    """One configuration being mapped: `out` collects config.toml keys, `notes` what inferd does
    its own way. `strict` (a load request's override): every note is refused instead."""

    name: str
    doc: dict
    strict: bool
    out: dict = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def note(self, key: str, text: str) -> None:
        if self.strict:
            raise Refused(key, text)
        self.notes.append(text)


def integer(value, lo: int = 0, hi: int = 1 << 63) -> int:
    """protobuf's JSON: an integer, or one in a string ("16")."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(value)
    return value


def restated(item: dict, where: str, allowed: set[str]) -> None:
    """Refuses any key of `item` beyond `allowed`, unless it restates inferd's own behaviour."""
    for key, value in item.items():
        if key in allowed:
            continue
        if key not in _RESTATED or value != _RESTATED[key]:
            raise Refused(f"{where}.{key}", f"{where}: {clip(key)} = {json.dumps(value)[:80]} is not supported by inferd")


def _name(m: Mapping, value) -> None:
    if value != m.name:
        raise Refused("name", f"the config's name {clip(str(value))} is not the model's ({clip(m.name)}: its directory)")


def _max_batch_size(m: Mapping, value) -> None:
    m.out["max_batch_size"] = integer(value, 0, 1 << 31)


def batching(m: Mapping) -> bool:
    """Whether dims exclude a batch dimension (Triton: max_batch_size above 0; a config.pbtxt
    that leaves it out says 0)."""
    if "max_batch_size" not in m.doc:
        if m.strict:
            raise Refused("max_batch_size", "give max_batch_size too (dims exclude the batch dimension when it is above 0)")
        return False
    return integer(m.doc["max_batch_size"]) > 0


def _dims(values, where: str) -> list[int]:
    if not isinstance(values, list) or len(values) > MAX_DIMS:
        raise Refused(where, f"{where}: expected at most {MAX_DIMS} dimensions")
    dims = []
    for d in values:
        try:
            dims.append(integer(d, -1, MAX_DIM))
        except ValueError:
            raise Refused(where, f"{where}: dimensions are -1 (dynamic) or 0 to {MAX_DIM}, got {clip(str(d))}") from None
    return dims


def _tensors(kind: str, extra: str):
    def handle(m: Mapping, value) -> None:
        batched = [-1] * batching(m)
        if not isinstance(value, list) or len(value) > MAX_TENSORS:
            raise Refused(kind, f"{kind}: expected at most {MAX_TENSORS} tensors")
        tensors = []
        for i, item in enumerate(value):
            where = f"{kind}[{i}]"
            restated(item, where, {"name", "data_type", "dims", extra, "reshape"} | ({"optional"} if kind == "input" else set()))
            datatype = TYPES.get(item.get("data_type", "TYPE_INVALID"))
            if datatype is None:
                raise Refused(where, f"{where}: unknown data_type {clip(str(item.get('data_type', 'TYPE_INVALID')))}")
            if not isinstance(item.get("name"), str) or not item["name"]:
                raise Refused(where, f"{where}: a tensor needs a name")
            tensor = {"name": item["name"], "datatype": datatype, "shape": batched + _dims(item.get("dims", []), f"{where}.dims")}
            if item.get(extra, "") != "":  # ("" is Triton's none)
                tensor[extra] = item[extra]
            if "reshape" in item:
                # (as Triton's: without the batch dimension; config/reshape.py checks it against the dims)
                tensor["reshape"] = _dims(item["reshape"].get("shape", []), f"{where}.reshape.shape")
            if item.get("optional", False) is not False:  # (config/reshape.py checks the value)
                tensor["optional"] = item["optional"]
            tensors.append(tensor)
        m.out[{"input": "inputs", "output": "outputs"}[kind]] = tensors
    return handle


def _dynamic_batching(m: Mapping, value) -> None:
    restated(value, "dynamic_batching", {"max_queue_delay_microseconds", "preferred_batch_size", "priority_levels",
                                         "default_priority_level", "priority_queue_policy", "default_queue_policy",
                                         "preserve_ordering"})
    if "max_queue_delay_microseconds" in value:
        m.out["max_queue_delay_ms"] = integer(value["max_queue_delay_microseconds"], 0, 60_000_000) / 1000
    if value.get("preferred_batch_size"):
        m.note("dynamic_batching.preferred_batch_size",
               "dynamic_batching.preferred_batch_size: inferd batches up to max_batch_size, it has no preferred sizes")
    if value.get("preserve_ordering"):
        m.note("dynamic_batching.preserve_ordering", "dynamic_batching.preserve_ordering: inferd answers each request "
               "as its batch completes (a caller's requests are not held back for earlier ones)")
    if any(value.get(k) for k in ("priority_levels", "default_priority_level", "priority_queue_policy")):
        m.note("dynamic_batching.priority_levels", "dynamic_batching priority levels: inferd has one queue per model, "
               "served first come first served; request priorities are not used")
    if "default_queue_policy" in value:
        _queue_policy(m, value["default_queue_policy"])


def _queue_policy(m: Mapping, policy: dict) -> None:
    where = "dynamic_batching.default_queue_policy"
    restated(policy, where, {"max_queue_size", "default_timeout_microseconds", "timeout_action", "allow_timeout_override"})
    if "max_queue_size" in policy:
        m.out["max_queue_rows"] = integer(policy["max_queue_size"], 0, 1 << 31)
        m.note(f"{where}.max_queue_size", f"{where}.max_queue_size: inferd bounds the queue in rows (max_queue_rows), "
               "a request counting its batch size; beyond it requests are refused at once (RESOURCE_EXHAUSTED)")
    if any(policy.get(k) for k in ("default_timeout_microseconds", "timeout_action", "allow_timeout_override")):
        m.note(f"{where}.default_timeout_microseconds", f"{where} timeouts: inferd keeps a request queued until it "
               "runs or its own timeout (the client's) passes; there is no per-model queue timeout")


def _instance_group(m: Mapping, value) -> None:
    devices, count = set(), 0
    for i, group in enumerate(value):
        where = f"instance_group[{i}]"
        hints = set() if m.strict else {"rate_limiter", "passive", "host_policy"}
        restated(group, where, {"name", "count", "kind", "gpus"} | hints)
        try:
            count += integer(group.get("count", 1), 1, 256)
        except ValueError:
            raise Refused(f"{where}.count", f"{where}.count: expected 1 to 256 instances, got {clip(str(group['count']))}") from None
        kind, gpus = group.get("kind", "KIND_AUTO"), [integer(g, 0, 1024) for g in group.get("gpus", [])]
        if kind == "KIND_CPU" and not gpus:
            devices.add("cpu")
        elif kind in ("KIND_GPU", "KIND_AUTO") and len(gpus) <= 1:
            devices.add(f"cuda:{gpus[0]}" if gpus else "auto")
        else:
            raise Refused(where, f"{where}: kind {clip(str(kind))} with gpus {gpus} is not supported by inferd "
                          "(a version's workers run on one device: KIND_CPU, or KIND_GPU with at most one gpu)")
        for key in ("rate_limiter", "passive", "host_policy"):
            if group.get(key):
                m.note(f"{where}.{key}", f"{where}.{key}: inferd schedules a model's workers itself (no rate limiter, "
                       "passive instances or host policies)")
    if len(devices) > 1:
        raise Refused("instance_group", "instance_group: inferd runs a model version's workers on one device")
    if count > 256:
        raise Refused("instance_group", f"instance_group: {count} instances in all; inferd runs at most 256 workers a version")
    m.out["max_workers"] = count
    if devices:
        m.out["device"] = devices.pop()


def _parameters(m: Mapping, value) -> None:
    out = {}
    for key, v in value.items():
        if not isinstance(v, dict) or set(v) - {"string_value"} or not isinstance(v.get("string_value", ""), str):
            raise ValueError("parameters")
        out[str(key)] = v.get("string_value", "")
    if "EXECUTION_ENV_PATH" in out and not m.strict:
        raise Refused("parameters.EXECUTION_ENV_PATH", "parameters.EXECUTION_ENV_PATH: inferd runs Python models in "
                      "its own environment; a packed conda environment is not supported")
    m.out["parameters"] = out


def _transaction_policy(m: Mapping, value) -> None:
    restated(value, "model_transaction_policy", {"decoupled"})
    if "decoupled" in value:
        if not isinstance(value["decoupled"], bool):
            raise ValueError("decoupled")
        m.out["decoupled"] = value["decoupled"]


OVERRIDE_KEYS = {"name": _name, "max_batch_size": _max_batch_size, "input": _tensors("input", "format"),
                 "output": _tensors("output", "label_filename"), "dynamic_batching": _dynamic_batching,
                 "instance_group": _instance_group, "parameters": _parameters,
                 "model_transaction_policy": _transaction_policy}


def apply(m: Mapping, keys: dict, key: str, value) -> None:
    """Maps one top-level key of m.doc with `keys`' handler; a value of the wrong shape is Refused."""
    handler = keys.get(key)
    if handler is None:
        raise Refused(key, f"config key {clip(key)} is not supported by inferd (supported: {', '.join(keys)})")
    try:
        handler(m, value)
    except (TypeError, ValueError, KeyError, AttributeError):
        raise Refused(key, f"config key {clip(key)} has a value of the wrong shape") from None
