"""The model configuration as Triton's image clients read it, over HTTP and gRPC: an input's
`format` (config.toml), dims without the batch dimension when the model batches, an output's
`label_filename`, and dynamic batching from inferd's batching keys. `_image_client_reads`
follows what tritonclient's examples/image_client.py `parse_model` reads, step by step; then
the request it sends (class_count) is answered with labelled classes."""

from __future__ import annotations

import types

import make_models
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.model_config_pb2 as mc
import tritonclient.http as httpclient
from daemon_process import DaemonProcess

LABELS = ["zero", "one", "two", "three", "four"]


def _config(fmt: str, shape: list[int], batching: bool) -> str:
    head = "max_batch_size = 4\nmax_queue_delay_ms = 1.5\n" if batching else "max_batch_size = 0\n"
    return (head + f'[[inputs]]\nname = "image"\ndatatype = "FP32"\nshape = {shape}\nformat = "{fmt}"\n'
            f'[[outputs]]\nname = "scores"\ndatatype = "FP32"\nshape = {[-1, 5] if batching else [5]}\n'
            'label_filename = "labels.txt"\n')


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for name, nhwc, batching, shape in [("nchw", False, True, [-1, 3, 4, 4]), ("nhwc", True, False, [4, 4, 3])]:
        make_models.build_image_classifier(root / name / "1" / "model.onnx", nhwc=nhwc, batching=batching)
        (root / name / "config.toml").write_text(_config("FORMAT_NHWC" if nhwc else "FORMAT_NCHW", shape, batching))
        (root / name / "labels.txt").write_text("\n".join(LABELS) + "\n")
    with DaemonProcess(root) as d:
        [event] = [e for e in d.events("listening") if e["frontend"] == "grpc"]
        http, grpc = httpclient.InferenceServerClient(d.url.removeprefix("http://")), \
            grpcclient.InferenceServerClient(event["address"])
        yield d, http, grpc
        http.close()
        grpc.close()


def _attrs(value):
    """A JSON answer read by attribute, as image_client's AttrDict does."""
    if isinstance(value, dict):
        return types.SimpleNamespace(**{k: _attrs(v) for k, v in value.items()})
    return [_attrs(v) for v in value] if isinstance(value, list) else value


def _image_client_reads(metadata, config) -> tuple:
    assert len(metadata.inputs) == 1 and len(metadata.outputs) == 1 and len(config.input) == 1
    assert metadata.outputs[0].datatype == "FP32"
    batching = config.max_batch_size > 0
    shape = list(metadata.inputs[0].shape)
    assert len(shape) == 3 + batching
    fmt = config.input[0].format
    if isinstance(fmt, str):  # HTTP: the enum's name
        fmt = dict(mc.ModelInput.Format.items())[fmt]
    assert fmt in (mc.ModelInput.FORMAT_NCHW, mc.ModelInput.FORMAT_NHWC)
    dims = shape[batching:]
    c, h, w = (dims[2], dims[0], dims[1]) if fmt == mc.ModelInput.FORMAT_NHWC else dims
    return config.max_batch_size, c, h, w, mc.ModelInput.Format.Name(fmt)


@pytest.mark.parametrize("model, expected", [("nchw", (4, 3, 4, 4, "FORMAT_NCHW")), ("nhwc", (0, 3, 4, 4, "FORMAT_NHWC"))])
def test_image_client_reads_the_format_and_shape_over_http_and_grpc(served, model, expected):
    _, http, grpc = served
    http_reads = _image_client_reads(_attrs(http.get_model_metadata(model)), _attrs(http.get_model_config(model)))
    grpc_reads = _image_client_reads(grpc.get_model_metadata(model), grpc.get_model_config(model).config)
    assert http_reads == grpc_reads == expected


def test_dims_label_file_and_dynamic_batching_as_triton_reports_them(served):
    _, http, grpc = served
    config = http.get_model_config("nchw")
    assert config["input"][0]["dims"] == [3, 4, 4]  # without the batch dimension
    assert config["output"][0]["dims"] == [5] and config["output"][0]["label_filename"] == "labels.txt"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 1500
    message = grpc.get_model_config("nchw").config
    assert list(message.input[0].dims) == [3, 4, 4] and message.output[0].label_filename == "labels.txt"
    assert message.dynamic_batching.max_queue_delay_microseconds == 1500
    fixed = http.get_model_config("nhwc")
    assert fixed["input"][0]["dims"] == [4, 4, 3] and "dynamic_batching" not in fixed
    assert not grpc.get_model_config("nhwc").config.HasField("dynamic_batching")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_image_clients_request_gets_labelled_classes(served, protocol):
    _, http, grpc = served
    module, client = (httpclient, http) if protocol == "http" else (grpcclient, grpc)
    image = np.random.default_rng(5).random((2, 3, 4, 4), np.float32)
    tensor = module.InferInput("image", list(image.shape), "FP32")
    tensor.set_data_from_numpy(image)
    result = client.infer("nchw", [tensor], outputs=[module.InferRequestedOutput("scores", class_count=2)])
    rows = result.as_numpy("scores")
    assert rows.shape == (2, 2)
    for row in rows:
        for entry in row:  # image_client's postprocess: "".join(chr(x) for x in result).split(":")
            score, index, label = "".join(chr(x) for x in entry).split(":")
            assert label == LABELS[int(index)] and float(score) == pytest.approx(float(score))
        assert float(row[0].split(b":")[0]) >= float(row[1].split(b":")[0])
