"""The KServe V2 / Open Inference Protocol gRPC front-end (grpclib, on the daemon's loop).

Each RPC decodes its message (inferd.daemon.frontends.grpc_codec), calls the data plane, and
encodes; InferdError becomes a gRPC status through the one table below, and anything else an
RPC raises (a bug) is INTERNAL with a short message (inferd.common.errors.unexpected).
"""

from __future__ import annotations

import asyncio
import functools
import time

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from grpclib.const import Cardinality, Handler, Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from inferd.common.codec import ValueBudget
from inferd.common.errors import ErrorCode, InferdError, clip, invalid, unexpected
from inferd.daemon.dataplane import DataPlane
from inferd.daemon.frontends import load_codec
from inferd.daemon.frontends.auth import GRPC_HEALTH, Access
from inferd.daemon.frontends.grpc_codec import decode_infer_request, encode_infer_response
from inferd.daemon.frontends.grpc_gen import inference_pb2 as pb
from inferd.daemon.frontends.grpc_gen.inference_grpc import GRPCInferenceServiceBase
from inferd.daemon.frontends.grpc_stream import model_stream_infer
from inferd.daemon.frontends.grpc_wire import EncodedReply, receive, split_raw_contents
from inferd.daemon.requests import RequestLimits

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"

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


def _rpc(infer: bool = False, load: bool = False):
    """Receive the request (bounded: grpc_wire), decode it, run the handler, send its reply;
    InferdError -> gRPC status, and a bug -> INTERNAL (its traceback in the log, not in the
    status message). ModelInfer (`infer`) may carry tensors up to server.max_request_bytes
    and gets (message, raw contents); RepositoryModelLoad (`load`) too when the server accepts
    model files; the others are small messages, parsed whole."""

    def wrap(handler):
        @functools.wraps(handler)
        async def rpc(self, stream: Stream) -> None:
            try:
                request = await _request(self, stream, infer, load)
                reply = await handler(self, request, stream)
            except GRPCError:
                raise
            except InferdError as e:
                raise GRPCError(GRPC_STATUS[e.code], e.message) from None
            except Exception as e:
                error = unexpected(e, "gRPC call failed", method=handler.__name__)
                raise GRPCError(GRPC_STATUS[error.code], error.message) from None
            if reply is not None:  # (a streaming handler sends its own replies)
                await stream.send_message(reply)

        return rpc

    return wrap


_status = _rpc()


async def _request(servicer, stream: Stream, infer: bool, load: bool):
    limits = servicer.limits
    small = limits.max_structured_bytes
    if infer or (load and servicer.dataplane.accept_model_files):
        body = await receive(stream, limits.max_request_bytes, "server.max_request_bytes")
    else:
        body = await receive(stream, small, "server.max_structured_bytes")
    try:  # (grpclib's codec and request type for this method: the decode recv_message does)
        if infer:
            return _infer_request(body, limits)
        if len(body) > small:  # a load carrying model files: parsed off the loop, as HTTP's
            return await asyncio.to_thread(stream._codec.decode, body, stream._recv_type)
        return stream._codec.decode(body, stream._recv_type)
    except DecodeError:
        raise invalid("the request is not a valid protobuf message") from None


def _infer_request(body, limits: RequestLimits) -> tuple[pb.ModelInferRequest, list[memoryview]]:
    rest, raw = split_raw_contents(body, limits.max_structured_bytes)
    return pb.ModelInferRequest.FromString(rest), raw


class _KnownOrUnimplemented(dict):
    """The server's method table, where an unknown method finds a handler that answers
    UNIMPLEMENTED: grpclib answers it itself without a content-type, which Go clients (grpcurl)
    read as a malformed header; a handler's error is sent with one, like any other status."""

    def get(self, path, default=None):
        handler = super().get(path)
        if handler is not None:
            return handler

        async def unimplemented(stream: Stream) -> None:
            raise GRPCError(Status.UNIMPLEMENTED, f"method not found: {clip(path)}")
        return Handler(unimplemented, Cardinality.UNARY_UNARY, pb.ServerLiveRequest, pb.ServerLiveResponse)


def answer_unknown_methods(server) -> None:
    server._mapping = _KnownOrUnimplemented(server._mapping)  # (grpclib has no public hook)


def require_token(server, access: Access) -> None:
    """Check the `authorization` metadata of every call before it reaches its handler."""

    async def check(event: RecvRequest) -> None:
        presented = event.metadata.get("authorization")
        if not access.allows("grpc", presented if isinstance(presented, str) else None, event.method_name in GRPC_HEALTH):
            raise GRPCError(Status.UNAUTHENTICATED, "unauthenticated")

    listen(server, RecvRequest, check)


