"""gRPC compression through tritonclient (grpcio underneath): a request compressed with gzip or
deflate is inflated and served; the reply comes back uncompressed, which every client reads
(hostile cases: tests/hostile/test_grpc_compression.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from samples import EVERY_DATATYPE

RNG = np.random.default_rng(23)


@pytest.fixture(scope="module")
def grpc_address(daemon) -> str:
    [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    return event["address"]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_a_compressed_infer_matches_onnxruntime(grpc_address, reference, algorithm):
    client = grpcclient.InferenceServerClient(grpc_address)
    x = RNG.standard_normal((8, 512)).astype(np.float32)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("mlp", [tensor], request_id=algorithm, compression_algorithm=algorithm)
    assert result.get_response().id == algorithm
    np.testing.assert_allclose(result.as_numpy("output"), reference("mlp", {"input": x})["output"], atol=1e-5)
    client.close()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
async def test_a_compressed_message_inflating_past_a_slice_comes_back_whole(grpc_address, algorithm):
    """12 MiB inflated from a few KiB: inflated a slice per loop turn, then served as usual."""
    big = np.tile(np.arange(1024, dtype=np.float32), 3 << 10).reshape(1, -1)
    client = grpcaio.InferenceServerClient(grpc_address)
    try:
        inputs = []
        for datatype, sample in EVERY_DATATYPE.items():
            value = big if datatype == "FP32" else sample[:, :1]
            inputs.append(grpcaio.InferInput(f"IN_{datatype}", list(value.shape), datatype))
            inputs[-1].set_data_from_numpy(value)
        result = await client.infer("identity_all", inputs, outputs=[grpcaio.InferRequestedOutput("OUT_FP32")],
                                    compression_algorithm=algorithm)
        assert np.array_equal(result.as_numpy("OUT_FP32"), big)
    finally:
        await client.close()
