"""The PyTorch and Python backends end to end: model files the tests write, served by the real
daemon in real worker processes, called through real clients (tritonclient HTTP and gRPC, the
Unix socket) and compared with torch / the Python code run in-process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import make_models
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from test_workers import metric
from waiting import eventually

from inferd.client import AsyncClient, Client, InferdClientError

RNG = np.random.default_rng(5)

# BYTES in, BYTES and INT32 out, batched: upper-cases each element and counts its bytes.
SHOUT = '''
import numpy as np

class Model:
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1, -1]}]
    outputs = [{"name": "upper", "datatype": "BYTES", "shape": [-1, -1]},
               {"name": "length", "datatype": "INT32", "shape": [-1, -1]}]

    def load(self, model_dir, config):
        self.suffix = config["parameters"].get("suffix", "").encode()

    def infer(self, inputs):
        text = inputs["text"]
        upper = np.vectorize(lambda b: b.upper() + self.suffix, otypes=[object])(text)
        return {"upper": upper, "length": np.vectorize(len, otypes=[np.int32])(text)}
'''

# Fails the way user code fails: an exception, a refusal of the input, a hard exit.
FRAGILE = '''
import os
import numpy as np
from inferd.backends.python import InvalidInput

class Model:
    inputs = [{"name": "x", "datatype": "INT64", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "INT64", "shape": [-1]}]

    def infer(self, inputs):
        x = inputs["x"]
        if (x == 13).any():
            raise ValueError("13 is unlucky")
        if (x < 0).any():
            raise InvalidInput("x must not be negative")
        if (x == 99).any():
            os._exit(3)
        if (x == 7).any():
            return {"y": x[:-1]}  # one row short
        return {"y": x * 2}
'''


class Affine(torch.nn.Module):
    """Two inputs, two outputs, so positional order and naming are checked."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, offset: torch.Tensor):
        return torch.relu(self.linear(x)), offset * 2 + 1


