"""What a front-end hands the data plane and gets back. The scheduler reads requests through
its own `Request` protocol (inferd.scheduler.queue), so front-ends never import it."""

from __future__ import annotations

import dataclasses

import numpy as np

from inferd.config.settings import ServerSection


@dataclasses.dataclass(slots=True, eq=False)
class InferRequest:
    """One caller's request: named arrays with the batch dimension first (when the model batches)."""

    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] | None = None  # requested output names; None = all
    id: str = ""
    parameters: dict = dataclasses.field(default_factory=dict)
    deadline: float | None = None  # time.monotonic() after which the request must not run
    # Per requested output, the parameters its caller sent (classification, shared memory...):
    # only outputs that had any. Whoever reads a parameter checks its type.
    output_parameters: dict[str, dict] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True, eq=False)
class InferResponse:
    """One caller's outputs, in the model's output order."""

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class RequestLimits:
    """What one request may make a front-end buffer and decode (server.* keys)."""

    max_request_bytes: int = 64 * 1024 * 1024  # a body, a gRPC message, a Unix-socket frame
    max_structured_bytes: int = 1024 * 1024  # parsed in one step: JSON, a gRPC message but its raw contents
    max_value_elements: int = 65536  # elements sent one by one: JSON data, gRPC typed contents, BYTES
    # A JSON body over max_structured_bytes is decoded in a decoder process (frontends/json_offload.py):
    json_decoders: int = 1  # processes; 0: such a body is refused (413)
    json_decode_queue: int = 2  # big bodies held beyond those being decoded
    json_decode_timeout_s: float = 30.0
    json_decode_memory_bytes: int = 1 << 30  # a decoder's address space beyond its own at start

    @classmethod
    def of(cls, server: ServerSection) -> RequestLimits:
        return cls(server.max_request_bytes, server.max_structured_bytes, server.max_value_elements,
                   server.json_decoders, server.json_decode_queue, server.json_decode_timeout_s,
                   server.json_decode_memory_bytes)
