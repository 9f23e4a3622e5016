"""Load with model files in the request (Triton's repository extension) through tritonclient's
load_model(config=..., files=...), HTTP and gRPC, on a daemon whose operator turned
models.accept_model_files on and requires a token: the files become a model in the models
directory, with the request's configuration as its config.toml, and serve."""

from __future__ import annotations

import json
import os
import threading
import time
import tomllib

import make_models
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from tritonclient.utils import InferenceServerException

TOKEN = "upload-token"


def _headers() -> dict:
    """A fresh dict each call: tritonclient's HTTP client adds its own headers to the one given."""
    return {"authorization": f"Bearer {TOKEN}"}  # (gRPC metadata keys are lower case)
CONFIG = json.dumps({"name": "{name}", "max_batch_size": 4,
                     "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16], "label_filename": "labels.txt"}]})


def accepting_daemon(root, tmp) -> DaemonProcess:
    (tmp / "token").write_text(TOKEN + "\n")
    (tmp / "token").chmod(0o600)
    config = tmp / "inferd.toml"
    config.write_text(f'[models]\naccept_model_files = true\n[auth]\ntoken_file = "{tmp / "token"}"\n')
    return DaemonProcess(root, config=config)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root, tmp = tmp_path_factory.mktemp("upload_models"), tmp_path_factory.mktemp("upload_etc")
    model = make_models.build_add_sub(tmp / "add_sub.onnx").read_bytes()
    with accepting_daemon(root, tmp) as d:
        [event] = [e for e in d.events("listening") if e["frontend"] == "grpc"]
        http = httpclient.InferenceServerClient(d.url.removeprefix("http://"))
        grpc = grpcclient.InferenceServerClient(event["address"])
        yield d, root, model, http, grpc
        http.close()
        grpc.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_files_in_a_load_request_become_a_model_that_serves(served, protocol):
    d, root, model, http, grpc = served
    client, module = (http, httpclient) if protocol == "http" else (grpc, grpcclient)
    name = f"sent_{protocol}"
    client.load_model(name, headers=_headers(), config=CONFIG.replace("{name}", name),
                      files={"file:1/model.onnx": model, "file:labels.txt": b"zero\none\n"})
    assert client.is_model_ready(name, headers=_headers())
    # On disk: the files, the configuration as config.toml, nothing left staged.
    assert (root / name / "1" / "model.onnx").read_bytes() == model
    written = tomllib.loads((root / name / "config.toml").read_text())
    assert written["max_batch_size"] == 4 and written["outputs"][0]["label_filename"] == "labels.txt"
    assert not [p for p in root.iterdir() if p.name.startswith((".upload", ".replaced"))]
    a = np.ones((2, 16), np.int32)
    inputs = [module.InferInput(n, [2, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    result = client.infer(name, inputs, headers=_headers(), outputs=[module.InferRequestedOutput("OUTPUT0", class_count=1)])
    assert result.as_numpy("OUTPUT0").tolist() == [[b"2:0:zero"], [b"2:0:zero"]]


def test_a_model_sent_as_files_can_be_sent_again(served):
    d, root, model, http, grpc = served
    for batch in (2, 3):
        config = json.dumps({"max_batch_size": batch})
        grpc.load_model("resent", headers=_headers(), config=config, files={"file:1/model.onnx": model})
        assert grpc.get_model_config("resent", headers=_headers()).config.max_batch_size == batch
    assert sorted(p.name for p in (root / "resent").iterdir()) == [".uploaded", "1", "config.toml"]


def test_resending_many_times_keeps_the_model_serving_throughout(served):
    """Each load answers once the model serves with the configuration sent, while the watcher
    sees each new copy land (and settle) meanwhile: a reader never finds it missing or not
    ready, and never sees an older configuration come back."""
    d, root, model, http, grpc = served
    name, headers = "resent_often", _headers()

    def send(batch: int) -> None:
        grpc.load_model(name, headers=headers, config=json.dumps({"max_batch_size": batch}),
                        files={"file:1/model.onnx": model})

    send(1)
    seen, errors, done = [], [], threading.Event()

    def read() -> None:
        [event] = [e for e in d.events("listening") if e["frontend"] == "grpc"]
        reader = grpcclient.InferenceServerClient(event["address"])
        try:
            while not done.is_set():
                try:
                    seen.append(reader.get_model_config(name, headers=_headers()).config.max_batch_size)
                    if not reader.is_model_ready(name, headers=_headers()):
                        errors.append("not ready")
                except InferenceServerException as e:
                    errors.append(f"{e.status()}: {e.message()}")
        finally:
            reader.close()

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for batch in range(2, 12):
            send(batch)
            assert grpc.get_model_config(name, headers=headers).config.max_batch_size == batch
            # A new model too: the watcher looks again when each copy settles, so it often
            # looks while the other model's newest files are still settling.
            grpc.load_model(f"fresh_{batch}", headers=headers, config=json.dumps({"max_batch_size": batch}),
                            files={"file:1/model.onnx": model})
            assert grpc.get_model_config(f"fresh_{batch}", headers=headers).config.max_batch_size == batch
            time.sleep(0.1 * (batch % 4))
        time.sleep(0.8)  # past the watcher's settle time: what it sees now must change nothing
    finally:
        done.set()
        thread.join()
    assert errors == [], errors[:5]
    assert seen and seen == sorted(seen) and seen[-1] == 11
    assert grpc.get_model_config(name, headers=headers).config.max_batch_size == 11


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_override_label_file_must_be_one_of_the_files_sent(served, protocol):
    """Else a caller could read the model's own config.toml (or model.py) back as labels."""
    d, root, model, http, grpc = served
    client = http if protocol == "http" else grpc
    name = f"labels_{protocol}"
    config = CONFIG.replace("{name}", name).replace("labels.txt", "config.toml")
    with pytest.raises(InferenceServerException) as caught:
        client.load_model(name, headers=_headers(), config=config, files={"file:1/model.onnx": model})
    assert "label_filename can only be set in config.toml" in caught.value.message()
    assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    assert not (root / name).exists()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_model_file_over_a_mib_loads_over_both_protocols(served, protocol):
    """Both were bounded by server.max_structured_bytes (1 MiB): gRPC RESOURCE_EXHAUSTED, HTTP 413."""
    d, root, model, http, grpc = served
    client = http if protocol == "http" else grpc
    name = f"big_{protocol}"
    big = os.urandom(3 * 1024 * 1024)
    client.load_model(name, headers=_headers(), config=CONFIG.replace("{name}", name),
                      files={"file:1/model.onnx": model, "file:labels.txt": b"zero\n", "file:1/weights.bin": big})
    assert client.is_model_ready(name, headers=_headers())
    assert (root / name / "1" / "weights.bin").read_bytes() == big


def test_staging_left_by_a_killed_daemon_is_removed_at_start(tmp_path):
    """A daemon killed mid-load leaves hidden .upload-*/.replaced-* directories (never scanned);
    the next start removes them, and puts back a model killed between the swap's two renames."""
    root, etc = tmp_path / "models", tmp_path / "etc"
    etc.mkdir()
    model = make_models.build_add_sub(tmp_path / "m.onnx").read_bytes()
    staged = root / ".upload-half-ab_cd123"
    (staged / "1").mkdir(parents=True)
    (staged / "1" / "model.onnx").write_bytes(model[:100])
    old = root / ".replaced-kept-x9y8z7w6" / "kept"
    (old / "1").mkdir(parents=True)
    (old / "1" / "model.onnx").write_bytes(model)
    (old / "config.toml").write_text("max_batch_size = 4\n")
    (old / ".uploaded").write_bytes(b"")
    (root / ".operators-own").mkdir()  # not a staging name: left alone
    with accepting_daemon(root, etc) as d:
        assert sorted(p.name for p in root.iterdir()) == [".operators-own", "kept"]
        removed = {e["path"] for e in d.events("removed a load's leftover staging directory")}
        assert removed == {str(staged), str(old.parent)}
        client = httpclient.InferenceServerClient(d.url.removeprefix("http://"))
        assert client.is_model_ready("kept", headers=_headers())
        client.close()