class InferenceServicer(GRPCInferenceServiceBase):
    def __init__(self, dataplane: DataPlane, limits: RequestLimits):
        self.dataplane = dataplane
        self.limits = limits

    def __mapping__(self) -> dict:
        """The generated mapping, but ModelInfer replies with an EncodedReply (grpc_wire)."""
        mapping = super().__mapping__()
        infer = mapping[MODEL_INFER]
        mapping[MODEL_INFER] = Handler(infer.func, infer.cardinality, infer.request_type, EncodedReply)
        streamed = mapping[MODEL_STREAM_INFER]
        mapping[MODEL_STREAM_INFER] = Handler(streamed.func, streamed.cardinality, streamed.request_type, EncodedReply)
        return mapping

    @_status
    async def ServerLive(self, request, stream):
        return pb.ServerLiveResponse(live=True)

    @_status
    async def ServerReady(self, request, stream):
        return pb.ServerReadyResponse(ready=self.dataplane.state.ready)

    @_status
    async def ModelReady(self, request, stream):
        """An unknown model or version is not ready (OK, ready: false), as Triton answers; HTTP
        answers it 404."""
        try:
            return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))
        except InferdError as e:
            if e.code is not ErrorCode.NOT_FOUND:
                raise
            return pb.ModelReadyResponse(ready=False)

    @_status
    async def ServerMetadata(self, request, stream):
        return json_format.ParseDict(self.dataplane.server_metadata(), pb.ServerMetadataResponse())

    @_status
    async def ModelMetadata(self, request, stream):
        return json_format.ParseDict(self.dataplane.model_metadata(request.name, request.version), pb.ModelMetadataResponse())

    @_rpc(infer=True)
    async def ModelInfer(self, request, stream):
        message, raw = request
        deadline = None
        if stream.deadline is not None:
            deadline = time.monotonic() + stream.deadline.time_remaining()
        budget = ValueBudget(self.limits.max_value_elements)
        shm = self.dataplane.system_shared_memory
        with shm.input_reader(budget, self.limits.max_request_bytes) as read_region:  # (regions held till the end)
            infer_request = decode_infer_request(message, raw, deadline, budget, read_region)
            with shm.output_targets(infer_request.output_parameters) as targets:
                response = await self.dataplane.infer(message.model_name, message.model_version, infer_request, "grpc")
                written = targets.write(response.outputs) if targets else None  # (outputs put in regions)
        return await encode_infer_response(response, written)

    async def ModelStreamInfer(self, stream):
        """grpc_stream: 0..N responses per request; a request's error goes in its error_message."""
        try:
            await model_stream_infer(self.dataplane, self.limits, stream)
        except InferdError as e:  # the stream itself is unreadable (a message too big, say)
            raise GRPCError(GRPC_STATUS[e.code], e.message) from None
        except GRPCError:
            raise
        except Exception as e:
            error = unexpected(e, "gRPC stream failed")
            raise GRPCError(GRPC_STATUS[error.code], error.message) from None

    @_status
    async def ModelConfig(self, request, stream):
        # Strict: a key the data plane emits and the proto lacks is a bug (INTERNAL, logged),
        # not a field gRPC callers silently never see.
        config = self.dataplane.model_config(request.name, request.version)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))

    @_status
    async def ModelStatistics(self, request, stream):
        stats = self.dataplane.model_statistics(request.name, request.version)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    @_status
    async def RepositoryIndex(self, request, stream):
        index = await self.dataplane.repository_index(request.ready)
        return json_format.ParseDict({"models": index}, pb.RepositoryIndexResponse(), ignore_unknown_fields=True)

    @_rpc(load=True)
    async def RepositoryModelLoad(self, request, stream):
        await self.dataplane.load_model(request.model_name, load_codec.grpc_load_parameters(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @_status
    async def RepositoryModelUnload(self, request, stream):
        await self.dataplane.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -- the shared-memory extensions (inferd.daemon.shared_memory) ----------------------------

    @_status
    async def SystemSharedMemoryStatus(self, request, stream):
        reply = pb.SystemSharedMemoryStatusResponse()
        for region in self.dataplane.system_shared_memory.status(request.name):
            reply.regions[region["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**region))
        return reply

    @_status
    async def SystemSharedMemoryRegister(self, request, stream):
        self.dataplane.system_shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_status
    async def SystemSharedMemoryUnregister(self, request, stream):
        self.dataplane.system_shared_memory.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_status
    async def CudaSharedMemoryStatus(self, request, stream):
        reply = pb.CudaSharedMemoryStatusResponse()
        for region in self.dataplane.cuda_shared_memory.status(request.name):
            reply.regions[region["name"]].CopyFrom(pb.CudaSharedMemoryStatusResponse.RegionStatus(**region))
        return reply

    @_status
    async def CudaSharedMemoryRegister(self, request, stream):
        self.dataplane.cuda_shared_memory.register(request.name, request.raw_handle, request.device_id, request.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    @_status
    async def CudaSharedMemoryUnregister(self, request, stream):
        self.dataplane.cuda_shared_memory.unregister(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()
