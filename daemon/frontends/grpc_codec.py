"""ModelInfer messages <-> the data plane's request and response (V2 gRPC protocol).

Inputs come as typed `contents` or as `raw_input_contents`; every output goes back in
`raw_output_contents`, which is what tritonclient reads.
"""

from __future__ import annotations

import numpy as np

from inferd.common.codec import ValueBudget, check_datatype_and_shape, from_raw, from_values
from inferd.common.errors import clip, invalid
from inferd.common.tensors import datatype_of
from inferd.daemon.frontends.grpc_gen import inference_pb2 as pb
from inferd.daemon.frontends.grpc_wire import EncodedReply, with_raw_contents
from inferd.daemon.requests import InferRequest, InferResponse

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



def _parameters(params) -> dict:
    return {key: getattr(p, p.WhichOneof("parameter_choice")) for key, p in params.items() if p.WhichOneof("parameter_choice")}


def decode_infer_request(message: pb.ModelInferRequest, raw: list, deadline: float | None, budget: ValueBudget,
                         shared=None) -> InferRequest:
    """`raw`: the message's raw_input_contents (grpc_wire keeps them out of the message, as
    views of the bytes received): one per input that names no shared memory region, which
    `shared` reads instead (shared_memory.input_reader)."""
    tensors = {}
    used = 0  # raw entries taken
    for tensor in message.inputs:
        name = tensor.name
        if name in tensors:
            raise invalid(f"input {clip(name)} appears twice")
        shape = list(tensor.shape)
        params = _parameters(tensor.parameters) if tensor.parameters else {}
        if "shared_memory_region" in params:
            if tensor.HasField("contents"):
                raise invalid(f"input {clip(name)}: shared_memory_region given together with contents")
            tensors[name] = shared(name, tensor.datatype, shape, params)
        elif raw:
            if tensor.HasField("contents"):
                # Triton's words, which its example clients look for
                raise invalid(f"contents field must not be specified when using raw_input_contents for {clip(name)} "
                              f"for model {clip(message.model_name)}")
            if used == len(raw):
                raise invalid(f"raw_input_contents has {len(raw)} entries, fewer than the inputs that need one")
            tensors[name] = from_raw(name, tensor.datatype, shape, raw[used], budget)
            used += 1
        else:
            field = _CONTENTS_FIELD.get(tensor.datatype)
            if field is None:
                if tensor.datatype == "FP16":
                    raise invalid(f"input {clip(name)}: FP16 data must be sent in raw_input_contents")
                check_datatype_and_shape(name, tensor.datatype, shape)  # names what is wrong
            tensors[name] = from_values(name, tensor.datatype, shape, getattr(tensor.contents, field), budget)
    if used != len(raw):
        raise invalid(f"raw_input_contents has {len(raw)} entries for {used} inputs that take one")
    # (Empty repeated fields and maps are the common case: skip building anything from them.)
    outputs = tuple(o.name for o in message.outputs) if message.outputs else None
    output_parameters = {o.name: _parameters(o.parameters) for o in message.outputs if o.parameters}
    parameters = _parameters(message.parameters) if message.parameters else {}
    return InferRequest(tensors, outputs, message.id, parameters, deadline, output_parameters)


async def encode_infer_response(response: InferResponse, shared: set[str] | None = None,
                                flags: dict[str, bool] | None = None, wrap: bytes = b"") -> EncodedReply:
    """Every output in raw_output_contents (what tritonclient reads), appended to the rest of
    the reply by grpc_wire without protobuf's copies. An output in `shared` was written into a
    shared memory region: it has an empty raw entry (clients read raw_output_contents by the
    output's index). `flags`: boolean parameters of the reply; `wrap`: the reply as a field of
    an outer message (a stream's), see grpc_wire.with_raw_contents."""
    reply = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version, id=response.id)
    raws = []
    for name, array in response.outputs.items():
        reply.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        raws.append(_EMPTY if shared and name in shared else array)
    for key, value in (flags or {}).items():
        reply.parameters[key].bool_param = value
    return await with_raw_contents(reply.SerializeToString(), raws, wrap)


_EMPTY = np.empty(0, np.uint8)
