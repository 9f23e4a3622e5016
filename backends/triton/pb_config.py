"""pb_utils' model configuration helpers: ModelConfig (what a model's auto_complete_config
gets and returns), the get_*_config_by_name lookups, and the configuration as the shim hands
it to a model: Triton's JSON with its 64-bit numbers as numbers (protobuf's JSON mapping
writes them as strings; Triton gives models numbers)."""

from __future__ import annotations

import json

# Triton's int64 fields that a model reads (protobuf's JSON writes them as strings).
_INT64_KEYS = frozenset({
    "dims", "shape", "max_queue_delay_microseconds", "default_timeout_microseconds",
    "max_sequence_idle_microseconds", "preferred_batch_size", "priority_levels", "default_priority_level",
    "max_queue_size", "count", "gpus", "max_candidate_sequences",
})


def _as_int(value):
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def normalized(config: dict) -> dict:
    """A copy of a config.pbtxt read as JSON, its integer fields as ints, with the fields every
    Triton model may read (name, max_batch_size, input, output) present."""

    def walk(node):
        if isinstance(node, dict):
            return {k: (_ints(v) if k in _INT64_KEYS else walk(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    def _ints(value):
        return [_as_int(v) for v in value] if isinstance(value, list) else _as_int(value)

    out = walk(config)
    out.setdefault("max_batch_size", 0)
    out["max_batch_size"] = int(out["max_batch_size"])
    out.setdefault("input", [])
    out.setdefault("output", [])
    return out


def get_input_config_by_name(model_config: dict, name: str) -> dict | None:
    for tensor in model_config.get("input", ()):
        if tensor.get("name") == name:
            return tensor
    return None


def get_output_config_by_name(model_config: dict, name: str) -> dict | None:
    for tensor in model_config.get("output", ()):
        if tensor.get("name") == name:
            return tensor
    return None


def using_decoupled_model_transaction_policy(model_config: dict) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


class ModelConfig:
    """The configuration a model's static auto_complete_config(config) may complete: its
    tensors, max_batch_size, dynamic batching and transaction policy (Triton's rules: what
    config.pbtxt says is never contradicted, only filled in)."""

    def __init__(self, model_config) -> None:
        self._config = json.loads(model_config) if isinstance(model_config, str) else model_config

    def as_dict(self) -> dict:
        return self._config

    def _name(self) -> str:
        return str(self._config.get("name", ""))

    def set_max_batch_size(self, max_batch_size: int) -> None:
        if self._config.get("max_batch_size", 0) > max_batch_size:
            raise ValueError(f"configuration specified max_batch_size {self._config['max_batch_size']}, but in "
                             f"auto-complete-config function for model '{self._name()}' specified max_batch_size "
                             f"{max_batch_size}")
        self._config["max_batch_size"] = int(max_batch_size)

    def set_dynamic_batching(self) -> None:
        for other in ("sequence_batching", "ensemble_scheduling"):
            if other in self._config:
                raise ValueError(f"Configuration specified scheduling_choice as '{other}', but auto-complete-config "
                                 f"function for model '{self._name()}' tries to set scheduling_choice as "
                                 "'dynamic_batching'")
        self._config.setdefault("dynamic_batching", {})

    def add_input(self, input: dict) -> None:  # noqa: A002 (Triton's parameter name)
        self._add("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: dict) -> None:
        self._add("output", output, ("name", "data_type", "dims"))

    def _add(self, kind: str, tensor: dict, allowed: tuple[str, ...]) -> None:
        name = tensor.get("name")
        extra = [k for k in tensor if k not in allowed]
        if extra:
            raise ValueError(f"{kind} '{name}' in auto-complete-config function for model '{self._name()}' "
                             f"contains property other than {', '.join(repr(a) for a in allowed)}.")
        for key in ("name", "data_type", "dims"):
            if key not in tensor:
                raise ValueError(f"{kind} '{name}' in auto-complete-config function for model '{self._name()}' "
                                 f"is missing '{key}' property.")
        for current in self._config.setdefault(kind, []):
            if current.get("name") != name:
                continue
            have_type = current.get("data_type", "TYPE_INVALID")
            if have_type != "TYPE_INVALID" and have_type != tensor["data_type"]:
                raise ValueError(f"unable to load model '{self._name()}', configuration expects datatype {have_type} "
                                 f"for {kind} '{name}', model provides {tensor['data_type']}")
            if current.get("dims") and list(current["dims"]) != list(tensor["dims"]):
                raise ValueError(f"model '{self._name()}', tensor '{name}': the model expects dims "
                                 f"{list(tensor['dims'])} but the model configuration specifies dims "
                                 f"{list(current['dims'])}")
            if "optional" in current and "optional" in tensor and current["optional"] != tensor["optional"]:
                raise ValueError(f"model '{self._name()}', tensor '{name}': the model expects optional "
                                 f"{tensor['optional']} but the model configuration specifies optional "
                                 f"{current['optional']}")
            current.update(tensor)
            return
        self._config[kind].append(dict(tensor))

    def set_model_transaction_policy(self, transaction_policy_dict: dict) -> None:
        extra = [k for k in transaction_policy_dict if k != "decoupled"]
        if extra:
            raise ValueError(f"model transaction property in auto-complete-config function for model "
                             f"'{self._name()}' contains property other than 'decoupled'.")
        policy = self._config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            wanted = bool(transaction_policy_dict["decoupled"])
            if "decoupled" in policy and bool(policy["decoupled"]) != wanted:
                raise ValueError(f"trying to change decoupled property in auto-complete-config for model "
                                 f"'{self._name()}', which is already set to '{policy['decoupled']}'.")
            policy["decoupled"] = wanted
