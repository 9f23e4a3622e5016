"""Triton's generate extension (docs/protocol/extension_generate.md in triton-inference-server):
POST /v2/models/{m}[/versions/{v}]/generate answers one JSON object; .../generate_stream
answers server-sent events, `data: {json}` per response, as the model sends them.

The request is a JSON object whose fields are named like the model's inputs (a scalar or a
list, nested for more dimensions; strings for BYTES), plus an optional `parameters` object of
scalars (not a tensor's parameters: classification, shared memory, binary data, which generate
cannot apply); any other field is refused (400). A leading dimension of 1 is added where the model's
input has one more (its batch dimension). A response is `{"model_name", "model_version", <each
output>}`: an output of one element as that value, else as a flat list; BYTES as text.

`/generate` takes exactly one response: a decoupled model that sends none or several is an
error. `/generate_stream` sends each as an event; an error before the first is an ordinary JSON
error with its status, one after it an event `{"error": "..."}` (the status, 200, is sent).
Each event is handed to the socket before the model may run further (streams.WINDOW): a client
that does not read stops the model, not the daemon.
"""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
from aiohttp import web

from inferd.common.codec import ValueBudget, from_list, to_list
from inferd.common.errors import ErrorCode, InferdError, clip, invalid
from inferd.common.tensors import TensorSpec
from inferd.daemon.dataplane import DataPlane
from inferd.daemon.frontends.http_codec import JSON_SLICE, json_in_slices
from inferd.daemon.requests import InferRequest, InferResponse

SSE = "text/event-stream; charset=utf-8"
# The V2 protocol's parameters of one tensor (classification, shared memory, binary data).
TENSOR_PARAMETERS = frozenset({"classification", "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size",
                               "binary_data", "binary_data_size"})


def _shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _tensor(spec: TensorSpec, value, budget: ValueBudget) -> np.ndarray:
    name, rank = spec.name, len(spec.shape)
    data = value if isinstance(value, list) else [value]
    shape = _shape(data)
    if len(shape) < rank:  # the batch dimension (and a scalar's)
        shape = [1] * (rank - len(shape)) + shape
    return from_list(name, spec.datatype, shape, data, budget)


def decode(body: bytes, model: str, input_specs: tuple[TensorSpec, ...], budget: ValueBudget) -> InferRequest:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise invalid(f"the body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise invalid("the body must be a JSON object whose fields are named like the model's inputs")
    specs = {t.name: t for t in input_specs}
    inputs, parameters = {}, {}
    for key, value in doc.items():
        if key == "parameters":
            if not isinstance(value, dict) or not all(isinstance(v, str | int | float | bool) for v in value.values()):
                raise invalid("'parameters' must be an object of strings, numbers and booleans")
            if tensor_keys := sorted(TENSOR_PARAMETERS.intersection(value)):  # (they would do nothing here)
                raise invalid(f"parameters.{tensor_keys[0]} is a parameter of an input or output, which generate does not "
                              "take (it answers every output as data): use /infer")
            parameters = value
        elif key in specs:
            inputs[key] = _tensor(specs[key], value, budget)
        else:
            names = ", ".join(map(clip, list(specs)[:10])) + (", ..." if len(specs) > 10 else "")
            raise invalid(f"{clip(key)} is not an input of model {clip(model)} (its inputs: {names}) "
                          "nor 'parameters'")
    return InferRequest(inputs, None, "", parameters)


async def encode(response: InferResponse) -> bytes:
    """As /infer's JSON (http_codec): a numeric output stays an ndarray for orjson (a float32 is
    written as its shortest float32 text, as /infer does), and a big one JSON_SLICE elements per
    loop turn."""
    doc = {"model_name": response.model_name, "model_version": response.model_version}
    for name, array in response.outputs.items():
        if array.size == 1:  # (a numpy scalar: orjson writes it as it writes arrays)
            doc[name] = to_list(name, array)[0]
        elif array.size > JSON_SLICE:
            doc[name] = orjson.Fragment(b"".join(await json_in_slices(name, array)))
        else:
            doc[name] = to_list(name, array)
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


class _Responses:
    """A request's responses as they come, for a handler to await: (response, ack), then
    (final response or error, None)."""

    def __init__(self) -> None:
        self.items: asyncio.Queue = asyncio.Queue()  # bounded by streams.WINDOW (+1, the end)

    def response(self, response: InferResponse, ack) -> None:
        self.items.put_nowait((response, ack))

    def done(self, outcome) -> None:
        self.items.put_nowait((outcome, None))


async def _submit(request: web.Request, dataplane: DataPlane, budget: ValueBudget):
    name, version = request.match_info["model"], request.match_info.get("version", "")
    specs = dataplane.repository.get_ready(name, version).metadata.inputs  # (no metadata dict per request)
    infer_request = decode(await request.read(), name, specs, budget)
    responses = _Responses()
    withdraw = dataplane.submit_stream(name, version, infer_request, "http", responses.response, responses.done)
    return responses, withdraw


async def generate(request: web.Request, dataplane: DataPlane, budget: ValueBudget) -> web.Response:
    responses, withdraw = await _submit(request, dataplane, budget)
    answers = []
    try:
        while True:
            outcome, ack = await responses.items.get()
            if isinstance(outcome, InferdError):
                raise outcome
            if outcome.outputs:
                answers.append(outcome)
            if len(answers) > 1 or ack is None:  # (a second response: refused now, the model stops)
                break
            ack()
    finally:
        withdraw()  # (nothing, once answered)
    if len(answers) != 1:
        raise InferdError(ErrorCode.INVALID_ARGUMENT, f"the model sent {len(answers)} responses: /generate takes "
                                                      "exactly one (use /generate_stream)")
    return web.Response(body=await encode(answers[0]), content_type="application/json")


async def generate_stream(request: web.Request, dataplane: DataPlane, budget: ValueBudget) -> web.StreamResponse:
    responses, withdraw = await _submit(request, dataplane, budget)
    stream: web.StreamResponse | None = None
    try:
        while True:
            outcome, ack = await responses.items.get()
            if isinstance(outcome, InferdError) and stream is None:
                raise outcome  # before the first event: an ordinary error answer
            if stream is None:
                stream = web.StreamResponse(headers={"Content-Type": SSE, "Cache-Control": "no-cache"})
                await stream.prepare(request)
            if isinstance(outcome, InferdError):
                await stream.write(b"data: " + orjson.dumps({"error": outcome.message}) + b"\n\n")
            elif outcome.outputs:
                await stream.write(b"data: " + await encode(outcome) + b"\n\n")  # (waits for the socket to drain)
            if ack is None:
                break
            ack()
        await stream.write_eof()
    except ConnectionResetError:  # the client went away while an event was written: no failure of ours
        pass
    finally:
        withdraw()  # the client went away (or the handler is cancelled): the model stops
    return stream