TORCHSCRIPT_CONFIG = """\
max_batch_size = 32
max_queue_delay_ms = 50
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 8]
[[inputs]]
name = "offset"
datatype = "INT64"
shape = [-1, 2]
[[outputs]]
name = "features"
datatype = "FP32"
shape = [-1, 3]
[[outputs]]
name = "shifted"
datatype = "INT64"
shape = [-1, 2]
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def affine() -> torch.nn.Module:
    torch.manual_seed(0)
    return Affine().eval()


@pytest.fixture(scope="module")
def repo(tmp_path_factory, affine) -> Path:
    root = tmp_path_factory.mktemp("backends")
    # TorchScript: tensors from config.toml.
    make_models.save_torchscript(affine, root / "scripted" / "1" / "model.pt")
    _write(root / "scripted" / "config.toml", TORCHSCRIPT_CONFIG)
    # torch.export: tensors from the file (a dynamic batch dimension).
    batch = torch.export.Dim("batch")
    program = torch.export.export(affine, (torch.randn(4, 8), torch.ones(4, 2, dtype=torch.int64)),
                                  dynamic_shapes={"x": {0: batch}, "offset": {0: batch}})
    torch.export.save(program, str(root / "exported.pt2"))
    # TorchScript without config.toml: nothing says what its tensors are.
    make_models.save_torchscript(affine, root / "untyped.pt")
    # Python models.
    _write(root / "shout" / "1" / "model.py", SHOUT)
    _write(root / "shout" / "config.toml", 'max_queue_delay_ms = 20\n[parameters]\nsuffix = "!"\n')
    _write(root / "fragile" / "1" / "model.py", FRAGILE)
    _write(root / "fragile" / "config.toml", "max_batch_size = 8\nidempotent = false\n")
    _write(root / "helped" / "1" / "words.py", "def double(x):\n    return x * 2\n")
    _write(root / "helped" / "1" / "model.py", FRAGILE.replace("import os\n", "import os\nimport words\n")
           .replace("x * 2", "words.double(x)"))
    _write(root / "contradicted" / "1" / "model.py", SHOUT)  # config.toml says FP32 where the class says BYTES
    _write(root / "contradicted" / "config.toml", '[[inputs]]\nname = "text"\ndatatype = "FP32"\nshape = [-1, 4]\n')
    _write(root / "noclass.py", "x = 1\n")
    _write(root / "noshapes.py", "class Model:\n    def infer(self, inputs):\n        return {}\n")
    _write(root / "syntax.py", "class Model(:\n")
    return root


@pytest.fixture(scope="module")
def served(repo):
    with DaemonProcess(repo) as d:
        yield d


@pytest.fixture(scope="module")
def grpc_address(served) -> str:
    [event] = [e for e in served.events("listening") if e["frontend"] == "grpc"]
    return event["address"]


def _affine_inputs(n: int):
    return RNG.standard_normal((n, 8)).astype(np.float32), RNG.integers(-9, 9, (n, 2), dtype=np.int64)


@pytest.mark.parametrize("model", ["scripted", "exported"])
def test_torch_models_match_torch_in_process(served, affine, model):
    x, offset = _affine_inputs(5)
    with torch.inference_mode():
        want = [t.numpy() for t in affine(torch.from_numpy(x), torch.from_numpy(offset))]
    with Client(socket=served.socket_path) as c:
        meta = c.model_metadata(model)
        names = [t["name"] for t in meta["inputs"]], [t["name"] for t in meta["outputs"]]
        got = c.infer(model, dict(zip(names[0], (x, offset))))
    np.testing.assert_allclose(got[names[1][0]], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[names[1][1]], want[1])


def test_torch_metadata_comes_from_config_or_from_the_exported_file(served):
    scripted = served.http_json("/v2/models/scripted")
    assert scripted["platform"] == "pytorch_libtorch"
    assert [(t["name"], t["datatype"], t["shape"]) for t in scripted["outputs"]] == [
        ("features", "FP32", [-1, 3]), ("shifted", "INT64", [-1, 2])]
    exported = served.http_json("/v2/models/exported")
    assert exported["platform"] == "pytorch_export"
    assert [(t["name"], t["datatype"], t["shape"]) for t in exported["inputs"]] == [
        ("x", "FP32", [-1, 8]), ("offset", "INT64", [-1, 2])]  # the forward arguments' names
    assert [t["name"] for t in exported["outputs"]] == ["output0", "output1"]
    assert served.http_json("/v2/models/exported/config")["max_batch_size"] == 64  # batchable: the default


async def test_torch_requests_batch_together(served, affine):
    """16 concurrent callers within scripted's 50 ms queue delay run as fewer, larger batches,
    and each caller gets its own rows back."""
    before = metric(served, "inferd_batch_size_count", model="scripted")
    inputs = [_affine_inputs(1) for _ in range(16)]
    async with AsyncClient(socket=served.socket_path) as c:
        answers = await asyncio.gather(*(c.infer("scripted", {"x": x, "offset": o}) for x, o in inputs))
    with torch.inference_mode():
        for (x, o), got in zip(inputs, answers):
            np.testing.assert_allclose(got["features"], affine(torch.from_numpy(x), torch.from_numpy(o))[0].numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(got["shifted"], o * 2 + 1)
    batches = metric(served, "inferd_batch_size_count", model="scripted") - before
    assert 1 <= batches < 16


def test_bad_torch_models_fail_with_a_reason_and_the_rest_serves(served):
    with Client(socket=served.socket_path) as c:
        index = {r["name"]: r for r in c.models()}
        assert index["untyped"]["state"] == "FAILED"
        assert "config.toml" in index["untyped"]["reason"] and "[[inputs]]" in index["untyped"]["reason"]
        with pytest.raises(InferdClientError) as e:
            c.infer("untyped", {"x": np.zeros((1, 8), np.float32)})
        assert e.value.code == "unavailable"
        assert c.ready("scripted")


def test_torch_missing_names_what_to_install(repo, tmp_path):
    """Without torch (its import made to fail in a fresh interpreter) the load's reason says
    what to install."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # import torch raises ImportError
        from pathlib import Path
        from inferd.backends.pytorch import TorchBackend
        try:
            TorchBackend(Path({str(repo / "exported.pt2")!r}), {{}}).load()
        except RuntimeError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "pip install 'inferd[torch]'" in out


# -- Python models and BYTES ---------------------------------------------------------------

TEXT = np.array([[b"hello", "ünïcode ✓".encode()], [b"", b"\x00\xffbinary"]], dtype=object)
UPPER = np.array([[b"HELLO!", "üNïCODE ✓".encode() + b"!"], [b"!", b"\x00\xffBINARY!"]], dtype=object)  # bytes.upper: ASCII only


def test_python_model_bytes_over_the_unix_socket(served):
    with Client(socket=served.socket_path) as c:
        out = c.infer("shout", {"text": TEXT})
        assert out["upper"].dtype == object and out["upper"].tolist() == UPPER.tolist()
        np.testing.assert_array_equal(out["length"], [[5, len("ünïcode ✓".encode())], [0, 8]])
        assert c.model_metadata("shout")["platform"] == "python"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_python_model_bytes_over_http(served, binary):
    text = TEXT if binary else TEXT[:1]  # JSON carries BYTES as text: UTF-8 elements only
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    tensor = httpclient.InferInput("text", list(text.shape), "BYTES")
    tensor.set_data_from_numpy(text, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("upper", "length")]
    result = client.infer("shout", [tensor], outputs=outputs)
    want = UPPER[: len(text)].tolist()
    if not binary:  # tritonclient gives JSON's BYTES as str
        want = [[b.decode() for b in row] for row in want]
    assert result.as_numpy("upper").tolist() == want
    client.close()


