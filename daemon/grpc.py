"""The KServe V2 / Open Inference Protocol gRPC front-end (grpclib, on the daemon's loop).

Each RPC decodes its message, calls the data plane, and encodes; InferdError becomes a gRPC
status through the one table below. Numeric and BYTES outputs all travel in
raw_output_contents, which is what tritonclient reads.
"""

from __future__ import annotations

import functools
import time

from google.protobuf import json_format
from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from inferd.config.errors import ErrorCode, InferdError
from inferd.config.tensors import check_datatype_and_shape, datatype_of, from_raw, to_raw
from inferd.daemon.auth import GRPC_HEALTH, Access
from inferd.daemon.dataplane import DataPlane
from inferd.daemon.grpc_gen import inference_pb2 as pb
from inferd.daemon.grpc_gen.inference_grpc import GRPCInferenceServiceBase
from inferd.daemon.tensors import from_values
from inferd.scheduler.request import InferRequest

GRPC_STATUS = {
    ErrorCode.INVALID_ARGUMENT: Status.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: Status.NOT_FOUND,
    ErrorCode.FAILED_PRECONDITION: Status.FAILED_PRECONDITION,
    ErrorCode.RESOURCE_EXHAUSTED: Status.RESOURCE_EXHAUSTED,
    ErrorCode.DEADLINE_EXCEEDED: Status.DEADLINE_EXCEEDED,
    ErrorCode.CANCELLED: Status.CANCELLED,
    ErrorCode.UNAVAILABLE: Status.UNAVAILABLE,
    ErrorCode.UNIMPLEMENTED: Status.UNIMPLEMENTED,
    ErrorCode.INTERNAL: Status.INTERNAL,
}

# Which InferTensorContents field carries each datatype (FP16 has none: raw only).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _status(handler):
    """Receive the request, run the handler, send its reply; InferdError -> gRPC status."""

    @functools.wraps(handler)
    async def rpc(self, stream: Stream) -> None:
        request = await stream.recv_message()
        try:
            reply = await handler(self, request, stream)
        except InferdError as e:
            raise GRPCError(GRPC_STATUS[e.code], e.message) from None
        await stream.send_message(reply)

    return rpc


def _bad(message: str) -> InferdError:
    return InferdError(ErrorCode.INVALID_ARGUMENT, message)


def _parameters(params) -> dict:
    return {key: getattr(p, p.WhichOneof("parameter_choice")) for key, p in params.items() if p.WhichOneof("parameter_choice")}


def decode_infer_request(message: pb.ModelInferRequest, deadline: float | None) -> InferRequest:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise _bad(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs")
    tensors = {}
    for i, tensor in enumerate(message.inputs):
        name = tensor.name
        if name in tensors:
            raise _bad(f"input {name!r} appears twice")
        shape = list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise _bad(f"input {name!r}: contents given together with raw_input_contents")
            tensors[name] = from_raw(name, tensor.datatype, shape, raw[i])
        else:
            field = _CONTENTS_FIELD.get(tensor.datatype)
            if field is None:
                if tensor.datatype == "FP16":
                    raise _bad(f"input {name!r}: FP16 data must be sent in raw_input_contents")
                check_datatype_and_shape(name, tensor.datatype, shape)  # names what is wrong
            tensors[name] = from_values(name, tensor.datatype, shape, getattr(tensor.contents, field))
    # (Empty repeated fields and maps are the common case: skip building anything from them.)
    outputs = tuple(o.name for o in message.outputs) if message.outputs else None
    parameters = _parameters(message.parameters) if message.parameters else {}
    return InferRequest(tensors, outputs, message.id, parameters, deadline)


def encode_infer_response(response) -> pb.ModelInferResponse:
    reply = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version, id=response.id)
    for name, array in response.outputs.items():
        reply.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        reply.raw_output_contents.append(to_raw(array))
    return reply


def require_token(server, access: Access) -> None:
    """Check the `authorization` metadata of every call before it reaches its handler."""

    async def check(event: RecvRequest) -> None:
        presented = event.metadata.get("authorization")
        if not access.allows("grpc", presented if isinstance(presented, str) else None, event.method_name in GRPC_HEALTH):
            raise GRPCError(Status.UNAUTHENTICATED, "unauthenticated")

    listen(server, RecvRequest, check)


class InferenceServicer(GRPCInferenceServiceBase):
    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    @_status
    async def ServerLive(self, request, stream):
        return pb.ServerLiveResponse(live=True)

    @_status
    async def ServerReady(self, request, stream):
        return pb.ServerReadyResponse(ready=self.dataplane.state.ready)

    @_status
    async def ModelReady(self, request, stream):
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    @_status
    async def ServerMetadata(self, request, stream):
        return json_format.ParseDict(self.dataplane.server_metadata(), pb.ServerMetadataResponse())

    @_status
    async def ModelMetadata(self, request, stream):
        return json_format.ParseDict(self.dataplane.model_metadata(request.name, request.version), pb.ModelMetadataResponse())

    @_status
    async def ModelInfer(self, request, stream):
        deadline = None
        if stream.deadline is not None:
            deadline = time.monotonic() + stream.deadline.time_remaining()
        infer_request = decode_infer_request(request, deadline)
        response = await self.dataplane.infer(request.model_name, request.model_version, infer_request, "grpc")
        return encode_infer_response(response)

    @_status
    async def ModelConfig(self, request, stream):
        config = self.dataplane.model_config(request.name, request.version)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig(), ignore_unknown_fields=True))

    @_status
    async def ModelStatistics(self, request, stream):
        stats = self.dataplane.model_statistics(request.name, request.version)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    @_status
    async def RepositoryIndex(self, request, stream):
        index = self.dataplane.repository_index(request.ready)
        return json_format.ParseDict({"models": index}, pb.RepositoryIndexResponse())

    @_status
    async def RepositoryModelLoad(self, request, stream):
        await self.dataplane.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_status
    async def RepositoryModelUnload(self, request, stream):
        await self.dataplane.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()
