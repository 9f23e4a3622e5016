"""A repository load request's parameters off the wire, for the data plane (daemon/load_request.py):
"config" as text, each "file:<path>" as its bytes (HTTP sends them base64-encoded, gRPC as
bytes_param)."""

from __future__ import annotations

import base64
import binascii

import orjson

from inferd.common.errors import clip, invalid

FILE_PREFIX = "file:"


def http_load_parameters(body: bytes) -> dict | None:
    """The parameters of a load request's JSON body ({"parameters": {...}}), None when it has none."""
    if not body.strip():
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise invalid(f"malformed JSON in the load request: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("parameters", {}), dict):
        raise invalid('expected a JSON object such as {"parameters": {"config": "..."}}')
    parameters = {}
    for key, value in doc.get("parameters", {}).items():
        if key.startswith(FILE_PREFIX):
            if not isinstance(value, str):
                raise invalid(f"load parameter {clip(key)} must be the file's content in base64")
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise invalid(f"load parameter {clip(key)} is not valid base64") from None
        parameters[key] = value
    return parameters or None


def grpc_load_parameters(parameters) -> dict | None:
    """RepositoryModelLoadRequest.parameters (a map of ModelRepositoryParameter)."""
    out = {}
    for key, parameter in parameters.items():
        which = parameter.WhichOneof("parameter_choice")
        if which is None:
            raise invalid(f"load parameter {clip(key)} has no value")
        out[key] = getattr(parameter, which)
    return out or None
