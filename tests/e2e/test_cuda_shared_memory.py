"""CUDA shared memory for real, on a machine with an NVIDIA GPU: Triton's own
simple_http_cudashm_client.py and simple_grpc_cudashm_client.py, unchanged, against the daemon
on Triton's `simple` model, then what only a GPU can show: offsets within a region, a size past
the allocation, a handle that names nothing or is registered twice, copies past a region.
The client side allocates with tritonclient.utils.cuda_shared_memory, which needs cuda-python:
`pip install cuda-python` (`'cuda-python<13'` where the driver is CUDA 12). Skipped elsewhere
(without a GPU, tests/hostile/test_cuda_shared_memory.py checks the daemon's answers)."""

from __future__ import annotations

import base64
from pathlib import Path

import make_models
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from test_triton_examples import EXAMPLES, _check, run_example
from tritonclient.utils import InferenceServerException

from inferd.daemon.cuda_memory import has_gpu


def _why_not() -> str | None:
    if not has_gpu():
        return "no NVIDIA GPU on this machine"
    try:
        import tritonclient.utils.cuda_shared_memory  # noqa: F401 (needs cuda-python)
    except Exception as e:
        return f"the client needs cuda-python (pip install cuda-python): {type(e).__name__}: {e}"
    return None


WHY_NOT = _why_not()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]
ROWS = np.arange(16, dtype=np.int32).reshape(1, 16)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("cudashm_models")
    make_models.build_add_sub(root / "simple" / "1" / "model.onnx")
    (root / "simple" / "config.toml").write_text("max_batch_size = 8\n")
    with DaemonProcess(root) as daemon:
        yield daemon


@pytest.mark.parametrize("name", ["simple_http_cudashm_client.py", "simple_grpc_cudashm_client.py"])
def test_triton_cudashm_example_runs_unchanged(served, name):
    _check(run_example(EXAMPLES[name], served, Path("unused")), EXAMPLES[name])
    assert served.proc.poll() is None


@pytest.fixture(params=["http", "grpc"])
def client(request, served):
    if request.param == "http":
        c = httpclient.InferenceServerClient(served.url[len("http://"):])
    else:
        [event] = [e for e in served.events("listening") if e["frontend"] == "grpc"]
        c = grpcclient.InferenceServerClient(event["address"])
    c.module = httpclient if request.param == "http" else grpcclient
    yield c
    c.unregister_cuda_shared_memory()
    c.close()


@pytest.fixture
def gpu_regions():
    import tritonclient.utils.cuda_shared_memory as cudashm

    made = []

    def make(name: str, size: int):
        made.append(cudashm.create_shared_memory_region(name, size, 0))
        return made[-1]

    yield make
    for handle in made:
        cudashm.destroy_shared_memory_region(handle)


def _refused(match: str, fn, *args, **kwargs) -> None:
    with pytest.raises(InferenceServerException, match=match) as caught:
        fn(*args, **kwargs)
    assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT"), caught.value


def _listed(client) -> dict[str, tuple[int, int]]:
    status = client.get_cuda_shared_memory_status()
    if client.module is httpclient:
        return {r["name"]: (int(r["device_id"]), int(r["byte_size"])) for r in status}
    return {name: (r.device_id, r.byte_size) for name, r in status.regions.items()}


def test_offsets_within_a_region_and_what_is_refused(gpu_regions, client):
    """(gpu_regions first: its memory is freed after the daemon has let go of it.)"""
    import tritonclient.utils.cuda_shared_memory as cudashm

    m = client.module
    size = ROWS.nbytes
    inputs_region, outputs_region = gpu_regions("in", 3 * size), gpu_regions("out", 2 * size)
    cudashm.set_shared_memory_region(inputs_region, [np.zeros_like(ROWS), ROWS, 2 * ROWS])
    client.register_cuda_shared_memory("in", cudashm.get_raw_handle(inputs_region), 0, 3 * size)
    client.register_cuda_shared_memory("out", cudashm.get_raw_handle(outputs_region), 0, 2 * size)
    assert _listed(client) == {"in": (0, 3 * size), "out": (0, 2 * size)}

    inputs = [m.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
    inputs[0].set_shared_memory("in", size, offset=size)
    inputs[1].set_shared_memory("in", size, offset=2 * size)
    outputs = [m.InferRequestedOutput(name) for name in ("OUTPUT0", "OUTPUT1")]
    outputs[0].set_shared_memory("out", size, offset=size)
    outputs[1].set_shared_memory("out", size)
    client.infer("simple", inputs, outputs=outputs)
    np.testing.assert_array_equal(cudashm.get_contents_as_numpy(outputs_region, np.int32, [2, 16]),
                                  np.concatenate([-ROWS, 3 * ROWS]))

    handle = cudashm.get_raw_handle(inputs_region)
    _refused("already registered", client.register_cuda_shared_memory, "in", handle, 0, size)
    _refused("registered already", client.register_cuda_shared_memory, "in2", handle, 0, size)
    other = gpu_regions("other", size)
    _refused("runs past the end of the GPU allocation", client.register_cuda_shared_memory, "big",
             cudashm.get_raw_handle(other), 0, 1 << 34)
    _refused("this server sees", client.register_cuda_shared_memory, "dev", cudashm.get_raw_handle(other), 4096, size)
    _refused("opening the CUDA IPC handle failed", client.register_cuda_shared_memory, "junk",
             base64.b64encode(bytes(range(64))), 0, size)
    inputs[1].set_shared_memory("in", size, offset=2 * size + 4)
    _refused("run past the end of CUDA shared memory region 'in'", client.infer, "simple", inputs, outputs=outputs)
    inputs[1].set_shared_memory("in", size, offset=2 * size)
    outputs[0].set_shared_memory("out", size, offset=size + 1)
    _refused("run past the end of CUDA shared memory region 'out'", client.infer, "simple", inputs, outputs=outputs)
    client.unregister_cuda_shared_memory("in")
    _refused("no shared memory region 'in' is registered", client.infer, "simple", inputs)
    assert _listed(client) == {"out": (0, 2 * size)}
    client.unregister_cuda_shared_memory()
    assert _listed(client) == {}
    assert client.is_server_live()
