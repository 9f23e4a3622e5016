"""The gRPC front-end through tritonclient.grpc (sync and aio) and a raw grpclib channel.

The raw calls use tritonclient's own copy of the protocol's messages (Triton's .proto), not
inferd's: that checks the wire compatibility, and one process cannot load both copies (they
define the same `inference.*` names)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from grpc_raw import framed, grpc_call
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from samples import EVERY_DATATYPE
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

RNG = np.random.default_rng(11)


@pytest.fixture(scope="module")
def grpc_address(daemon) -> str:
    [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    return event["address"]


def test_model_ready_is_false_not_an_error_for_an_unknown_or_failed_model(grpc_address):
    """As Triton answers: OK with ready false (tritonclient raised on NOT_FOUND before)."""
    client = grpcclient.InferenceServerClient(grpc_address)
    assert client.is_model_ready("mlp") is True
    assert client.is_model_ready("no_such_model") is False
    assert client.is_model_ready("mlp", model_version="99") is False
    assert client.is_model_ready("corrupt") is False
    client.close()


@pytest.mark.parametrize("service, method", [("inference.GRPCInferenceService", "SystemSharedMemoryStatus"),
                                             ("grpc.channelz.v1.Channelz", "GetTopChannels")])
def test_an_unimplemented_method_answers_with_a_content_type(grpc_address, service, method):
    """grpcurl (Go) reads a gRPC answer without a content-type as a malformed header."""
    answer = grpc_call(int(grpc_address.rsplit(":", 1)[1]), framed(pb.ServerLiveRequest()), method=method, service=service)
    assert answer.status == str(Status.UNIMPLEMENTED.value) and answer.content_type.startswith("application/grpc")
    assert f"/{service}/{method}" in answer.message


@pytest.mark.parametrize("rows", [1, 8])
def test_tritonclient_grpc_sync_matches_onnxruntime(grpc_address, reference, rows):
    client = grpcclient.InferenceServerClient(grpc_address)
    x = RNG.standard_normal((rows, 512)).astype(np.float32)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("mlp", [tensor], request_id=f"g{rows}")
    assert result.get_response().id == f"g{rows}"
    np.testing.assert_allclose(result.as_numpy("output"), reference("mlp", {"input": x})["output"], atol=1e-5)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mlp")
    assert client.get_model_metadata("mlp").inputs[0].shape == [-1, 512]
    config = client.get_model_config("mlp").config
    assert config.max_batch_size == 64 and config.input[0].dims == [512] and config.input[0].data_type == 11
    assert client.get_inference_statistics("mlp").model_stats[0].inference_stats.success.count >= 1
    client.close()


@pytest.mark.parametrize("rows", [1, 8])
async def test_tritonclient_grpc_aio_matches_onnxruntime(grpc_address, reference, rows):
    client = grpcaio.InferenceServerClient(grpc_address)
    try:
        a = RNG.integers(-50, 50, (rows, 16), dtype=np.int32)
        b = RNG.integers(-50, 50, (rows, 16), dtype=np.int32)
        inputs = [grpcaio.InferInput("INPUT0", [rows, 16], "INT32"), grpcaio.InferInput("INPUT1", [rows, 16], "INT32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = await client.infer("add_sub", inputs, outputs=[grpcaio.InferRequestedOutput("OUTPUT1")])
        assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    finally:
        await client.close()


def test_every_datatype_round_trips_over_grpc(grpc_address):
    client = grpcclient.InferenceServerClient(grpc_address)
    values = EVERY_DATATYPE
    inputs = []
    for datatype, array in values.items():
        tensor = grpcclient.InferInput(f"IN_{datatype}", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer("identity_all", inputs)
    for datatype, array in values.items():
        got = result.as_numpy(f"OUT_{datatype}")
        if datatype == "BYTES":
            assert got.tolist() == array.tolist()
        else:
            assert got.dtype == array.dtype
            np.testing.assert_array_equal(got, array)
    client.close()


async def _call(grpc_address, method: str, message):
    host, port = grpc_address.rsplit(":", 1)
    channel = Channel(host, int(port))
    reply_type = getattr(pb, type(message).__name__.replace("Request", "Response"))
    try:
        return await UnaryUnaryMethod(channel, f"/inference.GRPCInferenceService/{method}", type(message), reply_type)(message)
    finally:
        channel.close()


def _tensor(name, datatype="INT32", shape=(1, 16), **contents):
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents))


GOOD_INPUTS = [_tensor("INPUT0", int_contents=list(range(16))), _tensor("INPUT1", int_contents=[1] * 16)]


async def test_typed_contents_are_accepted(grpc_address):
    reply = await _call(grpc_address, "ModelInfer", pb.ModelInferRequest(model_name="add_sub", inputs=GOOD_INPUTS))
    out = np.frombuffer(reply.raw_output_contents[0], np.int32)
    np.testing.assert_array_equal(out, np.arange(16) + 1)


GRPC_CASES = [
    ("unknown model", pb.ModelInferRequest(model_name="nope", inputs=GOOD_INPUTS), Status.NOT_FOUND, "unknown model"),
    ("unknown version", pb.ModelInferRequest(model_name="add_sub", model_version="7", inputs=GOOD_INPUTS), Status.NOT_FOUND, "no version"),
    ("missing input", pb.ModelInferRequest(model_name="add_sub", inputs=GOOD_INPUTS[:1]), Status.INVALID_ARGUMENT, "missing input"),
    ("wrong datatype", pb.ModelInferRequest(model_name="add_sub", inputs=[_tensor("INPUT0", "INT64", int64_contents=[0] * 16), GOOD_INPUTS[1]]),
     Status.INVALID_ARGUMENT, "expects INT32"),
    ("element count", pb.ModelInferRequest(model_name="add_sub", inputs=[_tensor("INPUT0", int_contents=[1, 2]), GOOD_INPUTS[1]]),
     Status.INVALID_ARGUMENT, "needs 16 elements"),
    ("raw size", pb.ModelInferRequest(model_name="add_sub", inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="INT32", shape=[1, 16]),
                                                                    pb.ModelInferRequest.InferInputTensor(name="INPUT1", datatype="INT32", shape=[1, 16])],
                                      raw_input_contents=[b"\0" * 64, b"\0" * 60]), Status.INVALID_ARGUMENT, "needs 64 bytes, got 60"),
    ("raw count", pb.ModelInferRequest(model_name="add_sub", inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="INT32", shape=[1, 16])],
                                       raw_input_contents=[b"\0" * 64, b"\0" * 64]), Status.INVALID_ARGUMENT, "raw_input_contents has 2"),
    ("unknown output", pb.ModelInferRequest(model_name="add_sub", inputs=GOOD_INPUTS, outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="X")]),
     Status.INVALID_ARGUMENT, "unknown output"),
    ("failed model", pb.ModelInferRequest(model_name="corrupt", inputs=GOOD_INPUTS), Status.UNAVAILABLE, "FAILED"),
]


@pytest.mark.parametrize("message,status,words", [c[1:] for c in GRPC_CASES], ids=[c[0] for c in GRPC_CASES])
async def test_bad_requests_get_the_mapped_status_and_the_next_one_is_served(grpc_address, message, status, words):
    with pytest.raises(GRPCError) as e:
        await _call(grpc_address, "ModelInfer", message)
    assert e.value.status is status and words in e.value.message
    reply = await _call(grpc_address, "ModelInfer", pb.ModelInferRequest(model_name="add_sub", inputs=GOOD_INPUTS))
    assert reply.model_name == "add_sub"


async def test_repository_index_and_refused_loads(grpc_address):
    index = await _call(grpc_address, "RepositoryIndex", pb.RepositoryIndexRequest())
    states = {m.name: (m.state, m.reason) for m in index.models}
    assert states["mlp"][0] == "READY" and states["corrupt"][0] == "FAILED" and states["corrupt"][1]
    ready = await _call(grpc_address, "RepositoryIndex", pb.RepositoryIndexRequest(ready=True))
    assert "mlp" in {m.name for m in ready.models} and "corrupt" not in {m.name for m in ready.models}
    with pytest.raises(GRPCError) as e:
        await _call(grpc_address, "RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="nope"))
    assert e.value.status is Status.NOT_FOUND and "no model 'nope'" in e.value.message
    with pytest.raises(GRPCError) as e:
        await _call(grpc_address, "RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="corrupt"))
    assert e.value.status is Status.FAILED_PRECONDITION and "failed to load model 'corrupt'" in e.value.message
    with pytest.raises(GRPCError) as e:
        await _call(grpc_address, "RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="nope"))
    assert e.value.status is Status.NOT_FOUND
    with pytest.raises(GRPCError) as e:
        await _call(grpc_address, "RepositoryModelLoad", pb.RepositoryModelLoadRequest())
    assert e.value.status is Status.INVALID_ARGUMENT and "model name is required" in e.value.message


def test_tritonclient_sees_errors_as_exceptions(grpc_address):
    client = grpcclient.InferenceServerClient(grpc_address)
    tensor = grpcclient.InferInput("input", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [tensor])
    assert "StatusCode.INVALID_ARGUMENT" in str(e.value.status()) and "expects [-1, 512]" in e.value.message()
    client.close()


async def test_grpc_deadline_reaches_the_queue_and_the_request_never_runs(daemon, grpc_address):
    """`held` would hold a lone request for 1 s; a 0.2 s grpc-timeout expires it first."""
    import aiohttp

    async def batches() -> str:
        async with aiohttp.ClientSession(daemon.url) as s:
            text = await (await s.get("/metrics")).text()
        return next(line for line in text.splitlines() if line.startswith('inferd_batch_size_count{model="held"'))

    before = await batches()
    host, port = grpc_address.rsplit(":", 1)
    channel = Channel(host, int(port))
    message = pb.ModelInferRequest(model_name="held", inputs=GOOD_INPUTS)
    try:
        method = UnaryUnaryMethod(channel, "/inference.GRPCInferenceService/ModelInfer", pb.ModelInferRequest, pb.ModelInferResponse)
        with pytest.raises((GRPCError, TimeoutError)) as e:
            await method(message, timeout=0.2)
        if isinstance(e.value, GRPCError):
            assert e.value.status is Status.DEADLINE_EXCEEDED
    finally:
        channel.close()
    await asyncio.sleep(1.2)  # past the 1 s hold: had the request stayed queued, it would have run by now
    assert await batches() == before
