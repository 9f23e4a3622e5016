"""Pipelines: a model made of other models, run step by step inside the daemon.

A pipeline is declared by config.toml alone (no version directories):

    outputs = ["label", "probs"]               # optional: the pipeline's outputs, from any step
    max_batch_size = 16                        # optional: fewer rows per request than its steps allow
    [[pipeline]]
    model = "tokenize"
    [[pipeline]]
    model = "bag_classifier"
    inputs = { tokens = "tokenize.tokens" }    # optional: input = "<tensor>" | "<step>.<output>" | "<pipeline input>"
    outputs = { probabilities = "probs" }      # optional: output = "<tensor>", the name it goes by in the pipeline
    [[pipeline]]
    model = "label"
    inputs = { probabilities = "probs" }       # (its own name no longer finds it: it goes by "probs")

Each step's outputs go by their own names in the pipeline, or by the names its `outputs` gives
them. An input a step does not map comes from the latest earlier step with an output of that
name, else from the pipeline's input of that name. A mapped input is a name an earlier step's
`outputs` gave (each such name is given once), else "<step model>.<output>" (the latest earlier
step that runs that model), else the pipeline's input of that name. The pipeline's inputs are
the step inputs fed from the request; its outputs are the names in its `outputs` (each a name
a step's `outputs` gave, else the latest step output going by it), else the last step's.
Either list may give a tensor as a table {name, datatype, shape} instead of a name: the step's
tensor must agree (checked at load; a Triton ensemble's declared tensors arrive so,
config/triton_ensemble.py). A model may run in several steps.

A request runs the steps that lead to the outputs it asks for, each an ordinary request to its
model's own queue, so it batches with that model's other traffic; tensors go from step to step
in memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import numpy as np

from inferd.common.errors import ErrorCode, InferdError
from inferd.common.tensors import ModelMetadata, TensorSpec
from inferd.config.model import ModelConfig, PipelineStep, PipelineTensor
from inferd.daemon.requests import InferRequest

REQUEST = -1  # a Source's step index for the pipeline's own input
Source = tuple[int, str]  # (index of the step that gives it, or REQUEST; its tensor name there)


class PipelineError(Exception):
    """The steps do not fit together; the reason names the step."""


@dataclasses.dataclass(frozen=True)
class ResolvedStep:
    index: int
    model: str
    version: str
    sources: dict[str, Source]  # the step's input -> where it comes from
    feeds: tuple[str, ...]  # its outputs later steps use
    gives: tuple[tuple[str, str], ...] = ()  # (its output, the pipeline output it is)

    @property
    def label(self) -> str:
        return f"step {self.index + 1} ({self.model!r})"


class _Wiring:
    """What the steps added so far produce, and under which names (Pipeline's bookkeeping)."""

    def __init__(self):
        self.models: list[str] = []  # by step index
        self.produced: dict[Source, TensorSpec] = {}
        self.latest: dict[str, Source] = {}  # a name in the pipeline -> the latest output going by it
        self.named: dict[str, Source] = {}  # the names steps' `outputs` gave
        self.inputs: dict[str, TensorSpec] = {}  # the pipeline's inputs, as its steps take them
        self.names: list[dict[str, str]] = []  # by step index: the name each output goes by -> the output

    def describe(self, source: Source) -> str:
        return f"{self.models[source[0]]}.{source[1]}"

    def add(self, index: int, step: PipelineStep, metadata: ModelMetadata) -> dict[str, Source]:
        """Step `index`'s inputs resolved to their sources; its outputs then become available."""
        label = f"step {index + 1} ({step.model!r})"
        mapping, renames = dict(step.inputs), dict(step.outputs)
        if unknown := set(mapping) - {t.name for t in metadata.inputs}:
            raise PipelineError(f"{label} has no input {sorted(unknown)[0]!r}")
        if unknown := set(renames) - {t.name for t in metadata.outputs}:
            raise PipelineError(f"{label} has no output {sorted(unknown)[0]!r}")
        if clash := sorted(set(renames.values()) & {t.name for t in metadata.outputs if t.name not in renames}):
            raise PipelineError(f"{label} gives an output the name {clash[0]!r}, which another of its outputs has")
        sources = {spec.name: self._source(mapping.get(spec.name), spec, label) for spec in metadata.inputs}
        self.models.append(step.model)
        self.names.append({})
        for spec in metadata.outputs:
            source, name = (index, spec.name), renames.get(spec.name, spec.name)
            if spec.name in renames:
                if name in self.named:
                    raise PipelineError(f"{label} names its output {spec.name!r} {name!r}, "
                                        f"a name step {self.named[name][0] + 1} already gave")
                if name in self.inputs:
                    raise PipelineError(f"{label} names its output {spec.name!r} {name!r}, "
                                        "a name earlier steps take from the request")
                self.named[name] = source
            self.produced[source] = spec
            self.latest[name] = source
            self.names[index][name] = spec.name
        return sources

    def _source(self, mapped: str | None, spec: TensorSpec, label: str) -> Source:
        source = self._find(mapped, spec.name, label)
        if source[0] != REQUEST:
            have = self.produced[source]
            if have.datatype != spec.datatype:
                raise PipelineError(f"{label} input {spec.name!r} is {spec.datatype}, "
                                    f"but {self.describe(source)} is {have.datatype}")
            return source
        other = self.inputs.setdefault(source[1], dataclasses.replace(spec, name=source[1]))
        if (other.datatype, other.shape) != (spec.datatype, spec.shape):
            raise PipelineError(f"pipeline input {source[1]!r} feeds steps that disagree on its type or shape")
        return source

    def _find(self, mapped: str | None, input_name: str, label: str) -> Source:
        if mapped is None:
            return self.latest.get(input_name, (REQUEST, input_name))
        if mapped in self.named:
            return self.named[mapped]
        model, dot, tensor = mapped.partition(".")
        if dot and model in self.models:
            source = (len(self.models) - 1 - self.models[::-1].index(model), tensor)
            if source not in self.produced:
                raise PipelineError(f"{label} maps {input_name!r} to {mapped!r}: that step has no such output")
            return source
        return (REQUEST, mapped)


def _check_declared(what: str, declared: PipelineTensor, actual: TensorSpec) -> None:
    """A declared datatype and shape (where given) against what its step takes or gives."""
    if declared.datatype and declared.datatype != actual.datatype:
        raise PipelineError(f"{what} {declared.name!r} is declared {declared.datatype}, but its step's is {actual.datatype}")
    shape = declared.shape
    if shape is not None and (len(shape) != len(actual.shape) or any(
            a != b and -1 not in (a, b) for a, b in zip(shape, actual.shape))):
        raise PipelineError(f"{what} {declared.name!r} is declared with shape {list(shape)}, "
                            f"but its step's is {list(actual.shape)}")


class Pipeline:
    def __init__(self, name: str, steps: tuple[PipelineStep, ...], metadata_of: Callable[[PipelineStep], tuple[ModelMetadata, int]],
                 inputs: tuple[PipelineTensor, ...] = (), outputs: tuple[PipelineTensor, ...] = (),
                 max_batch_size: int | None = None):
        """`metadata_of(step)` gives a step model's metadata and batch limit (raising
        PipelineError when it is not there to give); `inputs`/`outputs`: the declared ones;
        `max_batch_size`: a limit of its own (0: it does not batch), below its steps'."""
        self.name = name
        wiring = _Wiring()
        limits, resolved = [], []
        for index, step in enumerate(steps):
            if step.model == name:
                raise PipelineError(f"step {index + 1} names the pipeline itself ({name!r}); a step must be another model")
            metadata, limit = metadata_of(step)
            limits.append(limit)
            resolved.append((step, wiring.add(index, step, metadata)))
        self.outputs = self._outputs(wiring, outputs, len(steps) - 1)
        used = {source for _, sources in resolved for source in sources.values()}
        self.steps = []
        for index, (step, sources) in enumerate(resolved):
            feeds = tuple(sorted(n for (i, n) in used if i == index))
            gives = tuple((source[1], out) for out, source in self.outputs.items() if source[0] == index)
            self.steps.append(ResolvedStep(index, step.model, step.version, sources, feeds, gives))
            if not feeds and not gives:
                raise PipelineError(f"{self.steps[-1].label}: no later step uses its outputs, and the pipeline returns none")
        if max_batch_size is not None:
            limits.append(max_batch_size)
        self.max_batch_size = min(limits) if all(limits) else 0
        self.metadata = ModelMetadata("pipeline", self._inputs(wiring, inputs), tuple(
            dataclasses.replace(wiring.produced[source], name=out) for out, source in self.outputs.items()))
        self.models = {s.model for s in steps}
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @classmethod
    def of(cls, name: str, config: ModelConfig, metadata_of: Callable[[PipelineStep], tuple[ModelMetadata, int]]) -> Pipeline:
        """The pipeline a model's config declares."""
        cap = config.settings.max_batch_size if "max_batch_size" in config.explicit else None
        return cls(name, config.pipeline, metadata_of, config.pipeline_inputs, config.pipeline_outputs, cap)

    @staticmethod
    def _outputs(wiring: _Wiring, declared: tuple[PipelineTensor, ...], last: int) -> dict[str, Source]:
        """The pipeline's output -> the step output it is."""
        if not declared:
            return {name: (last, output) for name, output in wiring.names[last].items()}
        outputs = {}
        for tensor in declared:
            source = wiring.named.get(tensor.name) or wiring.latest.get(tensor.name)
            if source is None:
                raise PipelineError(f"pipeline output {tensor.name!r} is no step's output")
            outputs[tensor.name] = source
            _check_declared("pipeline output", tensor, wiring.produced[source])
        return outputs

    @staticmethod
    def _inputs(wiring: _Wiring, declared: tuple[PipelineTensor, ...]) -> tuple[TensorSpec, ...]:
        if not declared:
            return tuple(wiring.inputs.values())
        if missing := [n for n in wiring.inputs if n not in {t.name for t in declared}]:
            raise PipelineError(f"a step takes {missing[0]!r} from the request, but the pipeline's inputs do not list it")
        for tensor in declared:
            if tensor.name not in wiring.inputs:
                raise PipelineError(f"pipeline input {tensor.name!r} is used by no step")
            _check_declared("pipeline input", tensor, wiring.inputs[tensor.name])
        return tuple(wiring.inputs[t.name] for t in declared)

    def plan(self, asked: tuple[str, ...] | None) -> list[tuple[ResolvedStep, tuple[str, ...]]]:
        """The steps that the outputs `asked` (None: all) need, in order, each with the outputs
        to ask of its model: a step whose outputs lead to none of them is not run."""
        need: dict[int, set[str]] = {}
        for name, (index, output) in self.outputs.items():
            if asked is None or name in asked:
                need.setdefault(index, set()).add(output)
        for step in reversed(self.steps):
            for index, output in step.sources.values() if step.index in need else ():
                if index != REQUEST:
                    need.setdefault(index, set()).add(output)
        return [(step, tuple(sorted(need[step.index]))) for step in self.steps if step.index in need]

    async def run(self, request: InferRequest,
                  run_step: Callable[[ResolvedStep, InferRequest], Awaitable[dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
        """One request through every step it needs; an error names the step it came from."""
        self._inflight += 1
        self._idle.clear()
        try:
            tensors: dict[Source, np.ndarray] = {(REQUEST, name): array for name, array in request.inputs.items()}
            for step, wanted in self.plan(request.outputs):
                step_request = InferRequest(
                    {name: tensors[source] for name, source in step.sources.items()},
                    wanted, request.id, request.parameters, request.deadline,
                )
                try:
                    outputs = await run_step(step, step_request)
                except InferdError as e:
                    # A step that is missing is the pipeline being unavailable, not unknown.
                    code = ErrorCode.UNAVAILABLE if e.code is ErrorCode.NOT_FOUND else e.code
                    raise InferdError(code, f"pipeline {self.name!r} {step.label}: {e.message}",
                                      retry_after_s=e.retry_after_s) from None
                tensors.update(((step.index, name), array) for name, array in outputs.items())
            return {name: tensors[source] for name, source in self.outputs.items()
                    if request.outputs is None or name in request.outputs}
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def drain(self) -> None:
        """Until every request in flight has gone through its last step."""
        await self._idle.wait()
