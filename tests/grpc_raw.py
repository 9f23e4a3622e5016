"""A gRPC call written frame by frame with h2, for bodies no gRPC client would send (invalid,
empty, larger than the server's limit): it sends as much as flow control lets through, stops
when the server answers, and reports the status, its message and how much it got to send.
Messages are built with tritonclient's protobuf classes (the tests never import the daemon's)."""

from __future__ import annotations

import dataclasses
import socket
import struct

import h2.config
import h2.connection
import h2.events
from tritonclient.grpc import service_pb2 as pb


@dataclasses.dataclass
class Answer:
    status: str  # grpc-status, or "EOF" / "RST" when the call ended without one
    message: str
    sent: int  # bytes of the body sent before the answer came
    content_type: str = ""  # of the response's headers ("" without one: Go clients refuse that)
    headers: dict = dataclasses.field(default_factory=dict)  # the response's headers and trailers


def infer_message(model: str, inputs: list[tuple[str, str, list[int], bytes]]) -> bytes:
    """A framed ModelInferRequest (the 5-byte gRPC prefix and the message) with raw inputs."""
    request = pb.ModelInferRequest(model_name=model)
    for name, datatype, shape, raw in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    return framed(request)


def pb_request(model: str, inputs: list[tuple[str, str, list[int], dict]]) -> bytes:
    """A framed ModelInferRequest with typed `contents` (e.g. {"int_contents": [...]})."""
    request = pb.ModelInferRequest(model_name=model)
    for name, datatype, shape, contents in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents))
    return framed(request)


def framed(message, compress=None) -> bytes:
    """Any protobuf message (or bytes) with its 5-byte gRPC prefix; `compress(data)` makes the
    message's bytes and sets the compressed flag."""
    data = message if isinstance(message, bytes) else message.SerializeToString()
    if compress is not None:
        return b"\1" + struct.pack(">I", len(compress(data))) + compress(data)
    return b"\0" + struct.pack(">I", len(data)) + data


def grpc_call(port: int, body: bytes, token: str | None = None, method: str = "ModelInfer",
              service: str = "inference.GRPCInferenceService", extra: tuple = ()) -> Answer:
    """POST `body` (already framed) to `service`'s `method` on 127.0.0.1:`port`, with the
    `extra` headers (pairs)."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    connection.initiate_connection()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", f"/{service}/{method}"),
               (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers"), *extra]
    if token:
        headers.append(("authorization", f"Bearer {token}"))
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        connection.send_headers(1, headers, end_stream=not body)
        sent, ended, content_type, seen = 0, not body, "", {}
        while True:
            if not ended:
                sent = _send_what_fits(connection, body, sent)
                if sent == len(body):
                    connection.end_stream(1)
                    ended = True
            sock.sendall(connection.data_to_send())
            data = sock.recv(1 << 20)
            if not data:
                return Answer("EOF", "", sent)
            for event in connection.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    fields = dict(event.headers)
                    seen.update(fields)
                    content_type = fields.get("content-type", content_type)
                    if "grpc-status" in fields:
                        return Answer(fields["grpc-status"], fields.get("grpc-message", ""), sent, content_type, seen)
                elif isinstance(event, h2.events.StreamReset):
                    return Answer("RST", str(event.error_code), sent)


def _send_what_fits(connection: h2.connection.H2Connection, body: bytes, sent: int) -> int:
    """Send the body from `sent` on as far as the flow-control window allows."""
    while sent < len(body):
        size = min(connection.local_flow_control_window(1), connection.max_outbound_frame_size, len(body) - sent)
        if size <= 0:
            break
        connection.send_data(1, body[sent : sent + size])
        sent += size
    return sent
