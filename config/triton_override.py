"""A load request's configuration override (Triton's repository extension: the `config`
parameter, a JSON model_config.proto) as config.toml keys.

The mapping is config.pbtxt's (config/triton_mapping.py), strict: only its OVERRIDE_KEYS are
accepted, and what a config.pbtxt would only note (a preferred batch size...) is refused here,
with the reason. Keys that only restate what inferd does anyway (`"optional": false`,
`"preserve_ordering": false`...) are accepted when they say so.
"""

from __future__ import annotations

import json

from inferd.common.errors import InferdError, clip, invalid
from inferd.config.triton_mapping import OVERRIDE_KEYS, Mapping, Refused, apply

MAX_CONFIG_BYTES = 1024 * 1024


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
    mapping = Mapping(name, doc, strict=True)
    for key, value in doc.items():
        try:
            apply(mapping, OVERRIDE_KEYS, key, value)
        except Refused as e:
            raise _bad(name, e.reason) from None
    return mapping.out


def _bad(name: str, why: str) -> InferdError:
    return invalid(f"failed to load {clip(name)}: {why}")