def test_python_model_bytes_over_grpc(grpc_address):
    client = grpcclient.InferenceServerClient(grpc_address)
    tensor = grpcclient.InferInput("text", list(TEXT.shape), "BYTES")
    tensor.set_data_from_numpy(TEXT)
    result = client.infer("shout", [tensor])
    assert result.as_numpy("upper").tolist() == UPPER.tolist()
    np.testing.assert_array_equal(result.as_numpy("length"), [[5, len("ünïcode ✓".encode())], [0, 8]])
    client.close()


async def test_python_model_batches_and_splits_bytes_rows(served):
    before = metric(served, "inferd_batch_size_count", model="shout")
    async with AsyncClient(socket=served.socket_path) as c:
        answers = await asyncio.gather(*(c.infer("shout", {"text": np.array([[f"row {i}".encode()]], dtype=object)})
                                         for i in range(12)))
    assert [a["upper"][0, 0] for a in answers] == [f"ROW {i}!".encode() for i in range(12)]
    assert 1 <= metric(served, "inferd_batch_size_count", model="shout") - before < 12


def test_errors_in_model_code_reach_the_caller_and_the_worker_serves_on(served):
    with Client(socket=served.socket_path) as c:
        np.testing.assert_array_equal(c.infer("fragile", {"x": np.array([1])})["y"], [2])  # a worker (a cold start)
        pids = {e["pid"] for e in served.events("warmed up") if e["model"] == "fragile"}
        with pytest.raises(InferdClientError) as e:
            c.infer("fragile", {"x": np.array([1, 13])})
        assert e.value.code == "internal" and "ValueError: 13 is unlucky" in e.value.message
        with pytest.raises(InferdClientError) as e:
            c.infer("fragile", {"x": np.array([-1])})
        assert e.value.code == "invalid_argument" and "must not be negative" in e.value.message
        with pytest.raises(InferdClientError) as e:
            c.infer("fragile", {"x": np.array([7, 7])})
        assert e.value.code == "internal" and "1 rows for a batch of 2" in e.value.message
        np.testing.assert_array_equal(c.infer("fragile", {"x": np.array([1, 2])})["y"], [2, 4])
    assert {e["pid"] for e in served.events("warmed up") if e["model"] == "fragile"} == pids  # the same worker


def test_model_code_errors_have_http_statuses(served):
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    for value, status in ((13, "500"), (-5, "400")):
        tensor = httpclient.InferInput("x", [1], "INT64")
        tensor.set_data_from_numpy(np.array([value]))
        with pytest.raises(Exception) as e:
            client.infer("fragile", [tensor])
        assert getattr(e.value, "status", lambda: None)() == status
    client.close()


async def test_model_code_that_exits_is_a_worker_crash(served):
    """os._exit in user code kills the worker: that batch fails (fragile is not idempotent),
    a new worker starts, and the next request is served."""
    with Client(socket=served.socket_path) as c:
        with pytest.raises(InferdClientError) as e:
            c.infer("fragile", {"x": np.array([99])})
        assert e.value.code == "unavailable" and "exited" in e.value.message
        await eventually(lambda: metric(served, "inferd_worker_exits_total", model="fragile", cause="crash") == 1,
                         30, "the crash to be counted")
        np.testing.assert_array_equal(c.infer("fragile", {"x": np.array([3])})["y"], [6])
        assert c.ready("fragile")
    exits = [e for e in served.events("worker exited") if e["model"] == "fragile"]
    assert exits and "3" in str(exits[-1])


def test_a_python_model_imports_the_modules_beside_it(served):
    with Client(socket=served.socket_path) as c:
        assert c.infer("helped", {"x": np.array([4])})["y"].tolist() == [8]


def test_bad_python_models_fail_with_a_reason(served):
    with Client(socket=served.socket_path) as c:
        index = {r["name"]: r for r in c.models()}
    assert index["noclass"]["state"] == "FAILED" and "must define a class Model" in index["noclass"]["reason"]
    assert index["noshapes"]["state"] == "FAILED" and "Model.inputs and Model.outputs" in index["noshapes"]["reason"]
    assert index["syntax"]["state"] == "FAILED" and "SyntaxError" in index["syntax"]["reason"]
    assert index["contradicted"]["state"] == "FAILED"
    assert "config.toml inputs 'text' (FP32 [-1, 4]) contradicts Model.inputs (BYTES [-1, -1])" in index["contradicted"]["reason"]


def test_python_model_writable_by_others_is_refused(tmp_path):
    _write(tmp_path / "m" / "1" / "model.py", SHOUT)
    os.chmod(tmp_path / "m" / "1", 0o777)
    with DaemonProcess(tmp_path) as d, Client(socket=d.socket_path) as c:
        [row] = c.models()
    assert row["state"] == "FAILED" and "writable by other users" in row["reason"]
