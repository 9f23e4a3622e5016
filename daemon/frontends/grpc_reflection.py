"""gRPC server reflection (grpc.reflection.v1 and v1alpha, grpclib's implementation), so that
grpcurl and other generic clients can list the services and read their protos. A method's name
(`inference.GRPCInferenceService.ModelInfer`) finds its file too, which grpclib's does not.

grpclib reads each request of the reflection stream in one step, however large; here every
request goes through the inference service's receive path instead (capped at
server.max_structured_bytes, compressed or not), and one stream may carry at most
MAX_REFLECTION_REQUESTS of them.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from grpclib.exceptions import GRPCError
from grpclib.reflection._deprecated import ServerReflection as ServerReflectionV1Alpha
from grpclib.reflection.service import ServerReflection
from grpclib.server import Stream
from grpclib.utils import _service_name

from inferd.common.errors import ErrorCode, InferdError, invalid, unexpected
from inferd.daemon.frontends.grpc import GRPC_STATUS
from inferd.daemon.frontends.grpc_wire import receive
from inferd.daemon.requests import RequestLimits

MAX_REFLECTION_REQUESTS = 1000  # per stream: a client lists and describes a few dozen things


class _BoundedRequests:
    """The call's stream as grpclib's servicer uses it (iterated, send_message), each request
    read through grpc_wire.receive."""

    def __init__(self, stream: Stream, limits: RequestLimits):
        self._stream, self._limits = stream, limits

    async def __aiter__(self):
        stream = self._stream
        for _ in range(MAX_REFLECTION_REQUESTS):
            body = await receive(stream, self._limits.max_structured_bytes, "server.max_structured_bytes", may_end=True)
            if body is None:
                return
            try:
                request = stream._codec.decode(body, stream._recv_type)
            except DecodeError:
                raise invalid("the request is not a valid protobuf message") from None
            yield request
        raise InferdError(ErrorCode.RESOURCE_EXHAUSTED,
                          f"a reflection stream may carry at most {MAX_REFLECTION_REQUESTS} requests")

    async def send_message(self, message) -> None:
        await self._stream.send_message(message)


def _bounded(base):
    class Bounded(base):
        def __init__(self, limits: RequestLimits, names: list[str]):
            super().__init__(_service_names=names)
            self.limits = limits

        def _file_containing_symbol_response(self, symbol: str):
            """Also for a method (`package.Service.Method`, as the spec allows), which
            protobuf's pool does not index."""
            response = super()._file_containing_symbol_response(symbol)
            service, _, method = symbol.rpartition(".")
            if response.HasField("error_response") and service:
                try:
                    found = self._pool.FindServiceByName(service)
                except KeyError:
                    return response
                if method in found.methods_by_name:
                    return self._file_descriptor_response(found.file)
            return response

        async def ServerReflectionInfo(self, stream: Stream) -> None:  # noqa: N802 (the proto's name)
            try:
                await super().ServerReflectionInfo(_BoundedRequests(stream, self.limits))
            except GRPCError:
                raise
            except InferdError as e:
                raise GRPCError(GRPC_STATUS[e.code], e.message) from None
            except Exception as e:
                error = unexpected(e, "gRPC call failed", method="ServerReflectionInfo")
                raise GRPCError(GRPC_STATUS[error.code], error.message) from None

    return Bounded


def with_reflection(services: list, limits: RequestLimits) -> list:
    """`services` and the two reflection services, which list all of them and themselves."""
    reflection = [_bounded(ServerReflection), _bounded(ServerReflectionV1Alpha)]
    names = [_service_name(s) for s in services]
    names += ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]
    return [*services, *(cls(limits, names) for cls in reflection)]
