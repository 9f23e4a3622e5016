"""A model version's configuration as Triton's clients (and perf_analyzer) read it: the
data plane's model config call."""

from __future__ import annotations

import json

from inferd.config.reshape import triton_reshape
from inferd.config.sequence import triton_view
from inferd.daemon.models.version import ModelVersion


def _triton_type(datatype: str) -> str:
    return f"TYPE_{'STRING' if datatype == 'BYTES' else datatype}"


def _triton_parameters(parameters: dict) -> dict:
    """config.toml's [parameters] as Triton spells them: every value a string (tables and
    arrays as JSON)."""
    return {str(k): {"string_value": v if isinstance(v, str) else json.dumps(v, default=str)}
            for k, v in parameters.items()}


def triton_config(mv: ModelVersion) -> dict:
    """A version's configuration as Triton's model_config.proto spells it (dims exclude the
    batch dimension when the model batches)."""
    batching = mv.max_batch_size > 0
    model = mv.serving.config
    settings, reshape = model.settings, model.reshape
    formats, labels, optional, sequences = model.input_formats, model.label_files, model.optional_inputs, model.sequence_batching

    def dims(spec):
        return list(spec.shape[1:] if batching else spec.shape)

    config = {
        "name": mv.name,
        "platform": mv.metadata.platform,
        "backend": mv.metadata.platform.split("_")[0],
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": mv.max_batch_size,
        "input": [{"name": t.name, "data_type": _triton_type(t.datatype), "format": formats.get(t.name, "FORMAT_NONE"),
                   "dims": dims(t), **triton_reshape(reshape, t.name),
                   "is_shape_tensor": False, "allow_ragged_batch": False, "optional": t.name in optional}
                  for t in mv.metadata.inputs],
        "output": [{"name": t.name, "data_type": _triton_type(t.datatype), "dims": dims(t),
                    "label_filename": labels.get(t.name, ""), "is_shape_tensor": False, **triton_reshape(reshape, t.name)}
                   for t in mv.metadata.outputs],
        "dynamic_batching": {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": int(settings.max_queue_delay_ms * 1000),
            "preserve_ordering": False,
        } if batching and sequences is None else None,  # (Triton has one or the other)
        "instance_group": [{"name": mv.name, "kind": "KIND_CPU", "count": settings.max_workers}],
        "parameters": _triton_parameters(mv.serving.config.parameters),
        "sequence_batching": triton_view(sequences) if sequences is not None else None,
        "model_transaction_policy": {"decoupled": mv.metadata.decoupled},
    }
    return {k: v for k, v in config.items() if v is not None}
