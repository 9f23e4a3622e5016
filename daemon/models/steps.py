"""What a pipeline sees of the repository while it loads: whether its steps' models serve (or
are still coming), and their metadata. Narrower than the repository on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from inferd.common.errors import InferdError
from inferd.common.tensors import ModelMetadata
from inferd.config.model import PipelineStep
from inferd.daemon.models.pipeline import PipelineError
from inferd.scheduler.worker import LoadFailed

if TYPE_CHECKING:
    from inferd.daemon.models.version import ModelVersion


class PipelineSteps:
    def __init__(self, get_ready: Callable[[str, str], ModelVersion], coming: Callable[[str], bool]):
        """`get_ready(model, version)`: the version that serves, or InferdError; `coming(model)`:
        the model is in the directory and its load has not finished."""
        self._get_ready = get_ready
        self._coming = coming
        self._changed = asyncio.Event()

    def changed(self) -> None:
        """A model version changed state: whoever waits for steps looks again."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, steps: tuple[PipelineStep, ...], timeout: float) -> None:
        """Until every step's model serves; raises LoadFailed at once for a step that is not
        in the directory or failed, and after `timeout` s for one still loading."""
        waiting = list(steps)
        try:
            async with asyncio.timeout(timeout):
                while waiting := [s for s in steps if not self._ready(s)]:
                    await self._changed.wait()
        except TimeoutError:
            raise LoadFailed(f"step model {waiting[0].model!r} did not become READY within {timeout:g} s") from None

    def _ready(self, step: PipelineStep) -> bool:
        try:
            self._get_ready(step.model, step.version)
            return True
        except InferdError as e:
            if self._coming(step.model):
                return False
            raise LoadFailed(f"step model {step.model!r}: {e.message}") from None

    def metadata_of(self, step: PipelineStep) -> tuple[ModelMetadata, int]:
        """A step model's metadata and batch limit, for Pipeline (raises PipelineError)."""
        try:
            mv = self._get_ready(step.model, step.version)
        except InferdError as e:
            raise PipelineError(f"step model {step.model!r}: {e.message}") from None
        if mv.pipeline is not None:
            raise PipelineError(f"step model {step.model!r} is a pipeline; a step must be a model")
        if mv.serving.config.sequence_batching is not None:  # (its state would have no sequence to belong to)
            raise PipelineError(f"step model {step.model!r} batches sequences ([sequence_batching]): a pipeline's "
                                "steps carry no sequence id, so a stateful model cannot be a step")
        if mv.metadata.decoupled:
            raise PipelineError(f"step model {step.model!r} is decoupled (0..N responses per request): "
                                "a step must answer each request once")
        return mv.metadata, mv.max_batch_size
