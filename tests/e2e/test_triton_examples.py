"""Triton's own example clients (tests/triton_examples/, copied unchanged from
triton-inference-server/client) against the daemon, on the models they were written for:
Triton's quickstart repository as it is where it holds them (ON_TRITONS_REPOSITORY), else
rebuilt in tests/triton_models.py. Each runs as a subprocess with the daemon's addresses in
its -u flag, as a user would run it; it passes when it exits 0 and prints its success line.

EXAMPLES holds every run; NEEDS the ones that wait for a feature (with the first error they
give today). Moving a run from NEEDS into the suite is deleting its NEEDS line."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import triton_models
from daemon_process import DaemonProcess
from PIL import Image
from test_auth import _self_signed

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "triton_examples"
IMAGE = "{image}"  # an argument replaced by the path of a red picture
CERT = "{cert}"  # an argument replaced by the TLS daemon's certificate (the one CA the client trusts)


@dataclass(frozen=True)
class Example:
    script: str
    protocol: str  # the front-end its -u names: "http" or "grpc"
    expect: str  # printed on success (some examples exit 0 on a failed connection)
    args: tuple[str, ...] = ()
    repository: int = 0  # >0: a daemon of its own on a repository of this many models
    tls: bool = False  # a daemon of its own that serves TLS (on `simple` alone)
    config: str = ""  # the daemon's inferd.toml, when it needs one of its own


H, G = "http", "grpc"
AS_TRITON = '[server]\nname = "triton"\n'  # the health_metadata examples check the server's name

# Every run: its name (the script, with a word for its flags) -> how it is run.
EXAMPLES = {
    "simple_http_infer_client.py": Example("simple_http_infer_client.py", H, "Request for unknown model"),
    "simple_http_infer_client.py gzip": Example(
        "simple_http_infer_client.py", H, "Request for unknown model",
        ("--request-compression-algorithm", "gzip", "--response-compression-algorithm", "deflate")),
    "simple_http_infer_client.py tls": Example(
        "simple_http_infer_client.py", H, "Request for unknown model", ("--ssl", "--ca-certs", CERT), tls=True),
    "simple_http_async_infer_client.py": Example("simple_http_async_infer_client.py", H, "0 + 1 = 1"),
    "simple_http_aio_infer_client.py": Example("simple_http_aio_infer_client.py", H, "PASS: infer"),
    "simple_http_health_metadata.py": Example("simple_http_health_metadata.py", H, "'name': 'simple'", config=AS_TRITON),
    "simple_http_string_infer_client.py": Example("simple_http_string_infer_client.py", H, "PASS: string"),
    "simple_http_model_control.py": Example("simple_http_model_control.py", H, "PASS: model control", repository=7),
    "simple_http_shm_client.py": Example("simple_http_shm_client.py", H, "PASS: system shared memory"),
    "simple_http_shm_string_client.py": Example("simple_http_shm_string_client.py", H, "PASS: system shared memory"),
    "simple_http_cudashm_client.py": Example("simple_http_cudashm_client.py", H, "PASS: cuda shared memory"),
    "simple_http_sequence_sync_infer_client.py": Example("simple_http_sequence_sync_infer_client.py", H, "PASS: Sequence"),
    "simple_http_sequence_sync_infer_client.py -d": Example(
        "simple_http_sequence_sync_infer_client.py", H, "PASS: Sequence", ("-d",)),
    "reuse_infer_objects_client.py http": Example("reuse_infer_objects_client.py", H, "======== END ========", ("-i", "http")),
    "image_client.py densenet": Example(
        "image_client.py", H, "= RED WINE", ("-m", "densenet_onnx", "-c", "3", "-s", "INCEPTION", IMAGE)),
    "image_client.py inception async": Example("image_client.py", H, "= red", ("-m", "inception_graphdef", "-b", "2", "-a", IMAGE)),
    "simple_grpc_infer_client.py": Example("simple_grpc_infer_client.py", G, "PASS: infer"),
    "simple_grpc_infer_client.py gzip": Example("simple_grpc_infer_client.py", G, "PASS: infer", ("-C", "gzip")),
    "simple_grpc_infer_client.py tls": Example("simple_grpc_infer_client.py", G, "PASS: infer", ("-s", "-r", CERT), tls=True),
    "simple_grpc_async_infer_client.py": Example("simple_grpc_async_infer_client.py", G, "PASS: Async infer"),
    "simple_grpc_aio_infer_client.py": Example("simple_grpc_aio_infer_client.py", G, "PASS: grpc aio infer"),
    "simple_grpc_health_metadata.py": Example("simple_grpc_health_metadata.py", G, 'name: "simple"', config=AS_TRITON),
    "simple_grpc_string_infer_client.py": Example("simple_grpc_string_infer_client.py", G, "PASS: string"),
    "simple_grpc_custom_args_client.py": Example("simple_grpc_custom_args_client.py", G, "PASS: CustomArgs"),
    "simple_grpc_keepalive_client.py": Example("simple_grpc_keepalive_client.py", G, "PASS: KeepAlive"),
    "simple_grpc_model_control.py": Example("simple_grpc_model_control.py", G, "PASS: model control", repository=8),
    "grpc_client.py": Example("grpc_client.py", G, "PASS"),
    "grpc_explicit_int_content_client.py": Example("grpc_explicit_int_content_client.py", G, "PASS: explicit int"),
    "grpc_explicit_int8_content_client.py": Example("grpc_explicit_int8_content_client.py", G, "PASS: explicit int8"),
    "grpc_explicit_byte_content_client.py": Example("grpc_explicit_byte_content_client.py", G, "PASS: explicit string"),
    "simple_grpc_shm_client.py": Example("simple_grpc_shm_client.py", G, "PASS: system shared memory"),
    "simple_grpc_shm_string_client.py": Example("simple_grpc_shm_string_client.py", G, "PASS: system shared memory"),
    "simple_grpc_cudashm_client.py": Example("simple_grpc_cudashm_client.py", G, "PASS: cudashm"),
    "simple_grpc_sequence_sync_infer_client.py": Example("simple_grpc_sequence_sync_infer_client.py", G, "PASS: Sequence"),
    "simple_grpc_sequence_sync_infer_client.py -d": Example(
        "simple_grpc_sequence_sync_infer_client.py", G, "PASS: Sequence", ("-d",)),
    "simple_grpc_sequence_stream_infer_client.py": Example("simple_grpc_sequence_stream_infer_client.py", G, "PASS: Sequence"),
    "simple_grpc_sequence_stream_infer_client.py -d": Example(
        "simple_grpc_sequence_stream_infer_client.py", G, "PASS: Sequence", ("-d",)),
    "simple_grpc_aio_sequence_stream_infer_client.py": Example(
        "simple_grpc_aio_sequence_stream_infer_client.py", G, "PASS: grpc aio sequence stream"),
    "simple_grpc_aio_sequence_stream_infer_client.py -d": Example(
        "simple_grpc_aio_sequence_stream_infer_client.py", G, "PASS: grpc aio sequence stream", ("-d",)),
    "simple_grpc_custom_repeat.py": Example("simple_grpc_custom_repeat.py", G, "PASS: Decoupled API"),
    "reuse_infer_objects_client.py grpc": Example("reuse_infer_objects_client.py", G, "======== END ========", ("-i", "grpc")),
    "image_client.py grpc inception": Example(
        "image_client.py", G, "= red", ("-i", "grpc", "-m", "inception_graphdef", "-c", "2", "-b", "2", IMAGE)),
    "image_client.py grpc streaming": Example(
        "image_client.py", G, "= RED WINE", ("-i", "grpc", "--streaming", "-m", "densenet_onnx", IMAGE)),
    "grpc_image_client.py densenet": Example(
        "grpc_image_client.py", G, "= RED WINE", ("-m", "densenet_onnx", "-c", "3", "-s", "INCEPTION", IMAGE)),
    "grpc_image_client.py streaming": Example(
        "grpc_image_client.py", G, "= red", ("--streaming", "-m", "inception_graphdef", "-b", "2", IMAGE)),
}

# The runs served by Triton's own quickstart repository (tests/triton_repository, its config.pbtxt
# files as they are; densenet_onnx's model file a generated stand-in; simple_identity a
# TritonPythonModel): the rest call models it does not hold (simple_string_dyna_sequence,
# repeat_int32, inception_graphdef with batching), from the rebuilt ones.
ON_TRITONS_REPOSITORY = {
    "simple_http_string_infer_client.py", "simple_grpc_string_infer_client.py",
    "simple_http_infer_client.py", "simple_http_infer_client.py gzip", "simple_http_async_infer_client.py",
    "simple_http_aio_infer_client.py", "simple_http_shm_client.py", "simple_http_shm_string_client.py",
    "simple_http_sequence_sync_infer_client.py", "reuse_infer_objects_client.py http", "image_client.py densenet",
    "simple_grpc_infer_client.py", "simple_grpc_infer_client.py gzip", "simple_grpc_async_infer_client.py",
    "simple_grpc_aio_infer_client.py", "simple_grpc_custom_args_client.py", "simple_grpc_keepalive_client.py",
    "grpc_client.py", "grpc_explicit_int_content_client.py", "grpc_explicit_int8_content_client.py",
    "grpc_explicit_byte_content_client.py", "simple_grpc_shm_client.py", "simple_grpc_shm_string_client.py",
    "simple_grpc_sequence_sync_infer_client.py", "simple_grpc_sequence_stream_infer_client.py",
    "simple_grpc_aio_sequence_stream_infer_client.py", "reuse_infer_objects_client.py grpc",
    "image_client.py grpc streaming", "grpc_image_client.py densenet",
}

# The runs that wait for a feature: (the feature, who builds it) and the first error each gives
# on main today. The lead deletes a line when its feature merges.
CUDA_GPU = ("a GPU, and cuda-python for the client (without it, import tritonclient.utils.cuda_shared_memory raises "
            "RuntimeError): tests/e2e/test_cuda_shared_memory.py runs it where both are (gpu marker)")
NEEDS: dict[str, str] = {
    "simple_grpc_model_control.py": "load with model files (lead, helper C): files={'file:' + 'A' * 256: ...} must answer "
                                    "INTERNAL 'failed to poll from model repository'; inferd answers FAILED_PRECONDITION "
                                    "(models.accept_model_files off), INVALID_ARGUMENT with it on, which the example's own "
                                    "TODO calls more appropriate",
    "simple_http_cudashm_client.py": CUDA_GPU,
    "simple_grpc_cudashm_client.py": CUDA_GPU,
}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "red.png"
    Image.new("RGB", (64, 48), (230, 30, 20)).save(path)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory, image):
    root = triton_models.make_triton_models(tmp_path_factory.mktemp("triton_models"))
    with DaemonProcess(root) as daemon:
        yield daemon, image


@pytest.fixture(scope="module")
def tritons_repository(tmp_path_factory, image):
    root = triton_models.make_triton_repository(tmp_path_factory.mktemp("triton_repository") / "models")
    with DaemonProcess(root) as daemon:
        yield daemon, image


def _grpc_address(daemon: DaemonProcess) -> str:
    [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    return event["address"]


def run_example(example: Example, daemon: DaemonProcess, image: Path, cert: str = "") -> subprocess.CompletedProcess:
    url = daemon.url.removeprefix("http://") if example.protocol == "http" else _grpc_address(daemon)
    args = [str(image) if a == IMAGE else cert if a == CERT else a for a in example.args]
    return subprocess.run([sys.executable, str(EXAMPLES_DIR / example.script), "-u", url, *args],
                          capture_output=True, text=True, timeout=120, cwd=EXAMPLES_DIR)


def _check(done: subprocess.CompletedProcess, example: Example) -> None:
    output = f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, output
    assert example.expect in done.stdout, output


@pytest.mark.parametrize("name", [name for name in EXAMPLES if name not in NEEDS])
def test_example(request, tmp_path, name):
    example = EXAMPLES[name]
    daemon, image = request.getfixturevalue("tritons_repository" if name in ON_TRITONS_REPOSITORY else "served")
    if not (example.repository or example.tls or example.config):
        _check(run_example(example, daemon, image), example)
        return
    # The model-control examples count the repository's models, and load and unload `simple`.
    root = triton_models.make_control_models(tmp_path / "models", example.repository or 1)
    config, cert = None, ""
    if example.config:
        config = tmp_path / "inferd.toml"
        config.write_text(example.config)
    if example.tls:
        cert, key = _self_signed(tmp_path)
        config = tmp_path / "inferd.toml"
        config.write_text(f'[auth]\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    with DaemonProcess(root, config=config) as own:
        _check(run_example(example, own, image, cert), example)


def test_model_control_over_grpc_differs_only_in_the_status_for_an_over_long_file_name(tmp_path):
    """simple_grpc_model_control.py's last check wants INTERNAL for a file name of 256
    characters, which its own TODO calls wrong; inferd refuses model files unless
    models.accept_model_files (FAILED_PRECONDITION), and a bad name with INVALID_ARGUMENT.
    Every check before that one passes; the server serves on."""
    root = triton_models.make_control_models(tmp_path / "models", 8)
    with DaemonProcess(root) as own:
        done = run_example(EXAMPLES["simple_grpc_model_control.py"], own, Path("unused"))
        assert done.returncode == 1, done.stdout + done.stderr
        failed = [line for line in done.stdout.splitlines() if "FAILED" in line]
        assert failed == ["FAILED: expected status 'StatusCode.INTERNAL' for oversized file parameter, got "
                          "status='StatusCode.FAILED_PRECONDITION'"], done.stdout + done.stderr
        assert own.proc.poll() is None


def test_every_waiting_run_is_an_example():
    """A NEEDS or ON_TRITONS_REPOSITORY line names a run of EXAMPLES (a typo would silently drop
    it from the suite, or from Triton's repository)."""
    assert set(NEEDS) <= set(EXAMPLES), set(NEEDS) - set(EXAMPLES)
    assert not ON_TRITONS_REPOSITORY - set(EXAMPLES), ON_TRITONS_REPOSITORY - set(EXAMPLES)
