"""Load requests that carry model files, from callers who should not or who send the wrong
things: a daemon that does not accept files (the default), names that climb out of the model's
directory, hidden or over-long names, code, too many or too big files, base64 that is not,
and a name that would replace a model the operator put there. Each is refused with its reason
and writes nothing; the daemon serves on."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import make_models
import pytest
import tritonclient.grpc as grpcclient
from daemon_process import DaemonProcess
from tritonclient.utils import InferenceServerException

from inferd.daemon.models.upload import MAX_FILES

CONFIG = '{"max_batch_size": 2}'
TOKEN = "hostile-upload-token"


def accepting_daemon(root, etc) -> DaemonProcess:
    """A daemon that accepts model files in load requests, from callers with TOKEN."""
    (etc / "token").write_text(TOKEN + "\n")
    (etc / "token").chmod(0o600)
    (etc / "inferd.toml").write_text(f'[models]\naccept_model_files = true\n[auth]\ntoken_file = "{etc / "token"}"\n')
    return DaemonProcess(root, config=etc / "inferd.toml")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> bytes:
    return make_models.build_add_sub(tmp_path_factory.mktemp("src") / "m.onnx").read_bytes()


@pytest.fixture(scope="module")
def accepting(tmp_path_factory, model):
    root, tmp = tmp_path_factory.mktemp("hostile_upload"), tmp_path_factory.mktemp("hostile_upload_etc")
    (root / "operators.onnx").write_bytes(model)
    (root / "operators_dir" / "1").mkdir(parents=True)
    (root / "operators_dir" / "1" / "model.onnx").write_bytes(model)
    with accepting_daemon(root, tmp) as d:
        yield d, root


def _load(d: DaemonProcess, name: str, parameters: dict, token: str | None = TOKEN) -> tuple[int, str]:
    body = json.dumps({"parameters": parameters}).encode()
    request = urllib.request.Request(f"{d.url}/v2/repository/models/{name}/load", data=body, method="POST")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, ""
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}").get("error", "")


def _files(files: dict[str, bytes]) -> dict:
    return {f"file:{path}": base64.b64encode(content).decode() for path, content in files.items()}


def _staged(root) -> list:
    return [p.name for p in root.iterdir() if p.name.startswith((".upload", ".replaced"))]


def test_files_are_refused_where_the_operator_did_not_accept_them(tmp_path, model):
    (tmp_path / "simple" / "1").mkdir(parents=True)
    (tmp_path / "simple" / "1" / "model.onnx").write_bytes(model)
    with DaemonProcess(tmp_path) as d:
        status, error = _load(d, "fresh", {"config": CONFIG, **_files({"1/model.onnx": model})}, token=None)
        assert status == 400 and "models.accept_model_files is off" in error  # FAILED_PRECONDITION's status
        assert not (tmp_path / "fresh").exists()
        # A big body is refused from its length, before it is read or parsed.
        status, error = _load(d, "fresh", {"config": CONFIG, **_files({"1/model.onnx": b"\0" * (2 << 20)})}, token=None)
        assert status == 400 and "without model files takes at most" in error
        [event] = [e for e in d.events("listening") if e["frontend"] == "grpc"]
        client = grpcclient.InferenceServerClient(event["address"])
        try:
            with pytest.raises(InferenceServerException) as caught:  # as simple_grpc_model_control.py sends it
                client.load_model("simple", config="{}", files={"file:" + "A" * 256: b"a"})
            assert caught.value.status() == "StatusCode.FAILED_PRECONDITION"
            assert client.is_model_ready("simple")
        finally:
            client.close()


@pytest.mark.parametrize("path, reason", [
    ("../escaped/1/model.onnx", "plain relative path"),
    ("1/../../escaped.onnx", "plain relative path"),
    ("/etc/cron.d/x", "plain relative path"),
    ("1//model.onnx", "plain relative path"),
    (".hidden/1/model.onnx", "plain relative path"),
    ("1/.model.onnx", "plain relative path"),
    ("A" * 256, "part over 255 bytes"),  # simple_grpc_model_control.py's over-long name
    ("1\\..\\model.onnx", "plain relative path"),
    ("1/model.py", "would run code"),
    ("1/model.pt", "would run code"),
    ("helpers/util.pt2", "would run code"),
    ("config.toml", "goes in the config parameter"),
    ("labels.txt", "hold no model file"),
])
def test_bad_file_names_and_code_are_refused_and_nothing_is_written(accepting, model, path, reason):
    d, root = accepting
    status, error = _load(d, "victim", {"config": CONFIG, **_files({path: model})})
    assert status == 400 and reason in error, error
    assert not (root / "victim").exists() and not (root.parent / "escaped").exists() and not _staged(root)


def test_too_many_files_and_bad_base64_and_files_without_config_are_refused(accepting, model):
    d, root = accepting
    many = {"1/model.onnx": model, **{f"extra/{i}.bin": b"x" for i in range(MAX_FILES)}}
    status, error = _load(d, "many", {"config": CONFIG, **_files(many)})
    assert status == 400 and f"at most {MAX_FILES}" in error
    status, error = _load(d, "b64", {"config": CONFIG, "file:1/model.onnx": "not base64!"})
    assert status == 400 and "not valid base64" in error
    status, error = _load(d, "noconfig", _files({"1/model.onnx": model}))
    assert status == 400 and "need the config parameter too" in error
    status, error = _load(d, "badconfig", {"config": '{"max_batch_size": 2, "warmup": []}', **_files({"1/model.onnx": model})})
    assert status == 400 and "'warmup' is not supported" in error
    status, error = _load(d, "bogus", {"config": CONFIG, "bogus": 1, **_files({"1/model.onnx": model})})
    assert status == 400 and "unknown load parameter 'bogus'" in error
    status, error = _load(d, "strconfig", {"config": {"max_batch_size": 2}, **_files({"1/model.onnx": model})})
    assert status == 400 and "must be a JSON string" in error
    # a file that is also another's directory (was INTERNAL "Not a directory", from the write)
    status, error = _load(d, "clash", {"config": CONFIG, **_files({"1/model.onnx": model, "1/model.onnx/x": b"x"})})
    assert status == 400 and "file '1/model.onnx' is also a directory of another file" in error, error
    assert not any((root / n).exists() for n in ("many", "b64", "noconfig", "badconfig", "bogus", "strconfig", "clash"))
    assert not _staged(root)


def test_a_body_over_the_request_limit_is_refused_before_it_is_read(tmp_path, model):
    root, etc = tmp_path / "models", tmp_path / "etc"
    root.mkdir()
    etc.mkdir()
    d = accepting_daemon(root, etc)
    d.env = {"INFERD_SERVER_MAX_REQUEST_BYTES": str(1 << 20)}
    with d:
        status, _ = _load(d, "huge", {"config": CONFIG, **_files({"1/model.onnx": model, "1/big.bin": b"\0" * (1 << 20)})})
        assert status == 413
        assert not (root / "huge").exists() and not _staged(root)


@pytest.mark.parametrize("name", ["operators", "operators_dir"])
def test_a_model_the_operator_put_there_is_never_replaced(accepting, model, name):
    d, root = accepting
    before = sorted(p.name for p in root.rglob("*"))
    status, error = _load(d, name, {"config": CONFIG, **_files({"1/model.onnx": b"junk"})})
    assert status == 400 and "holds a model of that name" in error, error
    assert sorted(p.name for p in root.rglob("*")) == before


def test_a_bad_model_name_and_a_missing_token_are_refused(accepting, model):
    d, root = accepting
    status, error = _load(d, ".sneaky", {"config": CONFIG, **_files({"1/model.onnx": model})})
    assert status == 400 and "not starting with '.'" in error
    status, _ = _load(d, "tokenless", {"config": CONFIG, **_files({"1/model.onnx": model})}, token=None)
    assert status == 401 and not (root / "tokenless").exists()
