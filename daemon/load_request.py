"""A load request's parameters (Triton's repository extension): `config`, a JSON model
configuration that overrides the model's config.toml for this load, and `file:<path>` entries,
model files to load from. Checked here, once, for every front-end: a parameter inferd does not
act on is refused, never ignored."""

from __future__ import annotations

import dataclasses

from inferd.common.errors import ConfigError, clip, invalid
from inferd.config.model import ModelSettings, model_config_from
from inferd.config.triton_override import from_triton

FILE_PREFIX = "file:"


@dataclasses.dataclass(frozen=True)
class LoadRequest:
    override: dict | None = None  # config.toml keys
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)  # path in the model's directory -> content


def parse_load(name: str, parameters: dict | None) -> LoadRequest:
    """`parameters`: "config" -> str, "file:<path>" -> bytes (front-ends decode base64)."""
    if not parameters:
        return LoadRequest()
    override, files = None, {}
    for key, value in parameters.items():
        if key == "config":
            override = from_triton(name, value)
        elif key.startswith(FILE_PREFIX):
            if not isinstance(value, bytes | bytearray):
                raise invalid(f"failed to load {clip(name)}: {clip(key)} must carry the file's bytes")
            files[key[len(FILE_PREFIX):]] = bytes(value)
        else:
            raise invalid(f"failed to load {clip(name)}: unknown load parameter {clip(key)} (known: config, file:<path>)")
    if files and override is None:
        raise invalid(f"failed to load {clip(name)}: model files in a load request need the config parameter too")
    if override:
        _labels_are_sent(name, override, files)
        try:  # the keys' values, checked now rather than failing the load
            model_config_from(override, "the config parameter", ModelSettings())
        except ConfigError as e:
            raise invalid(f"failed to load {clip(name)}: {e}") from None
    return LoadRequest(override or None, files)


def _labels_are_sent(name: str, override: dict, files: dict[str, bytes]) -> None:
    """An override's label_filename must name a file sent in the same request: else any caller of
    the load API could make another file under the models directory (a model.py, a config.toml)
    readable as classification labels."""
    for tensor in override.get("outputs", []):
        label_file = tensor.get("label_filename")
        if label_file is not None and (not isinstance(label_file, str) or label_file not in files):
            raise invalid(f"failed to load {clip(name)}: label_filename can only be set in config.toml, "
                          "or name a file:<path> sent in the same load request")
