"""Pipelines: a model made of other models, run step by step inside the daemon.

A pipeline is declared by config.toml alone (no version directories):

    [[pipeline]]
    model = "tokenize"
    [[pipeline]]
    model = "bag_classifier"
    inputs = { tokens = "tokenize.tokens" }    # optional: input = "<step>.<output>" | "<pipeline input>"

An input a step does not map comes from the latest earlier step with an output of that name,
else from the pipeline's input of that name. The pipeline's inputs are the step inputs fed that
way; its outputs are the last step's. Each step is an ordinary request to its model's own
queue, so it batches with that model's other traffic; tensors go from step to step in memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import numpy as np

from inferd.common.errors import ErrorCode, InferdError
from inferd.common.tensors import ModelMetadata, TensorSpec
from inferd.config.model import PipelineStep
from inferd.daemon.requests import InferRequest

Source = tuple[str, str]  # (step model or "" for the pipeline's input, tensor name)


class PipelineError(Exception):
    """The steps do not fit together; the reason names the step."""


@dataclasses.dataclass(frozen=True)
class ResolvedStep:
    index: int
    model: str
    version: str
    sources: dict[str, Source]  # the step's input -> where it comes from
    wanted: tuple[str, ...] | None  # the outputs later steps use (None: all, for the last step)

    @property
    def label(self) -> str:
        return f"step {self.index + 1} ({self.model!r})"


class Pipeline:
    def __init__(self, name: str, steps: tuple[PipelineStep, ...], metadata_of: Callable[[PipelineStep], tuple[ModelMetadata, int]]):
        """`metadata_of(step)` gives a step model's metadata and batch limit (raising
        PipelineError when it is not there to give)."""
        self.name = name
        produced: dict[Source, TensorSpec] = {}
        latest: dict[str, Source] = {}  # tensor name -> the latest step that outputs it
        inputs: dict[str, TensorSpec] = {}
        limits = []
        resolved = []
        for index, step in enumerate(steps):
            if step.model == name or step.model in (s.model for s in steps[:index]):
                what = "the pipeline itself" if step.model == name else "a model an earlier step runs"
                raise PipelineError(f"step {index + 1} names {what}"
                                    f" ({step.model!r}); each step is a different model")
            metadata, limit = metadata_of(step)
            limits.append(limit)
            mapping = dict(step.inputs)
            if unknown := set(mapping) - {t.name for t in metadata.inputs}:
                raise PipelineError(f"step {index + 1} ({step.model!r}) has no input {sorted(unknown)[0]!r}")
            sources = {}
            for spec in metadata.inputs:
                source = self._source(mapping.get(spec.name), spec.name, produced, latest, index, step)
                if source[0]:
                    have = produced[source]
                    if have.datatype != spec.datatype:
                        raise PipelineError(
                            f"step {index + 1} ({step.model!r}) input {spec.name!r} is {spec.datatype}, "
                            f"but {'.'.join(source)} is {have.datatype}"
                        )
                else:
                    other = inputs.setdefault(source[1], dataclasses.replace(spec, name=source[1]))
                    if (other.datatype, other.shape) != (spec.datatype, spec.shape):
                        raise PipelineError(f"pipeline input {source[1]!r} feeds steps that disagree on its type or shape")
                sources[spec.name] = source
            for spec in metadata.outputs:
                produced[(step.model, spec.name)] = spec
                latest[spec.name] = (step.model, spec.name)
            resolved.append(ResolvedStep(index, step.model, step.version, sources, None))
        used = {source for step in resolved for source in step.sources.values()}
        self.steps = [resolved[-1]]
        for s in reversed(resolved[:-1]):
            wanted = tuple(sorted(n for (m, n) in used if m == s.model))
            if not wanted:
                raise PipelineError(f"{s.label}: no later step uses its outputs")
            self.steps.insert(0, dataclasses.replace(s, wanted=wanted))
        self.max_batch_size = min(limits) if all(limits) else 0
        self.metadata = ModelMetadata("pipeline", tuple(inputs.values()), metadata.outputs)  # the last step's
        self.models = {s.model for s in steps}
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @staticmethod
    def _source(mapped: str | None, input_name: str, produced, latest, index: int, step: PipelineStep) -> Source:
        if mapped is None:
            return latest.get(input_name, ("", input_name))
        model, dot, tensor = mapped.partition(".")
        if dot and (model, tensor) in produced:
            return (model, tensor)
        if dot and any(m == model for m, _ in produced):
            raise PipelineError(f"step {index + 1} ({step.model!r}) maps {input_name!r} to {mapped!r}: that step has no such output")
        return ("", mapped)

    async def run(self, request: InferRequest,
                  run_step: Callable[[ResolvedStep, InferRequest], Awaitable[dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
        """One request through every step; an error names the step it came from."""
        self._inflight += 1
        self._idle.clear()
        try:
            tensors: dict[Source, np.ndarray] = {("", name): array for name, array in request.inputs.items()}
            outputs: dict[str, np.ndarray] = {}
            for step in self.steps:
                wanted = step.wanted if step.wanted is not None else request.outputs
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
                tensors.update(((step.model, name), array) for name, array in outputs.items())
            return outputs
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def drain(self) -> None:
        """Until every request in flight has gone through its last step."""
        await self._idle.wait()
