"""A stateful model's `[sequence_batching]` table (config.toml), with Triton's names
(model_config.proto ModelSequenceBatching) so that a config.pbtxt maps onto it:

    [sequence_batching]
    strategy = "direct"                  # or "oldest"
    max_sequence_idle_us = 1000000       # a sequence idle this long ends; its slot frees
    max_candidate_sequences = 0          # oldest: sequences holding a slot (0: max_batch_size x max_workers)

    [[sequence_batching.control_input]]
    name = "START"
    kind = "CONTROL_SEQUENCE_START"      # or _END, _READY (int32_false_true, fp32_false_true,
    int32_false_true = [0, 1]            # bool_false_true), _CORRID (data_type)
"""

from __future__ import annotations

import dataclasses
import math

from inferd.common.errors import ConfigError

START, END, READY, CORRID = (f"CONTROL_SEQUENCE_{k}" for k in ("START", "END", "READY", "CORRID"))
_FLAG_VALUES = {"int32_false_true": "INT32", "fp32_false_true": "FP32", "bool_false_true": "BOOL"}
_CORRID_TYPES = {"TYPE_UINT64": "UINT64", "TYPE_INT64": "INT64", "TYPE_UINT32": "UINT32", "TYPE_INT32": "INT32",
                 "TYPE_STRING": "BYTES"}
FP32_MAX = 3.4028234663852886e38
MAX_IDLE_US = 3_600_000_000  # an hour: a slot is never held longer by a silent client


@dataclasses.dataclass(frozen=True)
class Control:
    """One control input the daemon fills in each row: `values` are (false, true) for a flag."""

    name: str
    kind: str  # START, END, READY or CORRID
    datatype: str  # the V2 name: INT32, FP32, BOOL; CORRID: UINT64, INT64, UINT32, INT32, BYTES
    values: tuple = (0, 1)


@dataclasses.dataclass(frozen=True)
class SequenceBatching:
    strategy: str = "direct"
    max_sequence_idle_us: int = 1_000_000
    max_candidate_sequences: int = 0
    controls: tuple[Control, ...] = ()

    @property
    def control_names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.controls)

    @property
    def corrid(self) -> Control | None:
        return next((c for c in self.controls if c.kind == "CORRID"), None)


def _int(table: dict, key: str, default: int, low: int, high: int, file: str) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(file, f"sequence_batching.{key}", f"expected an integer from {low} to {high}, got {value!r}")
    return value


def _control(item, where: str, file: str) -> Control:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        raise ConfigError(file, where, "expected a table with name, kind and its values")
    kind = item.get("kind")
    extra = set(item) - {"name", "kind", "data_type", *_FLAG_VALUES}
    if kind not in (START, END, READY, CORRID) or extra:
        raise ConfigError(file, where, f"kind must be one of {START}, {END}, {READY}, {CORRID}"
                          + (f"; unknown key {sorted(extra)[0]!r}" if extra else ""))
    if kind == CORRID:
        if set(item) != {"name", "kind", "data_type"} or item["data_type"] not in _CORRID_TYPES:
            raise ConfigError(file, where, f"{CORRID} takes data_type, one of {', '.join(_CORRID_TYPES)}")
        return Control(item["name"], "CORRID", _CORRID_TYPES[item["data_type"]], ())
    given = [k for k in _FLAG_VALUES if k in item]
    if len(given) != 1 or "data_type" in item:
        raise ConfigError(file, where, f"{kind} takes exactly one of {', '.join(_FLAG_VALUES)}")
    values = item[given[0]]
    scalar = bool if given[0] == "bool_false_true" else (int, float) if given[0] == "fp32_false_true" else int
    if not isinstance(values, list) or len(values) != 2 or not all(
            isinstance(v, scalar) and (scalar is bool or not isinstance(v, bool)) for v in values):
        raise ConfigError(file, f"{where}.{given[0]}", "expected [false value, true value]")
    if scalar is int and not all(-(1 << 31) <= v < 1 << 31 for v in values):
        raise ConfigError(file, f"{where}.{given[0]}", f"expected INT32 values (-2147483648 to 2147483647), got {values}")
    if scalar is not int and scalar is not bool and not all(math.isfinite(v) and abs(v) <= FP32_MAX for v in values):
        raise ConfigError(file, f"{where}.{given[0]}", f"expected finite FP32 values, got {values}")
    return Control(item["name"], kind.removeprefix("CONTROL_SEQUENCE_"), _FLAG_VALUES[given[0]], tuple(values))


def check_idle(batching: SequenceBatching, idle_timeout_s: float, file: str) -> None:
    """A worker holding sequences must not be stopped as idle before they may be."""
    if idle_timeout_s > 0 and batching.max_sequence_idle_us > idle_timeout_s * 1e6:
        raise ConfigError(file, "sequence_batching.max_sequence_idle_us",
                          f"{batching.max_sequence_idle_us} us exceeds idle_timeout_s ({idle_timeout_s:g} s): an idle worker "
                          "would stop while its sequences live")


def sequence_batching(table, file: str) -> SequenceBatching:
    if not isinstance(table, dict):
        raise ConfigError(file, "sequence_batching", "expected a table")
    extra = set(table) - {"strategy", "max_sequence_idle_us", "max_candidate_sequences", "control_input"}
    if extra:
        raise ConfigError(file, f"sequence_batching.{sorted(extra)[0]}", "unknown key")
    strategy = table.get("strategy", "direct")
    if strategy not in ("direct", "oldest"):
        raise ConfigError(file, "sequence_batching.strategy", f'expected "direct" or "oldest", got {strategy!r}')
    items = table.get("control_input", [])
    if not isinstance(items, list) or len(items) > 16:
        raise ConfigError(file, "sequence_batching.control_input", "expected at most 16 [[sequence_batching.control_input]] tables")
    controls = tuple(_control(item, f"sequence_batching.control_input[{i}]", file) for i, item in enumerate(items))
    for seen in ({c.name for c in controls}, {c.kind for c in controls}):
        if len(seen) != len(controls):
            raise ConfigError(file, "sequence_batching.control_input", "each control input and each kind at most once")
    return SequenceBatching(
        strategy, _int(table, "max_sequence_idle_us", 1_000_000, 1, MAX_IDLE_US, file),
        _int(table, "max_candidate_sequences", 0, 0, 1 << 16, file), controls)


def triton_view(batching: SequenceBatching) -> dict:
    """model_config.proto's ModelSequenceBatching, as a model configuration reports it (a batch
    starts as soon as its worker is free: no queue delay)."""
    kinds = {"INT32": "int32_false_true", "FP32": "fp32_false_true", "BOOL": "bool_false_true"}
    types = {v: k for k, v in _CORRID_TYPES.items()}
    controls = []
    for c in batching.controls:
        entry = {"kind": f"CONTROL_SEQUENCE_{c.kind}", "int32_false_true": [], "fp32_false_true": [],
                 "bool_false_true": [], "data_type": types[c.datatype] if c.kind == "CORRID" else "TYPE_INVALID"}
        if c.kind != "CORRID":
            entry[kinds[c.datatype]] = list(c.values)
        controls.append({"name": c.name, "control": [entry]})
    view = {"max_sequence_idle_microseconds": batching.max_sequence_idle_us, "control_input": controls}
    if batching.strategy == "oldest":
        view["oldest"] = {"max_candidate_sequences": batching.max_candidate_sequences, "preferred_batch_size": [],
                          "max_queue_delay_microseconds": 0, "preserve_ordering": False}
    else:
        view["direct"] = {"max_queue_delay_microseconds": 0, "minimum_slot_utilization": 0.0}
    return view
