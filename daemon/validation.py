"""A request checked against the model version it goes to: once, in the data plane, for every
front-end."""

from __future__ import annotations

from inferd.common.errors import clip, invalid
from inferd.common.tensors import datatype_of
from inferd.daemon.models.version import ModelVersion
from inferd.daemon.requests import InferRequest
from inferd.scheduler.sequence_flags import PARAMETERS as SEQUENCE_PARAMETERS
from inferd.scheduler.sequence_flags import refuse_on_plain_model


def check_request(mv: ModelVersion, request: InferRequest) -> tuple[int, tuple]:
    """Check names, datatypes and shapes against the model; return (rows, batching key). The key
    holds each input's non-batch shape, None for an optional input left out: requests batch
    together only with the same inputs present (the model gets those)."""
    specs = mv.input_specs
    inputs = request.inputs
    if inputs.keys() != specs.keys():
        _check_names(mv, inputs.keys())
    rows = None  # the first input's, when the model batches
    batching = mv.max_batch_size > 0
    shape_key = []
    for spec in specs.values():
        array = inputs.get(spec.name)
        if array is None:
            shape_key.append(None)
            continue
        datatype = datatype_of(array)
        if datatype != spec.datatype:
            raise invalid(f"input {spec.name!r} has datatype {datatype}, the model expects {spec.datatype}")
        if not spec.accepts_shape(array.shape):
            raise invalid(f"input {spec.name!r} has shape {list(array.shape)}, the model expects {list(spec.shape)} (-1: any)")
        if batching:
            if rows is None:
                rows = array.shape[0]
            elif array.shape[0] != rows:
                raise invalid(f"inputs disagree on the batch size: {rows} rows and {array.shape[0]} rows in {spec.name!r}")
            shape_key.append(array.shape[1:])
    rows = 1 if rows is None else rows
    if batching:
        if rows < 1:
            raise invalid("the batch dimension must be at least 1")
        if rows > mv.max_batch_size:
            raise invalid(f"batch of {rows} rows exceeds the model's max_batch_size {mv.max_batch_size}")
    if request.outputs is not None:
        _check_outputs(mv, request.outputs)
    if request.parameters:
        _check_parameters(request.parameters)
        if mv.serving.config.sequence_batching is None:
            refuse_on_plain_model(request.parameters, mv.name)
    return rows, tuple(shape_key)


def _check_parameters(parameters: dict) -> None:
    """V2's request parameters, whichever front-end brought them: string keys; booleans,
    numbers (what an int64 or uint64 holds) or strings (gRPC: bytes too). A model's code may
    read them (Triton Python models), so nothing else is passed on, nor dropped unsaid. The
    sequence keys have their own, more precise checks (scheduler/sequence_flags.py)."""
    for key, value in parameters.items():
        if key in SEQUENCE_PARAMETERS:
            continue
        if not isinstance(key, str) or not isinstance(value, (str, bytes, bool, int, float)) or (
            type(value) is int and not -(1 << 63) <= value < 1 << 64
        ):
            raise invalid(f"request parameter {clip(str(key))}: a value must be a boolean, a number "
                          "(64-bit for integers) or a string")


def _check_names(mv: ModelVersion, names) -> None:
    """Every input the request names is the model's, and only optional ones are left out."""
    specs = mv.input_specs
    unknown = sorted(names - specs.keys())
    if unknown:
        raise invalid(f"unknown input {clip(unknown[0])} for model {mv.name!r}; inputs are {', '.join(specs)}")
    missing = sorted(specs.keys() - names - mv.serving.config.optional_inputs)
    if missing:
        raise invalid(f"missing input {missing[0]!r} for model {mv.name!r}")
    if not names:
        raise invalid(f"the request has no inputs; model {mv.name!r} needs at least one of {', '.join(specs)}")


def _check_outputs(mv: ModelVersion, outputs: tuple[str, ...]) -> None:
    for out in outputs:
        if out not in mv.output_names:
            raise invalid(f"unknown output {clip(out)} for model {mv.name!r}; outputs are {', '.join(sorted(mv.output_names))}")
    if len(set(outputs)) != len(outputs):
        raise invalid("an output is requested twice")
