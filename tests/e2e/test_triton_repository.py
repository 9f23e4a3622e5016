"""Triton's quickstart model repository (tests/triton_repository, config.pbtxt files unchanged)
served by `inferd serve --models`: every model READY, answering Triton's clients; beside
it a TorchScript model with Triton's INPUT__0 naming, a TensorRT model (a platform inferd does
not run: FAILED with the reason while the rest serve) and a directory with both config files
(FAILED: choose one). Prints the time from the daemon's start to every model loaded."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import make_models
import numpy as np
import pytest
import triton_models
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from tritonclient.utils import InferenceServerException
from waiting import eventually

ONNX_MODELS = ("densenet_onnx", "inception_onnx", "simple", "simple_dyna_sequence", "simple_int8", "simple_sequence",
               "simple_string")
TORCH_CONFIG = """
name: "add_sub_pt"
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "INPUT__1" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def _torchscript_add_sub(path: Path) -> None:
    import torch

    class AddSub(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return a + b, a - b

    make_models.save_torchscript(AddSub(), path)


def _write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def make_repository(root: Path) -> Path:
    """Triton's quickstart repository, plus the TorchScript, TensorRT and two-config models."""
    triton_models.make_triton_repository(root)
    _write(root / "add_sub_pt" / "config.pbtxt", TORCH_CONFIG)
    _torchscript_add_sub(root / "add_sub_pt" / "1" / "model.pt")
    _write(root / "trt" / "config.pbtxt", 'name: "trt" platform: "tensorrt_plan" max_batch_size: 8')
    _write(root / "trt" / "1" / "model.plan", b"\x00TensorRT engine stand-in")
    _write(root / "both" / "config.pbtxt", 'name: "both" platform: "onnxruntime_onnx" max_batch_size: 8')
    _write(root / "both" / "config.toml", "max_batch_size = 8\n")
    make_models.build_add_sub(root / "both" / "1" / "model.onnx")
    for name, config in (("broken", 'name: "broken" max_batch_size: ['), ("misnamed", 'name: "simple" platform: "onnxruntime_onnx"')):
        _write(root / name / "config.pbtxt", config)
        make_models.build_add_sub(root / name / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = make_repository(tmp_path_factory.mktemp("triton") / "models")
    daemon = DaemonProcess(root)
    started = time.monotonic()
    try:
        daemon.start(timeout=300)  # READY=1 comes once every model's load has ended
        print(f"\ninferd serve --models <Triton's quickstart repository>: every model loaded "
              f"{time.monotonic() - started:.2f} s after the daemon started")
        yield daemon, httpclient.InferenceServerClient(daemon.url.removeprefix("http://"))
    finally:
        daemon.stop()


def _index(client) -> dict[str, dict]:
    return {row["name"]: row for row in client.get_model_repository_index()}


def test_every_onnx_model_of_the_quickstart_repository_is_ready(served):
    _, client = served
    index = _index(client)
    for name in ONNX_MODELS:
        assert index[name]["state"] == "READY", index[name]
        assert index[name]["platform"] == "onnxruntime_onnx", index[name]
        assert client.is_model_ready(name)
    assert client.get_model_config("simple")["max_batch_size"] == 8


def test_the_python_model_of_the_quickstart_repository_echoes(served):
    _, client = served
    assert _index(client)["simple_identity"]["platform"] == "python"
    data = np.array([[b"triton", b"\x00bytes"]], dtype=np.object_)
    tensor = httpclient.InferInput("INPUT0", [1, 2], "BYTES")
    tensor.set_data_from_numpy(data)
    assert client.infer("simple_identity", [tensor]).as_numpy("OUTPUT0").tolist() == data.tolist()


def test_simple_answers_as_tritons_does(served):
    _, client = served
    a, b = np.arange(16, dtype=np.int32).reshape(1, 16), np.ones((1, 16), np.int32)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("simple", inputs)
    assert np.array_equal(result.as_numpy("OUTPUT0"), a + b) and np.array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_the_image_models_see_their_reshape_and_clients_their_dims(served):
    _, client = served
    picture = np.zeros((3, 224, 224), np.float32)
    picture[0] = 0.8  # red
    data = httpclient.InferInput("data_0", [3, 224, 224], "FP32")
    data.set_data_from_numpy(picture)
    scores = client.infer("densenet_onnx", [data]).as_numpy("fc6_1")
    assert scores.shape == (1000,) and scores.argmax() == triton_models.RED_WINE["densenet_onnx"]
    label = client.infer("densenet_onnx", [data], outputs=[httpclient.InferRequestedOutput("fc6_1", class_count=1)])
    assert label.as_numpy("fc6_1")[0].decode().endswith(":RED WINE")


def test_a_torchscript_model_with_tritons_tensor_names_answers(served):
    _, client = served
    metadata = client.get_model_metadata("add_sub_pt")
    assert [t["name"] for t in metadata["inputs"]] == ["INPUT__0", "INPUT__1"]
    assert [t["name"] for t in metadata["outputs"]] == ["OUTPUT__0", "OUTPUT__1"]
    a = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
    b = np.full((2, 4), 0.5, np.float32)
    inputs = [httpclient.InferInput("INPUT__0", [2, 4], "FP32"), httpclient.InferInput("INPUT__1", [2, 4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("add_sub_pt", inputs)
    assert np.array_equal(result.as_numpy("OUTPUT__0"), a + b) and np.array_equal(result.as_numpy("OUTPUT__1"), a - b)
    assert _index(client)["add_sub_pt"]["platform"] == "pytorch_libtorch"


def test_an_unsupported_platform_is_failed_with_the_reason_and_the_rest_serve(served):
    _, client = served
    row = _index(client)["trt"]
    assert row["state"] == "FAILED" and row["platform"] == "tensorrt_plan", row
    assert "platform 'tensorrt_plan' is not supported by inferd" in row["reason"], row
    with pytest.raises(InferenceServerException) as caught:
        client.infer("trt", [httpclient.InferInput("x", [1], "FP32")])
    assert caught.value.status() in ("400", "404", "503"), caught.value
    assert client.is_model_ready("simple")


def test_both_config_files_fail_the_model_saying_choose_one(served):
    _, client = served
    row = _index(client)["both"]
    assert row["state"] == "FAILED" and "choose one" in row["reason"], row


@pytest.mark.parametrize("name, reason", [
    ("broken", "broken/config.pbtxt: config.pbtxt: not a Triton model configuration"),
    ("misnamed", "the config's name 'simple' is not the model's directory (misnamed)"),
])
def test_a_bad_config_pbtxt_fails_its_model_with_the_reason(served, name, reason):
    _, client = served
    row = _index(client)[name]
    assert row["state"] == "FAILED" and reason in row["reason"], row
    assert client.is_model_ready("simple")


def test_inferd_models_lists_platforms_reasons_and_notes(served):
    daemon, _ = served
    listing = subprocess.run([sys.executable, "-m", "inferd.daemon", "models", "--socket", daemon.socket_path],
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "VERSION", "STATE", "PLATFORM", "REASON"]
    rows = {line.split()[0]: line for line in lines[1:] if not line.startswith(" ")}
    assert rows["trt"].split()[2:4] == ["FAILED", "tensorrt_plan"] and "not supported by inferd" in rows["trt"]
    assert rows["simple"].split()[2:4] == ["READY", "onnxruntime_onnx"]
    # simple_dyna_sequence asks for a queue delay inferd's sequence batcher does not have: noted below it
    after = lines[lines.index(rows["simple_dyna_sequence"]) + 1]
    assert after.startswith("    note: sequence_batching.oldest.max_queue_delay_microseconds"), listing.stdout


async def test_a_triton_model_dropped_in_serves_and_its_config_pbtxt_drives_it(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    with DaemonProcess(models) as daemon:
        client = httpclient.InferenceServerClient(daemon.url.removeprefix("http://"))
        staging = models / ".simple.tmp"  # (hidden: not a model until renamed into place)
        shutil.copytree(triton_models.TRITON_REPOSITORY / "simple", staging)
        staging.rename(models / "simple")
        await eventually(lambda: client.is_model_ready("simple"), what="simple READY")
        assert client.get_model_config("simple")["max_batch_size"] == 8
        config = models / "simple" / "config.pbtxt"
        config.write_text(config.read_text().replace("max_batch_size: 8", "max_batch_size: 4"))
        await eventually(lambda: client.is_model_ready("simple") and client.get_model_config("simple")["max_batch_size"] == 4,
                         what="the new max_batch_size")
