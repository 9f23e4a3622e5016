"""A Triton model directory's config.pbtxt, read with Triton's own schema (config/triton_pb).

`read_pbtxt` gives the file as protobuf's JSON mapping with Triton's field names (the same
dict shape a repository load's `config` parameter has, see config/triton_override.py), so one
mapping turns either into inferd's config.toml keys.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format, text_format

from inferd.common.errors import ConfigError
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
