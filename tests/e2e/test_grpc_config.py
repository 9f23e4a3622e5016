"""The gRPC ModelConfig RPC says what HTTP's /v2/models/NAME/config says, in Triton's
model_config.proto: every key the data plane emits (config.toml's [parameters] included)
reaches a tritonclient.grpc caller, and inferd's copy of the proto numbers and types each
field as Triton's does.

inferd's generated messages are read in a subprocess only (they define the same
`inference.*` names as tritonclient's, which this process loads)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request

import make_models
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.model_config_pb2 as triton_model_config
from daemon_process import DaemonProcess
from google.protobuf import descriptor_pb2, json_format

PARAMETERS = ('[parameters]\nlabel = "cats"\nthreshold = 0.5\nsizes = [1, 2]\nlower = true\n'
              '[parameters.vocab]\nfile = "words.txt"\n')
MISSING = object()


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    """A daemon serving a batching model with a [parameters] table and a model without a
    batch dimension (no dynamic_batching, empty parameters)."""
    root = tmp_path_factory.mktemp("configured")
    make_models.build_add_sub(root / "tagged" / "1" / "model.onnx")
    (root / "tagged" / "config.toml").write_text("max_batch_size = 8\nmax_queue_delay_ms = 2\n" + PARAMETERS)
    make_models.build_fixed(root / "fixed.onnx")
    with DaemonProcess(root) as d:
        [event] = [e for e in d.events("listening") if e["frontend"] == "grpc"]
        client = grpcclient.InferenceServerClient(event["address"])
        yield d, client
        client.close()


def test_grpc_config_shows_the_parameters_as_http_does(configured):
    d, client = configured
    http = d.http_json("/v2/models/tagged/config")
    assert http["parameters"] == {
        "label": {"string_value": "cats"}, "threshold": {"string_value": "0.5"},
        "sizes": {"string_value": "[1, 2]"}, "lower": {"string_value": "true"},
        "vocab": {"string_value": '{"file": "words.txt"}'}}
    grpc = client.get_model_config("tagged", as_json=True)["config"]
    assert grpc["parameters"] == http["parameters"]
    assert dict(client.get_model_config("tagged").config.parameters)["label"].string_value == "cats"


def _as_http_spells(grpc, http):
    """The gRPC answer (every field printed, defaults too) cut to the keys the HTTP answer has;
    int64s come back from int (JSON renders them as strings). A key gRPC lacks stays MISSING."""
    if isinstance(http, dict):
        if not isinstance(grpc, dict):
            return MISSING
        return {k: _as_http_spells(grpc.get(k, MISSING), v) for k, v in http.items()}
    if isinstance(http, list):
        return [_as_http_spells(g, h) for g, h in zip(grpc, http)] if isinstance(grpc, list) and len(grpc) == len(http) else grpc
    if isinstance(http, int) and not isinstance(http, bool) and isinstance(grpc, str):
        return int(grpc)
    return grpc


def _same_config_both_ways(d: DaemonProcess, client, model: str) -> dict:
    http = d.http_json(f"/v2/models/{model}/config")
    message = client.get_model_config(model).config
    grpc = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    assert _as_http_spells(grpc, http) == http, model
    return http


def test_every_key_of_the_http_config_survives_grpc(configured):
    d, client = configured
    assert "dynamic_batching" in _same_config_both_ways(d, client, "tagged")
    assert "dynamic_batching" not in _same_config_both_ways(d, client, "fixed")


def test_every_served_models_config_survives_grpc(daemon):
    """The example repository's models: every datatype, Python and TorchScript models and a
    pipeline where torch is installed."""
    request = urllib.request.Request(daemon.url + "/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        ready = sorted(m["name"] for m in json.loads(response.read()) if m.get("state") == "READY")
    assert {"mlp", "add_sub", "identity_all"} <= set(ready)
    [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    client = grpcclient.InferenceServerClient(event["address"])
    try:
        for model in ready:
            _same_config_both_ways(daemon, client, model)
    finally:
        client.close()


_DUMP_INFERD_PROTO = """
import base64
from google.protobuf import descriptor_pb2
from inferd.daemon.frontends.grpc_gen import inference_pb2
fd = descriptor_pb2.FileDescriptorProto()
inference_pb2.DESCRIPTOR.CopyToProto(fd)
print(base64.b64encode(fd.SerializeToString()).decode())
"""


def _types(fd: descriptor_pb2.FileDescriptorProto) -> dict:
    """'.package.Message[.Nested]' -> its DescriptorProto or EnumDescriptorProto."""
    out = {}

    def add(prefix, messages, enums):
        for e in enums:
            out[f"{prefix}.{e.name}"] = e
        for m in messages:
            out[f"{prefix}.{m.name}"] = m
            add(f"{prefix}.{m.name}", m.nested_type, m.enum_type)

    add(f".{fd.package}", fd.message_type, fd.enum_type)
    return out


def test_inferd_model_config_fields_are_tritons():
    """Every field of inferd's ModelConfig (and of the messages and enums it uses) has the
    name, number, type and label of Triton's: a wrong number would decode as another field."""
    dump = subprocess.run([sys.executable, "-c", _DUMP_INFERD_PROTO], capture_output=True, text=True, check=True)
    ours = _types(descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(dump.stdout)))
    triton_fd = descriptor_pb2.FileDescriptorProto()
    triton_model_config.DESCRIPTOR.CopyToProto(triton_fd)
    tritons = _types(triton_fd)
    seen, todo = set(), [".inference.ModelConfig"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        mine, theirs = ours[name], tritons[name]
        if isinstance(mine, descriptor_pb2.EnumDescriptorProto):
            assert {v.name: v.number for v in mine.value}.items() <= {v.name: v.number for v in theirs.value}.items(), name
            continue
        assert mine.options.map_entry == theirs.options.map_entry, name
        theirs_by_name = {f.name: f for f in theirs.field}
        for field in mine.field:
            other = theirs_by_name.get(field.name)
            assert other is not None, f"{name}.{field.name} is not in Triton's proto"
            assert (field.number, field.type, field.label, field.type_name, field.oneof_index) == \
                   (other.number, other.type, other.label, other.type_name, other.oneof_index), f"{name}.{field.name}"
            if field.type_name:
                todo.append(field.type_name)
    assert ".inference.ModelConfig.ParametersEntry" in seen and ".inference.ModelParameter" in seen
