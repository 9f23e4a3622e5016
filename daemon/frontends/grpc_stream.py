"""ModelStreamInfer: the bidirectional stream of ModelInferRequest -> ModelStreamInferResponse.

Requests on one stream run concurrently and are answered as they finish, each response carrying
its request's id. An ordinary model answers one response per request; a decoupled model 0..N
(inferd.scheduler.streams). Every response carries the parameter `triton_final_response`
(false while more follow), as Triton's do; a decoupled request's end is an empty response
marked final, sent only when the request asks with `triton_enable_empty_final_response`. A
request's error goes in `error_message` and the stream goes on. Inputs may come from shared
memory regions and outputs go into them, as in ModelInfer; each response of a decoupled model
is written into its regions just before it is sent (so they hold the latest one sent, as from
Triton, which writes each response there too).

Bounds: messages are read as ModelInfer's (grpc_wire: server.max_request_bytes); at most
MAX_IN_FLIGHT requests of one stream run at once (one more is answered RESOURCE_EXHAUSTED in
its error_message); a decoupled model's responses wait for the writer to hand the previous
ones to HTTP/2 (whose flow control holds them when the client does not read) before the model
may run further ahead (streams.WINDOW). When the client ends the stream, its requests still
running are answered and then the call ends; when it cancels, they are withdrawn (a decoupled
model stops).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import NamedTuple

from google.protobuf.message import DecodeError
from grpclib.server import Stream

from inferd.common.codec import ValueBudget
from inferd.common.errors import ErrorCode, InferdError, invalid, unexpected
from inferd.daemon.dataplane import DataPlane
from inferd.daemon.frontends.grpc_codec import decode_infer_request, encode_infer_response
from inferd.daemon.frontends.grpc_gen import inference_pb2 as pb
from inferd.daemon.frontends.grpc_wire import EncodedReply, receive, split_raw_contents
from inferd.daemon.requests import InferResponse, RequestLimits
from inferd.daemon.shared_memory import OutputTargets

MAX_IN_FLIGHT = 100  # requests of one stream running at once (as server.http2_max_streams' default)
INFER_RESPONSE_TAG = b"\x12"  # ModelStreamInferResponse's field 2 (infer_response), length-delimited
FINAL = "triton_final_response"
WANTS_EMPTY_FINAL = "triton_enable_empty_final_response"


async def _encode(response: InferResponse, final: bool, shared: set[str] | None) -> EncodedReply:
    """ModelInfer's reply, with the final flag, as a ModelStreamInferResponse's infer_response."""
    return await encode_infer_response(response, shared, {FINAL: final}, wrap=INFER_RESPONSE_TAG)


def _error(message: str, request_id: str) -> EncodedReply:
    reply = pb.ModelStreamInferResponse(error_message=message, infer_response=pb.ModelInferResponse(id=request_id))
    return EncodedReply(reply.SerializeToString())


class _Item(NamedTuple):
    """What the writer sends next: a response, an error's text, or nothing (None: a request's end
    that only releases its regions). `targets`: the request's output regions, written just
    before its response is sent and released at its final item."""

    payload: InferResponse | str | None
    request_id: str
    final: bool
    number: int = 0  # the request's number on this stream (0: refused before it ran)
    ack: Callable[[], None] | None = None
    targets: OutputTargets | None = None


class _StreamCall:
    """One ModelStreamInfer call: reads requests, submits them, writes their responses in order
    of arrival (one writer: grpclib sends one message at a time)."""

    def __init__(self, dataplane: DataPlane, limits: RequestLimits, stream: Stream):
        self.dataplane, self.limits, self.stream = dataplane, limits, stream
        self.replies: asyncio.Queue[_Item | None] = asyncio.Queue()
        self.running: dict[int, object] = {}  # request number -> its withdraw function
        self.idle = asyncio.Event()  # no request running
        self.idle.set()
        self.room = asyncio.Event()  # the writer has caught up with the reader's refusals
        self.count = 0

    async def serve(self) -> None:
        writer = asyncio.ensure_future(self._write(asyncio.current_task()))
        try:
            while (body := await receive(self.stream, self.limits.max_request_bytes, "server.max_request_bytes",
                                         may_end=True)) is not None:
                self._start(body)
                while self.replies.qsize() >= MAX_IN_FLIGHT:  # the client does not read: neither do we
                    self.room.clear()
                    await self.room.wait()
            await self.idle.wait()  # the client ended its side: answer what runs, then end
            self.replies.put_nowait(None)
            await writer
        finally:
            for withdraw in list(self.running.values()):
                if withdraw is not None:
                    withdraw()
            writer.cancel()
            while not self.replies.empty():  # (answers never sent: their requests' regions are let go)
                if (item := self.replies.get_nowait()) is not None and item.targets is not None:
                    item.targets.release()

    def _start(self, body) -> None:
        """Decode and submit one request; a refusal is answered on the stream."""
        self.count += 1
        number, message = self.count, None
        try:
            rest, raw = split_raw_contents(body, self.limits.max_structured_bytes)
            try:
                message = pb.ModelInferRequest.FromString(rest)
            except DecodeError:
                raise invalid("the request is not a valid protobuf message") from None
            if len(self.running) >= MAX_IN_FLIGHT:
                raise InferdError(ErrorCode.RESOURCE_EXHAUSTED, f"this stream has {MAX_IN_FLIGHT} requests running, the most "
                                  "one stream may have: wait for their responses, or open another stream")
            self._submit(number, message, raw)
        except InferdError as e:
            self.replies.put_nowait(_Item(e.message, message.id if message is not None else "", True))
        except Exception as e:
            self.replies.put_nowait(_Item(unexpected(e, "gRPC stream request failed").message,
                                          message.id if message is not None else "", True))

    def _submit(self, number: int, message: pb.ModelInferRequest, raw) -> None:
        deadline = None
        if self.stream.deadline is not None:
            deadline = time.monotonic() + self.stream.deadline.time_remaining()
        budget = ValueBudget(self.limits.max_value_elements)
        shm = self.dataplane.system_shared_memory  # (inputs and outputs in regions, as ModelInfer's)
        reader = shm.input_reader(budget, self.limits.max_request_bytes)  # (its regions: held till the request ends)
        try:
            request = decode_infer_request(message, raw, deadline, budget, reader)
            held = shm.output_targets(request.output_parameters)
        except BaseException:
            reader.release()
            raise
        wants_empty_final = _bool_parameter(message, WANTS_EMPTY_FINAL)
        targets = held if held else None  # held until the writer has sent the request's last response

        def on_response(response: InferResponse, ack) -> None:
            self.replies.put_nowait(_Item(response, message.id, False, number, ack, targets))

        def done(outcome) -> None:
            reader.release()
            self._ended(number)
            if isinstance(outcome, InferdError):
                self.replies.put_nowait(_Item(outcome.message, message.id, True, number, None, targets))
            elif outcome.outputs or wants_empty_final or targets:  # (or only the regions' release)
                send = outcome if outcome.outputs or wants_empty_final else None
                self.replies.put_nowait(_Item(send, message.id, True, number, None, targets))

        self.running[number] = None
        self.idle.clear()
        try:
            withdraw = self.dataplane.submit_stream(message.model_name, message.model_version, request, "grpc",
                                                    on_response, done)
        except InferdError:
            held.release()
            reader.release()
            self._ended(number)
            raise
        if number in self.running:
            self.running[number] = lambda: (withdraw(), held.release(), reader.release())

    def _ended(self, number: int) -> None:
        self.running.pop(number, None)
        if not self.running:
            self.idle.set()

    async def _message(self, item: _Item) -> EncodedReply | None:
        """The message for `item`, its outputs written into their regions first; None: nothing to send."""
        if isinstance(item.payload, str):
            return _error(item.payload, item.request_id)
        if item.payload is None or item.targets is not None and not item.targets:  # (released: the request stopped)
            return None
        try:
            written = item.targets.write(item.payload.outputs) if item.targets is not None else None
        except InferdError as e:  # (a region too small for this response): the request ends with the error
            if (withdraw := self.running.get(item.number)) is not None:
                withdraw()  # (a decoupled model still running stops)
                self._ended(item.number)
            item.targets.release()  # (its answers still queued are not sent)
            return _error(e.message, item.request_id)
        try:
            return await _encode(item.payload, item.final, written)
        except Exception as e:
            return _error(unexpected(e, "encoding a stream response failed").message, item.request_id)

    async def _write(self, call: asyncio.Task) -> None:
        """Sends the replies in order; if the stream breaks, the call ends (`call` is cancelled)."""
        while (item := await self.replies.get()) is not None:
            self.room.set()
            try:
                reply = await self._message(item)
            finally:
                if item.final and item.targets is not None:
                    item.targets.release()
            try:
                if reply is not None:
                    await self.stream.send_message(reply)
            except Exception:  # the client went away
                call.cancel()
                return
            if item.ack is not None:
                item.ack()  # the response is written: its model may run one further


def _bool_parameter(message: pb.ModelInferRequest, name: str) -> bool:
    if name not in message.parameters:
        return False
    p = message.parameters[name]
    return p.WhichOneof("parameter_choice") == "bool_param" and p.bool_param


async def model_stream_infer(dataplane: DataPlane, limits: RequestLimits, stream: Stream) -> None:
    """The handler of ModelStreamInfer (a grpclib stream-stream method)."""
    await _StreamCall(dataplane, limits, stream).serve()
